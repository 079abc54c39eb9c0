"""The OIDC gate's objects, the Secret checks and hashes, and helm.py's pure helpers."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from coursehub.api.jupyterhubdeployment import ChartSource, JupyterHubDeploymentSpec
from coursehub.desired.gateway import GATEWAY_NAME, SECRET_HASH_ANNOTATION, gateway_objects
from coursehub.desired.secrets import (
    DATABASE_READY,
    GATEWAY_READY,
    check_secrets,
    database_secret_hash,
    required_secret_keys,
    secret_hash,
    secret_names,
)
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
        "oidc": {"issuerURL": "https://sso.example.edu/realms/olapps", "secretRef": {"name": "learn-oidc"}}
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


def test_gateway_objects_for_keycloak():
    dep, svc = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu")
    for o in (dep, svc):
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
    assert "--email-domain=*" in c["args"]
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
    h = secret_hash(OIDC_DATA)
    text = json.dumps(gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu", secret_hash=h))
    for v in OIDC_DATA.values():
        assert v.decode() not in text
    dep = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu", secret_hash=h)[0]
    assert dep["spec"]["template"]["metadata"]["annotations"] == {SECRET_HASH_ANNOTATION: h}
    plain = gateway_objects("learn", "jupyter", spec(), "nb.learn.example.edu")[0]
    assert "annotations" not in plain["spec"]["template"]["metadata"]


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


@given(st.dictionaries(st.text(max_size=8), st.binary(max_size=16), max_size=5))
def test_secret_hash_is_order_free_and_sensitive(data):
    h = secret_hash(data)
    assert h == secret_hash(dict(reversed(list(data.items()))))
    assert len(h) == 64
    if data:
        k = sorted(data)[0]
        assert secret_hash({**data, k: data[k] + b"x"}) != h


def test_secret_hash_has_no_boundary_collisions():
    assert secret_hash({"a": b"bc"}) != secret_hash({"ab": b"c"})
    assert secret_hash({"a": "x"}) == secret_hash({"a": b"x"})


def test_database_secret_hash_covers_only_the_referenced_key():
    a = database_secret_hash(spec(), {"jupyterhub-db-creds": {**DB_DATA, "unrelated": b"1"}})
    b = database_secret_hash(spec(), {"jupyterhub-db-creds": {**DB_DATA, "unrelated": b"2"}})
    assert a == b and a is not None
    rotated = database_secret_hash(spec(), {"jupyterhub-db-creds": {"DATABASE_URL": b"postgresql://new"}})
    assert rotated != a
    assert database_secret_hash(spec(), {}) is None
    assert database_secret_hash(spec(database={"type": "sqlite-memory"}), {}) is None


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
