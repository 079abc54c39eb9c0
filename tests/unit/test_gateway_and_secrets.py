"""The OIDC gate's objects, the Secret checks and version stamps, and helm.py's pure helpers."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from coursehub.api.jupyterhubdeployment import ChartSource, JupyterHubDeploymentSpec
from coursehub.desired.gateway import (
    ERROR_PAGE,
    GATEWAY_NAME,
    NETWORK_POLICY_NAME,
    PAGES_ANNOTATION,
    PAGES_DIR,
    PAGES_NAME,
    SECRET_VERSION_ANNOTATION,
    error_page,
    gateway_objects,
    pages_hash,
)
from coursehub.desired.secrets import (
    DATABASE_READY,
    GATEWAY_READY,
    check_secrets,
    gateway_secret_names,
    hub_secret_names,
    required_secret_keys,
    secret_names,
    version_stamp,
)
from coursehub.desired.values_schema import InvalidValues
from coursehub.helm import (
    classify_helm_error,
    description_for,
    fingerprint_from_description,
    release_fingerprint,
    summarise_helm_error,
)

BASE = {
    "chart": {"repository": "https://hub.jupyter.org/helm-chart/", "name": "jupyterhub", "version": "4.4.1"},
    "domain": "nb.learn.example.edu",
    "gateway": {
        "oidc": {
            "issuerURL": "https://sso.example.edu/realms/olapps",
            "secretRef": {"name": "learn-oidc"},
            "allowedGroups": ["learners"],
        }
    },
    "database": {"urlSecretRef": {"name": "jupyterhub-db-creds", "key": "DATABASE_URL"}},
}


def spec(**over) -> JupyterHubDeploymentSpec:
    return JupyterHubDeploymentSpec.model_validate({**BASE, **over})


OIDC_DATA = {
    "client_id": b"nb-learn-client",
    "client_secret": b"very-secret",
    "cookie_secret": b"0123456789abcdef0123456789abcdef",
}
DB_DATA = {"DATABASE_URL": b"postgresql://hub:pw@db/jupyterhub"}


# --- gateway -------------------------------------------------------------------------


def secret_obj(name: str, uid: str, rv: str, data: dict) -> dict:
    """A Secret as the API returns it (data base64, metadata with uid and resourceVersion)."""
    import base64

    return {
        "metadata": {"name": name, "uid": uid, "resourceVersion": rv},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def test_gateway_objects_for_keycloak():
    dep, svc, netpol, pages = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu")
    for o in (dep, svc, netpol, pages):
        assert o["metadata"]["name"].startswith("coursehub-gateway")
        assert o["metadata"]["namespace"] == "jupyter"
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "coursehub"
        assert o["metadata"]["labels"]["coursehub.dev/hub"] == "learn"
        assert "ownerReferences" not in o["metadata"]
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert "--provider=keycloak-oidc" in c["args"]
    assert "--oidc-issuer-url=https://sso.example.edu/realms/olapps" in c["args"]
    assert "--upstream=http://proxy-public.jupyter.svc.cluster.local" in c["args"]
    assert "--redirect-url=https://nb.learn.example.edu/oauth2/callback" in c["args"]
    # groups restrict; oauth2-proxy needs an e-mail rule, and checks both
    assert "--email-domain=*" in c["args"] and "--allowed-group=learners" in c["args"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    assert env == {
        "OAUTH2_PROXY_CLIENT_ID": {"name": "learn-oidc", "key": "client_id"},
        "OAUTH2_PROXY_CLIENT_SECRET": {"name": "learn-oidc", "key": "client_secret"},
        "OAUTH2_PROXY_COOKIE_SECRET": {"name": "learn-oidc", "key": "cookie_secret"},
    }
    # restricted Pod Security Standard
    psc, csc = pod["spec"]["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # the Service selects the pods
    sel = svc["spec"]["selector"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in sel.items())
    assert dep["spec"]["selector"]["matchLabels"] == sel
    assert svc["spec"]["type"] == "ClusterIP"


def test_gateway_never_copies_secret_content():
    stamp = version_stamp(["learn-oidc"], {"learn-oidc": secret_obj("learn-oidc", "u1", "7", OIDC_DATA)})
    objs = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu", secret_version=stamp)
    text = json.dumps(objs)
    for v in OIDC_DATA.values():
        assert v.decode() not in text
    assert objs[0]["spec"]["template"]["metadata"]["annotations"] == {
        SECRET_VERSION_ANNOTATION: stamp,
        PAGES_ANNOTATION: pages_hash(error_page("https://sso.example.edu/realms/olapps")),
    }
    plain = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu")[0]
    assert SECRET_VERSION_ANNOTATION not in plain["spec"]["template"]["metadata"]["annotations"]


def test_oauth2_proxy_defaults_issue_12_item_9():
    args = gateway_objects("l", "n", spec(), "d.example.edu")[0]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--cookie-refresh=3600s" in args
    assert "--cookie-samesite=lax" in args
    # Keycloak refuses an unknown 'groups' scope: the scope is explicit and has none
    assert "--scope=openid email profile" in args
    custom = spec(
        gateway={
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/x",
                "secretRef": {"name": "x"},
                "emailDomains": ["mit.edu"],
                "scope": "openid email",
                "cookieRefreshSeconds": 600,
            }
        }
    )
    args = gateway_objects("l", "n", custom, "d.example.edu")[0]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--scope=openid email" in args and "--cookie-refresh=600s" in args
    assert "--email-domain=mit.edu" in args and "--email-domain=*" not in args


def gate_args(s: JupyterHubDeploymentSpec | None = None) -> list[str]:
    dep = gateway_objects("learn", "jupyter", s or spec(), "nb.learn.example.edu")[0]
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_scope_is_explicit_so_keycloak_never_sees_a_groups_scope():
    # With --allowed-group and no --scope, oauth2-proxy asks for "openid email profile groups";
    # Keycloak answers invalid_scope for a scope the realm lacks (issue 15).
    args = gate_args()
    assert "--allowed-group=learners" in args
    (scope,) = [a for a in args if a.startswith("--scope=")]
    assert scope == "--scope=openid email profile"
    assert "--oidc-groups-claim=groups" in args
    with_groups = spec(
        gateway={
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/olapps",
                "secretRef": {"name": "x"},
                "allowedGroups": ["learner"],
                "scope": "openid email profile groups",
            }
        }
    )
    # a realm that defines a groups client scope may ask for it; the operator says exactly that
    assert "--scope=openid email profile groups" in gate_args(with_groups)


def test_pass_user_headers_carries_the_identity_the_hub_limits_by():
    # The hub counts servers per X-Forwarded-Email / -Preferred-Username / -User (hub-side.md);
    # without this flag every launch would arrive without an identity and be refused (403).
    assert "--pass-user-headers=true" in gate_args()


def test_cookie_refresh_is_shorter_than_cookie_expire():
    args = gate_args()
    assert "--cookie-refresh=3600s" in args and "--cookie-expire=43200s" in args
    longest = spec(
        gateway={
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/olapps",
                "secretRef": {"name": "x"},
                "allowedGroups": ["learner"],
                "cookieRefreshSeconds": 86400,
            }
        }
    )
    # oauth2-proxy refuses to start when refresh >= expire
    assert "--cookie-refresh=86400s" in gate_args(longest)
    assert "--cookie-expire=90000s" in gate_args(longest)


def test_sign_out_ends_the_keycloak_session_too():
    assert (
        "--backend-logout-url=https://sso.example.edu/realms/olapps/protocol/openid-connect/logout"
        "?id_token_hint={id_token}"
    ) in gate_args()
    trailing = spec(
        gateway={
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/olapps/",
                "secretRef": {"name": "x"},
                "allowedGroups": ["learner"],
            }
        }
    )
    assert any(
        a.startswith("--backend-logout-url=https://sso.example.edu/realms/olapps/protocol/")
        for a in gate_args(trailing)
    )


def test_refused_users_get_a_readable_page_from_a_mounted_config_map():
    dep, _svc, _np, pages = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu")
    assert f"--custom-templates-dir={PAGES_DIR}" in gate_args()
    assert pages["kind"] == "ConfigMap" and pages["metadata"]["name"] == PAGES_NAME
    page = error_page("https://sso.example.edu/realms/olapps")
    assert pages["data"] == {"error.html": page}
    # a refused account has no gate session: "sign out" must end the Keycloak session itself
    assert 'href="https://sso.example.edu/realms/olapps/protocol/openid-connect/logout"' in page
    # the page says what happened to a refused account and to an unreachable issuer
    words = " ".join(ERROR_PAGE.split())
    assert "not in a group that this course hub admits" in words
    assert "Notebooks that are already running keep running" in words
    pod = dep["spec"]["template"]
    (vol,) = pod["spec"]["volumes"]
    assert vol == {"name": "pages", "configMap": {"name": PAGES_NAME}}
    (mount,) = pod["spec"]["containers"][0]["volumeMounts"]
    assert mount == {"name": "pages", "mountPath": PAGES_DIR, "readOnly": True}
    # oauth2-proxy reads templates at start only: a new page rolls the pods
    assert pod["metadata"]["annotations"][PAGES_ANNOTATION] == pages_hash(page)


def test_gate_without_groups_or_domains_is_refused_not_opened_to_everyone():
    # A hub stored before the CRD required either (the CEL rule is new): the operator refuses it.
    open_gate = spec(
        gateway={"oidc": {"issuerURL": "https://sso.example.edu/realms/x", "secretRef": {"name": "x"}}}
    )
    try:
        gateway_objects("l", "n", open_gate, "d.example.edu")
    except InvalidValues as e:
        assert e.path == "spec.gateway.oidc.allowedGroups"
        assert "emailDomains" in e.message
    else:
        raise AssertionError("a gate admitting every account was rendered")


def test_gateway_network_policy_admits_only_the_gate_to_proxy_http():
    dep, _svc, netpol, _pages = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu")
    assert netpol["kind"] == "NetworkPolicy" and netpol["metadata"]["name"] == NETWORK_POLICY_NAME
    ps = netpol["spec"]
    # it selects z2jh's proxy pods of this release
    assert ps["podSelector"]["matchLabels"] == {"app": "jupyterhub", "component": "proxy", "release": "learn"}
    assert ps["policyTypes"] == ["Ingress"]
    http = [r for r in ps["ingress"] if r["ports"] == [{"protocol": "TCP", "port": 8000}]]
    assert len(http) == 1
    # ... and only pods carrying the gate's labels may reach proxy-public's port
    (peer,) = http[0]["from"]
    assert set(peer) == {"podSelector"}
    gate_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(gate_labels.get(k) == v for k, v in peer["podSelector"]["matchLabels"].items())
    # the hub keeps the proxy's API port (z2jh labels the hub pod for it); nothing else is admitted
    api = [r for r in ps["ingress"] if r is not http[0]]
    assert [r["ports"] for r in api] == [[{"protocol": "TCP", "port": 8001}]]
    assert api[0]["from"] == [
        {"podSelector": {"matchLabels": {"hub.jupyter.org/network-access-proxy-api": "true"}}}
    ]


def test_gateway_groups_and_domains_and_image():
    s = spec(
        gateway={
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/olapps",
                "secretRef": {"name": "x"},
                "allowedGroups": ["learners", "staff"],
                "emailDomains": ["mit.edu"],
                "image": "registry.example.edu/oauth2-proxy:v7.7.1",
            }
        }
    )
    c = gateway_objects("learn", "ns", s, "d.example.edu")[0]["spec"]["template"]["spec"]["containers"][0]
    assert [a for a in c["args"] if a.startswith(("--allowed-group", "--email-domain"))] == [
        "--email-domain=mit.edu",
        "--allowed-group=learners",
        "--allowed-group=staff",
    ]
    assert c["image"] == "registry.example.edu/oauth2-proxy:v7.7.1"


def test_no_gateway_no_objects():
    # (no NetworkPolicy either: without a gate, proxy-public is the way in)
    assert gateway_objects("learn", "jupyter", spec(gateway=None, auth={"allowUngated": True}), "d") == []


def test_gateway_is_deterministic():
    assert gateway_objects("l", "n", spec(), "d") == gateway_objects("l", "n", spec(), "d")
    assert GATEWAY_NAME == "coursehub-gateway"


# --- secrets -------------------------------------------------------------------------


def test_required_keys():
    r = required_secret_keys(spec())
    assert r == {
        DATABASE_READY: [("jupyterhub-db-creds", "DATABASE_URL")],
        GATEWAY_READY: [
            ("learn-oidc", "client_id"),
            ("learn-oidc", "client_secret"),
            ("learn-oidc", "cookie_secret"),
        ],
    }
    assert secret_names(r) == ["jupyterhub-db-creds", "learn-oidc"]


def test_required_keys_sqlite_and_shared_password():
    s = spec(
        database={"type": "sqlite-memory"},
        gateway=None,
        auth={"mode": "sharedPassword", "sharedPassword": {"secretRef": {"name": "pw", "key": "password"}}},
    )
    assert required_secret_keys(s) == {DATABASE_READY: [], GATEWAY_READY: [("pw", "password")]}


def test_check_secrets_all_present():
    out = check_secrets(
        required_secret_keys(spec()), {"jupyterhub-db-creds": DB_DATA, "learn-oidc": OIDC_DATA}
    )
    assert out[DATABASE_READY][0] is True and out[GATEWAY_READY][0] is True
    assert out[DATABASE_READY][1] == "SecretsFound"


def test_check_secrets_missing_secret_and_key():
    out = check_secrets(
        required_secret_keys(spec()), {"jupyterhub-db-creds": {"OTHER": b"x"}, "learn-oidc": None}
    )
    assert out[DATABASE_READY] == (
        False,
        "SecretKeyMissing",
        "Secret jupyterhub-db-creds has no key DATABASE_URL",
    )
    ok, reason, message = out[GATEWAY_READY]
    assert (ok, reason) == (False, "SecretNotFound")
    assert message == "Secret learn-oidc not found"  # once, not once per key


def test_check_secrets_absent_from_dict_counts_as_not_found_and_empty_as_missing():
    out = check_secrets(required_secret_keys(spec()), {"learn-oidc": {**OIDC_DATA, "cookie_secret": b""}})
    assert out[DATABASE_READY] == (False, "SecretNotFound", "Secret jupyterhub-db-creds not found")
    assert out[GATEWAY_READY] == (False, "SecretKeyMissing", "Secret learn-oidc key cookie_secret is empty")


def test_check_secrets_not_required():
    out = check_secrets({DATABASE_READY: [], GATEWAY_READY: []}, {})
    assert out == {
        DATABASE_READY: (True, "NoSecretRequired", "No Secret is needed."),
        GATEWAY_READY: (True, "NoSecretRequired", "No Secret is needed."),
    }


def test_messages_never_carry_values():
    out = check_secrets(
        required_secret_keys(spec()),
        {"jupyterhub-db-creds": DB_DATA, "learn-oidc": {"client_id": b"nb-learn-client"}},
    )
    text = json.dumps(out)
    assert "postgresql" not in text and "nb-learn-client" not in text


def test_version_stamp_moves_once_per_change_and_never_hashes_content():
    a = secret_obj("db", "uid-1", "100", DB_DATA)
    stamp = version_stamp(["db"], {"db": a})
    assert stamp and stamp.startswith("sha256:")
    # same object, same version: same stamp (no restart without a change)
    assert version_stamp(["db"], {"db": secret_obj("db", "uid-1", "100", DB_DATA)}) == stamp
    # rotated (new resourceVersion) or replaced (new uid): a new stamp, once
    assert version_stamp(["db"], {"db": secret_obj("db", "uid-1", "101", DB_DATA)}) != stamp
    assert version_stamp(["db"], {"db": secret_obj("db", "uid-2", "100", DB_DATA)}) != stamp
    # the content is not an input: a guess of the password cannot be checked against the stamp
    assert (
        version_stamp(["db"], {"db": secret_obj("db", "uid-1", "100", {"DATABASE_URL": b"other"})}) == stamp
    )
    assert version_stamp(["db"], {"db": None}) is None and version_stamp([], {}) is None


@given(st.lists(st.tuples(st.from_regex(r"[a-z]{1,5}", fullmatch=True), st.text(max_size=5)), max_size=4))
def test_version_stamp_is_order_free(items):
    secrets = {n: secret_obj(n, f"u-{n}", rv, {}) for n, rv in items}
    names = list(secrets)
    assert version_stamp(names, secrets) == version_stamp(list(reversed(names)), secrets)


def test_which_secrets_roll_which_pods():
    sp = spec(
        gateway=None,
        auth={"mode": "sharedPassword", "sharedPassword": {"secretRef": {"name": "pw", "key": "password"}}},
    )
    assert hub_secret_names(sp) == ["jupyterhub-db-creds", "pw"]
    assert gateway_secret_names(sp) == []
    assert hub_secret_names(spec()) == ["jupyterhub-db-creds"]
    assert gateway_secret_names(spec()) == ["learn-oidc"]


# --- spec.gateway.tls: the gate serves https itself from a referenced Secret -----------

TLS_GATEWAY = {**BASE["gateway"], "tls": {"secretRef": {"name": "learn-tls"}}}


def _container(objs: list[dict]) -> dict:
    (c,) = objs[0]["spec"]["template"]["spec"]["containers"]
    return c


def test_gateway_tls_serves_https_only_from_the_mounted_secret():
    dep, svc, _np, _pages = gateway_objects(
        "learn", "jupyter", spec(gateway=TLS_GATEWAY), "nb.learn.example.edu"
    )
    c = _container([dep])
    args = c["args"]
    # no plain listener, https on 4443 with the mounted pair; the callback stays https://<domain>
    assert "--http-address=-" in args
    assert not [a for a in args if a.startswith("--http-address=0")]
    assert "--https-address=0.0.0.0:4443" in args
    assert "--tls-cert-file=/etc/oauth2-proxy/tls/tls.crt" in args
    assert "--tls-key-file=/etc/oauth2-proxy/tls/tls.key" in args
    assert "--redirect-url=https://nb.learn.example.edu/oauth2/callback" in args
    assert "--cookie-secure=true" in args
    # the Secret is referenced by a volume, never copied into args, env or annotations
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "learn-tls"
    assert {i["key"] for i in vols["tls"]["secret"]["items"]} == {"tls.crt", "tls.key"}
    assert {"name": "tls", "mountPath": "/etc/oauth2-proxy/tls", "readOnly": True} in c["volumeMounts"]
    assert c["ports"][0] == {"name": "https", "containerPort": 4443, "protocol": "TCP"}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS" and c[probe]["httpGet"]["port"] == "https"
    assert svc["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    assert "nodeSelector" not in dep["spec"]["template"]["spec"]
    placed = gateway_objects("l", "n", spec(gateway={**TLS_GATEWAY, "nodeSelector": {"edge": "true"}}), "d")[
        0
    ]
    assert placed["spec"]["template"]["spec"]["nodeSelector"] == {"edge": "true"}


def test_gateway_without_tls_keeps_plain_http_for_an_ingress_that_ends_tls():
    dep, svc, _np, _pages = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu")
    c = _container([dep])
    assert "--http-address=0.0.0.0:4180" in c["args"]
    assert not [a for a in c["args"] if a.startswith(("--https-address", "--tls-"))]
    assert [v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]] == ["pages"]
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def test_gateway_tls_secret_is_required_and_a_renewal_rolls_the_gate():
    sp = spec(gateway=TLS_GATEWAY)
    assert ("learn-tls", "tls.crt") in required_secret_keys(sp)[GATEWAY_READY]
    assert ("learn-tls", "tls.key") in required_secret_keys(sp)[GATEWAY_READY]
    assert gateway_secret_names(sp) == ["learn-oidc", "learn-tls"]
    tls = {"tls.crt": b"-----BEGIN CERTIFICATE-----", "tls.key": b"-----BEGIN PRIVATE KEY-----"}
    before = version_stamp(gateway_secret_names(sp), {
        "learn-oidc": secret_obj("learn-oidc", "u1", "1", OIDC_DATA),
        "learn-tls": secret_obj("learn-tls", "u2", "7", tls),
    })  # fmt: skip
    after = version_stamp(gateway_secret_names(sp), {
        "learn-oidc": secret_obj("learn-oidc", "u1", "1", OIDC_DATA),
        "learn-tls": secret_obj("learn-tls", "u2", "8", tls),
    })  # fmt: skip
    assert before != after
    assert "BEGIN" not in before


def test_gateway_tls_without_oidc_is_refused_naming_the_field():
    sp = spec(gateway={"tls": {"secretRef": {"name": "learn-tls"}}}, auth={"allowUngated": True})
    try:
        gateway_objects("l", "n", sp, "d.example.edu")
    except InvalidValues as e:
        assert e.path == "spec.gateway.tls"
        assert "spec.gateway.oidc" in str(e)
    else:
        raise AssertionError("a TLS gate without oidc was rendered")
    # the CRD carries the same rule, so the API server refuses it first
    rules = JupyterHubDeploymentSpec.model_json_schema()["$defs"]["Gateway"]["x-kubernetes-validations"]
    assert rules[0]["rule"] == "!has(self.tls) || has(self.oidc)"
    assert "spec.gateway.tls needs spec.gateway.oidc" in rules[0]["message"]


def test_hub_logout_ends_the_sso_session_when_gated():
    from coursehub.desired.gateway import SIGN_OUT_PATH
    from coursehub.desired.values import render_values

    gated = render_values("learn", "jupyter", spec())
    assert (
        gated["hub"]["config"]["Authenticator"]["logout_redirect_url"] == SIGN_OUT_PATH == "/oauth2/sign_out"
    )
    ungated = render_values("learn", "jupyter", spec(gateway=None, auth={"allowUngated": True}))
    assert "logout_redirect_url" not in ungated["hub"]["config"].get("Authenticator", {})


def test_hub_logout_handler_follows_the_setting():
    from coursehub.hub.course_spawner import CourseLogoutHandler, CourseTmpAuthenticator

    a = CourseTmpAuthenticator()
    assert a.logout_redirect_url == ""
    assert ("/logout", CourseLogoutHandler) in a.get_handlers(None)
    from traitlets.config import Config

    cfg = Config()
    cfg.Authenticator.logout_redirect_url = "/oauth2/sign_out"
    assert CourseTmpAuthenticator(config=cfg).logout_redirect_url == "/oauth2/sign_out"


# --- helm.py pure helpers -----------------------------------------------------------


def test_fingerprint_follows_chart_and_values():
    chart = ChartSource(repository="https://hub.jupyter.org/helm-chart", name="jupyterhub", version="4.4.1")
    same = ChartSource(repository="https://hub.jupyter.org/helm-chart/", name="jupyterhub", version="4.4.1")
    newer = ChartSource(repository="https://hub.jupyter.org/helm-chart/", name="jupyterhub", version="4.4.2")
    fp = release_fingerprint(chart, {"a": 1, "b": {"c": 2}})
    assert fp == release_fingerprint(same, {"b": {"c": 2}, "a": 1})
    assert fp != release_fingerprint(newer, {"a": 1, "b": {"c": 2}})
    assert fp != release_fingerprint(chart, {"a": 2, "b": {"c": 2}})
    assert fingerprint_from_description(description_for(fp)) == fp
    assert fingerprint_from_description("Rollback to 3") is None
    assert fingerprint_from_description(None) is None


def test_helm_errors_are_classified_and_summarised():
    schema = (
        "Error: UPGRADE FAILED: values don't meet the specifications of the schema(s) in the following "
        "chart(s):\njupyterhub:\n- at '/hub': additional properties 'foo' not allowed\n"
    )
    assert classify_helm_error(schema, "upgrade") == "ValuesRejected"
    assert summarise_helm_error(schema).startswith("values don't meet")
    assert "'foo'" in summarise_helm_error(schema)
    invalid = (
        "Error: UPGRADE FAILED: release learn failed, and has been rolled back due to atomic being set: "
        'cannot patch "hub" with kind Deployment: Deployment.apps "hub" is invalid: spec.replicas: '
        "Invalid value: -1: must be greater than or equal to 0"
    )
    assert classify_helm_error(invalid, "upgrade") == "ResourceInvalid"
    assert (
        classify_helm_error("Error: Kubernetes cluster unreachable: dial tcp: connection refused", "install")
        == "ClusterUnreachable"
    )
    assert (
        classify_helm_error(
            "Error: INSTALLATION FAILED: template: jupyterhub/templates/x.yaml:3:4: "
            "executing ... at <fail>: error calling fail: nope",
            "install",
        )
        == "ChartRenderFailed"
    )
    assert (
        classify_helm_error(
            'Error: chart "nope" version "1.0.0" not found in https://x repository', "upgrade"
        )
        == "ChartNotFound"
    )
    assert classify_helm_error("Error: something odd", "upgrade") == "UpgradeFailed"
    assert (
        classify_helm_error("Error: could not find protocol handler for: file", "show_chart")
        == "InvalidChartSource"
    )
    assert classify_helm_error("Error: timed out waiting for the condition", "upgrade") == "Timeout"


def test_summaries_drop_credentials_and_are_bounded():
    s = summarise_helm_error(
        "warning: x\nError: failed to fetch https://user:hunter2@charts.example.edu/index.yaml"
        " token=abc123 password: pw1"
    )
    assert "hunter2" not in s and "abc123" not in s and "pw1" not in s
    assert "https://***@charts.example.edu" in s
    assert not s.startswith("warning")
    assert len(summarise_helm_error("Error: " + "x" * 5000)) == 600


def test_refusals_of_the_tenant_identity_are_classified():
    forbidden = (
        'Error: INSTALLATION FAILED: configmaps "x" is forbidden: User '
        '"system:serviceaccount:jupyter:coursehub-helm" cannot create resource "configmaps" in API group "" '
        'in the namespace "kube-system"'
    )
    assert classify_helm_error(forbidden, "install") == "Forbidden"
    refused = 'Error: serviceaccounts "coursehub-helm" is forbidden: User "x" cannot impersonate resource'
    assert classify_helm_error(refused, "status") == "ImpersonationRefused"
    from coursehub.desired.hub_round import DETERMINISTIC_RELEASE_REASONS

    assert "Forbidden" in DETERMINISTIC_RELEASE_REASONS  # the same chart would be refused again
