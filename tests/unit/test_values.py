"""Rendered z2jh values: every option, merged over the real 4.4.0 defaults, checked against its schema."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from coursehub import cli
from coursehub.api.jupyterhubdeployment import ChartSource, JupyterHubDeploymentSpec
from coursehub.desired import values as V
from coursehub.desired.manifest import render_values_from_manifest
from coursehub.desired.policy import ChartPolicy, InvalidChart, check_chart
from coursehub.desired.values import (
    SECRETS_ANNOTATION,
    InvalidValues,
    helm_coalesce,
    hub_allowlist_rbac,
    hub_service_account,
    memory_bytes,
    render_values,
    validate_values,
    z2jh_defaults,
)
from coursehub.desired.values_schema import Z2JH_DIR, Z2JH_VERSION
from coursehub.hub import DATABASE_SNIPPET_KEY
from coursehub_dev.paths import Z2JH_CHART

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "z2jh-4.4.0"
# jupyterhub-4.4.0.tgz as published
Z2JH_SHA256 = "947632ef7d445a24aa740ec5dd978e96f1e701787bb9917f1e25389b7acf550c"

# The example hub of DESIGN.md, as a platform team would apply it.
DESIGN_HUB = """
apiVersion: coursehub.dev/v1alpha1
kind: JupyterHubDeployment
metadata: {name: learn, namespace: jupyter}
spec:
  chart: {repository: https://hub.jupyter.org/helm-chart/, name: jupyterhub, version: 4.4.1}
  domain: nb.learn.example.edu
  auth: {mode: tmp}
  gateway:
    oidc:
      issuerURL: https://sso.example.edu/realms/olapps
      secretRef: {name: learn-oidc}
      allowedGroups: [learners]
  database:
    urlSecretRef: {name: jupyterhub-db-creds, key: DATABASE_URL}
  culling: {enabled: true, timeoutSeconds: 900, everySeconds: 300, maxAgeSeconds: 14400, users: true}
  courses:
    namespaces: Same
    selector: {}
    default: clustering_and_descriptive_ai
    onUnknown: default
  prePull: {enabled: true}
  singleuser: {memory: {limit: 4G, guarantee: 2G}, cpu: {guarantee: 0.25},
               gpuNodes: {label: ol.mit.edu/gpu_node=true, toleration: ol.mit.edu/gpu_node=true:NoSchedule}}
  values: {}
"""

DB_URL = "postgresql://hub:s3cr3t-pw@db.example.edu:5432/jupyterhub"


def manifest() -> dict:
    return yaml.safe_load(DESIGN_HUB)


def spec(**over) -> JupyterHubDeploymentSpec:
    raw = manifest()["spec"]
    raw.update(over)
    return JupyterHubDeploymentSpec.model_validate(raw)


def render(s: JupyterHubDeploymentSpec | None = None, **kw) -> dict:
    return render_values("learn", "jupyter", s or spec(), **kw)


def merged(values: dict) -> dict:
    return helm_coalesce(z2jh_defaults(), values)


# --- the example hub ---------------------------------------------------------------


def test_design_hub_renders_the_facts_of_the_system_it_replaces():
    v = render(secrets_version="sha256:stamp-of-uid-and-resourceversion")
    validate_values(v)
    m = merged(v)
    hub = m["hub"]
    assert hub["db"]["type"] == "postgres"
    assert hub["db"]["url"] is None  # the default stays: the URL never goes through values
    assert hub["extraEnv"]["DATABASE_URL"] == {
        "valueFrom": {"secretKeyRef": {"name": "jupyterhub-db-creds", "key": "DATABASE_URL"}}
    }
    assert "c.JupyterHub.db_url = " in hub["extraConfig"][DATABASE_SNIPPET_KEY]
    assert hub["config"]["JupyterHub"]["authenticator_class"] == "tmp"
    assert hub["config"]["Authenticator"]["allow_all"] is True
    assert hub["extraEnv"][V.ALLOWLIST_ENV] == "coursehub-allowlist"
    assert m["cull"] == {
        **z2jh_defaults()["cull"],
        "enabled": True,
        "every": 300,
        "timeout": 900,
        "maxAge": 14400,
        "users": True,
    }
    su = m["singleuser"]
    assert su["memory"] == {"limit": "4G", "guarantee": "2G"}
    assert su["cpu"] == {"limit": None, "guarantee": 0.25}
    assert su["storage"]["type"] == "none"
    assert su["startTimeout"] == 600
    assert su["cmd"] == "jupyterhub-singleuser"
    # GPU placement is per course (hub module); the defaults never tolerate the GPU taint.
    assert su["extraTolerations"] == [] and su["nodeSelector"] == {}
    assert m["prePuller"]["hook"]["enabled"] is False
    assert m["prePuller"]["continuous"]["enabled"] is False
    assert m["prePuller"]["extraImages"] == {}  # courses never go through values
    assert m["proxy"]["service"]["type"] == "ClusterIP"
    assert SECRETS_ANNOTATION in hub["annotations"]


def test_hub_module_is_embedded_as_extra_config():
    from coursehub.hub import extra_config_snippets

    v = render(allowlist_configmap="other-allowlist")
    snippets = extra_config_snippets(allowlist_configmap="other-allowlist")
    for key, text in snippets.items():
        assert v["hub"]["extraConfig"][key] == text
    assert v["hub"]["extraEnv"][V.ALLOWLIST_ENV] == "other-allowlist"
    # One database snippet, whoever provides it.
    assert sum("db_url" in t for t in v["hub"]["extraConfig"].values()) == 1


def test_no_secret_content_anywhere_in_the_values():
    password = "correct-horse-battery"
    s = spec(
        auth={"mode": "sharedPassword", "sharedPassword": {"secretRef": {"name": "pw", "key": "password"}}},
        gateway=None,
    )
    h = "sha256:stamp-of-uid-and-resourceversion"
    text = json.dumps(render(s, secrets_version=h))
    for needle in (DB_URL, "s3cr3t-pw", "db.example.edu", password):
        assert needle not in text
    assert h in text  # only the hash, by design


def test_deterministic_and_key_sorted():
    a, b = render(secrets_version="x"), render(secrets_version="x")
    assert a == b
    assert json.dumps(a) == json.dumps(b)

    def sorted_everywhere(o):
        if isinstance(o, dict):
            return list(o) == sorted(o) and all(sorted_everywhere(v) for v in o.values())
        if isinstance(o, list):
            return all(sorted_everywhere(v) for v in o)
        return True

    assert sorted_everywhere(a)


# --- every option ------------------------------------------------------------------


def test_database_hash_annotation_changes_only_with_the_hash():
    same1, same2 = render(secrets_version="aaa"), render(secrets_version="aaa")
    other = render(secrets_version="bbb")
    assert same1 == same2
    assert other["hub"]["annotations"] == {SECRETS_ANNOTATION: "bbb"}
    other["hub"]["annotations"][SECRETS_ANNOTATION] = "aaa"
    assert other == same1  # nothing else moved
    assert "annotations" not in render()["hub"]


def test_sqlite_memory_dev_mode():
    s = spec(database={"type": "sqlite-memory"})
    v = render(s)  # no Secret the hub reads: the caller passes no stamp
    validate_values(v)
    assert v["hub"]["db"] == {"type": "sqlite-memory"}
    assert "DATABASE_URL" not in v["hub"]["extraEnv"]
    assert "annotations" not in v["hub"]


def test_shared_password_auth():
    s = spec(
        auth={"mode": "sharedPassword", "sharedPassword": {"secretRef": {"name": "pw", "key": "password"}}}
    )
    v = render(s)
    validate_values(v)
    assert v["hub"]["config"]["JupyterHub"]["authenticator_class"] == "shared-password"
    assert v["hub"]["config"]["Authenticator"]["allow_all"] is True
    assert v["hub"]["extraEnv"][V.SHARED_PASSWORD_ENV] == {
        "valueFrom": {"secretKeyRef": {"name": "pw", "key": "password"}}
    }
    assert "SharedPasswordAuthenticator.user_password" in v["hub"]["extraConfig"][V.AUTH_SNIPPET_KEY]


def test_custom_auth_sets_no_authenticator():
    s = spec(
        auth={"mode": "custom"}, values={"hub": {"config": {"JupyterHub": {"authenticator_class": "github"}}}}
    )
    v = render(s)
    validate_values(v)
    assert v["hub"]["config"]["JupyterHub"] == {"authenticator_class": "github"}
    assert "Authenticator" not in v["hub"]["config"]


def test_default_auth_is_tmp_when_auth_block_absent():
    raw = manifest()["spec"]
    del raw["auth"]
    v = render(JupyterHubDeploymentSpec.model_validate(raw))
    assert v["hub"]["config"]["JupyterHub"]["authenticator_class"] == "tmp"


def test_culling_defaults_and_disabled():
    raw = manifest()["spec"]
    del raw["culling"]
    v = render(JupyterHubDeploymentSpec.model_validate(raw))
    assert v["cull"] == {"enabled": True, "every": 300, "timeout": 900, "maxAge": 14400, "users": True}
    off = render(spec(culling={"enabled": False}))
    validate_values(off)
    assert off["cull"] == {"enabled": False}


def test_no_gateway_keeps_the_chart_default_service():
    s = spec(gateway=None, auth={"mode": "tmp", "allowUngated": True})
    v = render(s)
    assert "proxy" not in v
    assert merged(v)["proxy"]["service"]["type"] == "LoadBalancer"


def test_singleuser_defaults_when_unset():
    raw = manifest()["spec"]
    del raw["singleuser"]
    v = render(JupyterHubDeploymentSpec.model_validate(raw))
    assert v["singleuser"]["memory"] == {"limit": "4G", "guarantee": "2G"}
    assert v["singleuser"]["cpu"] == {"guarantee": 0.25}
    assert v["singleuser"]["startTimeout"] == 600


def test_defaulted_guarantee_never_exceeds_an_explicit_limit():
    v = render(spec(singleuser={"memory": {"limit": "1G"}, "cpu": {"limit": 0.1}}))
    assert v["singleuser"]["memory"] == {"limit": "1G", "guarantee": "1G"}
    assert v["singleuser"]["cpu"] == {"limit": 0.1, "guarantee": 0.1}
    v = render(spec(singleuser={"memory": {"guarantee": "3G"}, "startTimeoutSeconds": 120}))
    assert v["singleuser"]["memory"] == {"limit": "4G", "guarantee": "3G"}
    assert v["singleuser"]["startTimeout"] == 120


# --- spec.values -------------------------------------------------------------------


def test_spec_values_merge_last_and_deep():
    s = spec(
        values={
            "hub": {"config": {"JupyterHub": {"admin_access": False}}, "extraEnv": {"EXTRA": "1"}},
            "singleuser": {
                "memory": {"limit": "8G"},
                "extraTolerations": [{"key": "a", "operator": "Exists"}],
            },
            "cull": {"every": 60},
            "scheduling": {"userScheduler": {"enabled": True}},
        }
    )
    v = render(s)
    validate_values(v)
    assert v["hub"]["config"]["JupyterHub"] == {"authenticator_class": "tmp", "admin_access": False}
    assert v["hub"]["extraEnv"]["EXTRA"] == "1"
    assert "DATABASE_URL" in v["hub"]["extraEnv"]
    assert v["singleuser"]["memory"] == {"limit": "8G", "guarantee": "2G"}
    assert v["cull"]["every"] == 60 and v["cull"]["timeout"] == 900
    # the user's choice wins, the operator's other scheduling defaults stay
    assert v["scheduling"] == {"userScheduler": {"enabled": True}, "podPriority": {"enabled": False}}


def test_spec_values_lists_replace_and_nulls_pass_through():
    s = spec(values={"singleuser": {"cmd": None}, "hub": {"extraConfig": {"zz-mine": "print(1)"}}})
    v = render(s)
    validate_values(v)
    assert v["singleuser"]["cmd"] is None  # helm drops the chart default under a null
    assert "cmd" not in merged(v)["singleuser"]
    assert v["hub"]["extraConfig"]["zz-mine"] == "print(1)"


def test_spec_values_extra_env_list_form_merges_with_ours():
    s = spec(
        values={
            "hub": {
                "extraEnv": [
                    {"name": "A", "value": "b"},
                    {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ]
            }
        }
    )
    v = render(s)
    validate_values(v)
    env = v["hub"]["extraEnv"]
    assert env["A"] == "b"
    assert env["B"] == {"valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert "DATABASE_URL" in env and V.ALLOWLIST_ENV in env


# --- validation ----------------------------------------------------------------------


def test_unknown_key_is_named():
    v = render(spec(values={"hub": {"foo": 1}}))
    with pytest.raises(InvalidValues) as e:
        validate_values(v)
    assert e.value.path == "spec.values.hub.foo"
    assert (
        str(e.value)
        == "spec.values.hub.foo: additional property 'foo' is not allowed by the z2jh 4.4.0 schema"
    )


def test_unknown_top_level_and_deep_keys_are_named():
    with pytest.raises(InvalidValues) as e:
        validate_values(render(spec(values={"singleuser": {"storage": {"kind": "none"}}})))
    assert e.value.path == "spec.values.singleuser.storage.kind"
    with pytest.raises(InvalidValues) as e:
        validate_values(render(spec(values={"hubb": {}})))
    assert e.value.path == "spec.values.hubb"


def test_wrong_type_enum_and_required_are_named():
    with pytest.raises(InvalidValues) as e:
        validate_values(render(spec(values={"cull": {"every": "often"}})))
    assert e.value.path == "spec.values.cull.every"
    assert "not of type integer" in e.value.message
    with pytest.raises(InvalidValues) as e:
        validate_values(
            render(
                spec(
                    gateway=None,
                    auth={"allowUngated": True},
                    values={"proxy": {"service": {"type": "Magic"}}},
                )
            )
        )
    assert e.value.path == "spec.values.proxy.service.type"
    assert "'Magic'" in e.value.message or '"Magic"' in e.value.message
    with pytest.raises(InvalidValues) as e:
        validate_values(render(spec(values={"cull": {"enabled": None}})))
    assert e.value.path == "spec.values.cull.enabled"
    assert "required" in e.value.message


def test_several_problems_are_counted():
    with pytest.raises(InvalidValues) as e:
        validate_values(render(spec(values={"hub": {"foo": 1}, "proxy": {"bar": 2}})))
    assert e.value.path == "spec.values.hub.foo"
    assert "and 1 more problem" in e.value.message


def test_invalid_values_is_a_value_error():
    assert issubclass(InvalidValues, ValueError)


# --- `coursehub render` --------------------------------------------------------------


def test_render_from_manifest_equals_render():
    assert render_values_from_manifest(manifest()) == render()


def test_render_from_manifest_names_a_bad_field():
    m = manifest()
    m["spec"]["culling"]["timeoutSeconds"] = 5
    with pytest.raises(ValueError, match=r"spec\.culling\.timeoutSeconds"):
        render_values_from_manifest(m)
    m = manifest()
    m["spec"]["values"] = {"hub": {"foo": 1}}
    with pytest.raises(InvalidValues, match=r"spec\.values\.hub\.foo"):
        render_values_from_manifest(m)
    with pytest.raises(ValueError, match="JupyterHubDeployment"):
        render_values_from_manifest({"kind": "CourseImage"})


def test_cli_render_prints_the_values(tmp_path, capsys):
    f = tmp_path / "hub.yaml"
    f.write_text(DESIGN_HUB)
    assert cli.main(["render", str(f)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == render()
    bad = manifest()
    bad["spec"]["values"] = {"hub": {"foo": 1}}
    f.write_text(yaml.safe_dump(bad))
    assert cli.main(["render", str(f)]) == 1
    assert "spec.values.hub.foo" in capsys.readouterr().err


# --- RBAC for the allowlist ---------------------------------------------------------


def test_hub_allowlist_rbac_grants_exactly_the_configmap():
    role, binding = hub_allowlist_rbac("learn", "jupyter", "coursehub-allowlist")
    assert role["kind"] == "Role" and binding["kind"] == "RoleBinding"
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["coursehub-allowlist"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "jupyter"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    for o in (role, binding):
        assert o["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "coursehub",
            "coursehub.dev/hub": "learn",
        }
        assert "ownerReferences" not in o["metadata"]


def test_hub_service_account_follows_values():
    assert hub_service_account(render()) == "hub"
    v = render(spec(values={"hub": {"serviceAccount": {"name": "my-hub"}}}))
    assert hub_service_account(v) == "my-hub"
    assert (
        hub_allowlist_rbac("learn", "jupyter", service_account="my-hub")[1]["subjects"][0]["name"] == "my-hub"
    )


# --- the shipped schema copies ------------------------------------------------------


def chart_file(name: str) -> str:
    """A file of the published z2jh chart, read from inside its .tgz."""
    with tarfile.open(Z2JH_CHART) as tgz:
        f = tgz.extractfile(f"jupyterhub/{name}")
        assert f is not None, name
        return f.read().decode()


def test_package_carries_the_published_charts_schema_and_defaults():
    if not Z2JH_CHART.exists():
        pytest.skip(f"the z2jh chart is not at {Z2JH_CHART} (set COURSEHUB_Z2JH_CHART)")
    pkg_schema = json.loads((Z2JH_DIR / "values.schema.json").read_text())
    assert yaml.safe_load(chart_file("Chart.yaml"))["version"] == Z2JH_VERSION
    assert json.loads(chart_file("values.schema.json")) == pkg_schema
    # The package's defaults are z2jh's source values.yaml; publishing replaced chartpress's
    # placeholder image tags with the release's version, and nothing else.
    source = json.dumps(z2jh_defaults()).replace('"set-by-chartpress"', json.dumps(Z2JH_VERSION))
    assert yaml.safe_load(chart_file("values.yaml")) == json.loads(source)
    assert (Z2JH_DIR / "LICENSE").exists()
    if SHARED.exists():  # next to the repository in development and CI
        assert json.loads((SHARED / "values.schema.json").read_text()) == pkg_schema
        assert json.loads((SHARED / "values.defaults.json").read_text()) == z2jh_defaults()


def test_the_checkouts_z2jh_chart_is_the_published_file():
    """charts/z2jh-4.4.0 is the published chart byte for byte (so a clone anywhere has it)."""
    import hashlib

    from coursehub_dev.paths import Z2JH_DIR

    kept = (Z2JH_DIR / "jupyterhub-4.4.0.tgz").read_bytes()
    assert hashlib.sha256(kept).hexdigest() == Z2JH_SHA256
    if SHARED.exists():
        for name in ("jupyterhub-4.4.0.tgz", "LICENSE"):
            assert (Z2JH_DIR / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_defaults_alone_validate():
    validate_values({})


def test_memory_bytes():
    assert memory_bytes("4G") == 4 * 10**9
    assert memory_bytes("2Gi") == 2 * 2**30
    assert memory_bytes("512") == 512
    with pytest.raises(ValueError):
        memory_bytes("4GB")


# --- properties ---------------------------------------------------------------------

memory_q = st.builds(lambda n, u: f"{n}{u}", st.integers(1, 64), st.sampled_from(["M", "G", "Mi", "Gi"]))
cpu_q = st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 8.0])


@settings(max_examples=150, deadline=None)
@given(
    enabled=st.booleans(),
    timeout=st.integers(60, 31536000),
    every=st.integers(10, 86400),
    max_age=st.integers(0, 31536000),
    users=st.booleans(),
    mem_limit=st.none() | memory_q,
    mem_guarantee=st.none() | memory_q,
    cpu_limit=st.none() | cpu_q,
    cpu_guarantee=st.none() | cpu_q,
    start=st.integers(30, 3600),
    db_hash=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_any_culling_and_resources_validate(
    enabled,
    timeout,
    every,
    max_age,
    users,
    mem_limit,
    mem_guarantee,
    cpu_limit,
    cpu_guarantee,
    start,
    db_hash,
):
    su: dict = {"startTimeoutSeconds": start}
    if mem_limit or mem_guarantee:
        su["memory"] = {k: v for k, v in (("limit", mem_limit), ("guarantee", mem_guarantee)) if v}
    if cpu_limit or cpu_guarantee:
        su["cpu"] = {k: v for k, v in (("limit", cpu_limit), ("guarantee", cpu_guarantee)) if v}
    s = spec(
        culling={
            "enabled": enabled,
            "timeoutSeconds": timeout,
            "everySeconds": every,
            "maxAgeSeconds": max_age,
            "users": users,
        },
        singleuser=su,
    )
    v = render(s, secrets_version=db_hash)
    validate_values(v)
    assert v == render(s, secrets_version=db_hash)
    if enabled:
        assert (v["cull"]["timeout"], v["cull"]["every"], v["cull"]["maxAge"]) == (timeout, every, max_age)
    mem = v["singleuser"]["memory"]
    if not mem_guarantee:  # only a defaulted guarantee is adjusted; an explicit one is the user's call
        assert memory_bytes(mem["guarantee"]) <= memory_bytes(mem["limit"])
    cpu = v["singleuser"]["cpu"]
    if "limit" in cpu and not cpu_guarantee:
        assert cpu["guarantee"] <= cpu["limit"]


# --- what an author may ask (issue 12, items 3 and 5) ---------------------------------

OFFICIAL = {"repository": "https://hub.jupyter.org/helm-chart/", "name": "jupyterhub", "version": "4.4.1"}


def test_chart_policy_default_allows_only_the_official_z2jh_chart():
    check_chart(ChartSource(**OFFICIAL), ChartPolicy())
    check_chart(
        ChartSource(**{**OFFICIAL, "repository": "https://hub.jupyter.org/helm-chart"}), ChartPolicy()
    )
    refused = [
        ({**OFFICIAL, "repository": "https://charts.evil.example/"}, "spec.chart.repository"),
        ({**OFFICIAL, "name": "cluster-admin-maker"}, "spec.chart.name"),
        ({"name": "oci://registry.evil.example/charts/jupyterhub", "version": "4.4.1"}, "spec.chart.name"),
        ({"path": "/tmp/charts/jupyterhub"}, "spec.chart.path"),
        ({"name": "jupyterhub", "version": "4.4.1"}, "spec.chart.repository"),
    ]
    for chart, path in refused:
        with pytest.raises(InvalidChart) as e:
            check_chart(ChartSource(**chart), ChartPolicy())
        assert e.value.path == path
        assert "https://hub.jupyter.org/helm-chart/" in e.value.message  # says what is allowed


def test_chart_policy_paths_and_oci_are_explicit_choices():
    policy = ChartPolicy.from_strings(None, None, "oci://registry.example.edu/charts/jupyterhub", "/charts")
    check_chart(ChartSource(path="/charts/jupyterhub"), policy)
    check_chart(ChartSource(name="oci://registry.example.edu/charts/jupyterhub", version="4.4.1"), policy)
    for bad in ("/charts/../etc", "/chartsx/jupyterhub", "charts/jupyterhub"):
        with pytest.raises(InvalidChart):
            check_chart(ChartSource(path=bad), policy)
    with pytest.raises(InvalidChart):
        check_chart(
            ChartSource(name="oci://registry.example.edu/charts/jupyterhub-evil", version="1.0.0"), policy
        )


def test_render_refuses_a_chart_outside_the_policy():
    m = manifest()
    m["spec"]["chart"] = {"path": str(Z2JH_CHART)}
    with pytest.raises(InvalidChart):
        render_values_from_manifest(m)
    # the policy names the .tgz itself (as the dev cluster's COURSEHUB_CHART_PATHS does) or its folder
    assert render_values_from_manifest(m, ChartPolicy(paths=(str(Z2JH_CHART),)))
    assert render_values_from_manifest(m, ChartPolicy(paths=(str(Z2JH_CHART.parent),)))
    with pytest.raises(InvalidChart):
        render_values_from_manifest(m, ChartPolicy(paths=(str(Z2JH_CHART.with_suffix(".zip")),)))


@pytest.mark.parametrize(
    "values, path",
    [
        ({"hub": {"image": {"name": "evil/hub", "tag": "1"}}}, "spec.values.hub.image"),
        (
            {"hub": {"containerSecurityContext": {"privileged": True}}},
            "spec.values.hub.containerSecurityContext.privileged",
        ),
        (
            {"singleuser": {"extraContainers": [{"name": "x", "securityContext": {"privileged": True}}]}},
            "spec.values.singleuser.extraContainers[0].securityContext.privileged",
        ),
        (
            {"singleuser": {"storage": {"extraVolumes": [{"name": "root", "hostPath": {"path": "/"}}]}}},
            "spec.values.singleuser.storage.extraVolumes[0].hostPath",
        ),
        (
            {"hub": {"extraVolumes": [{"name": "r", "hostPath": {"path": "/"}}]}},
            "spec.values.hub.extraVolumes[0].hostPath",
        ),
        (
            {"singleuser": {"extraPodConfig": {"hostNetwork": True}}},
            "spec.values.singleuser.extraPodConfig.hostNetwork",
        ),
        ({"hub": {"extraPodSpec": {"hostPID": True}}}, "spec.values.hub.extraPodSpec.hostPID"),
        (
            {"proxy": {"chp": {"extraPodSpec": {"hostIPC": True}}}},
            "spec.values.proxy.chp.extraPodSpec.hostIPC",
        ),
    ],
)
def test_values_that_reach_the_node_are_refused(values, path):
    for s in (spec(values=values), spec(gateway=None, auth={"allowUngated": True}, values=values)):
        with pytest.raises(InvalidValues) as e:
            render(s)
        assert e.value.path == path
        assert path in e.value.message and "remove" in e.value.message


def test_harmless_flags_set_to_false_pass():
    v = render(spec(values={"singleuser": {"extraPodConfig": {"hostNetwork": False}}}))
    validate_values(v)


@pytest.mark.parametrize(
    "values, path",
    [
        ({"proxy": {"service": {"type": "LoadBalancer"}}}, "spec.values.proxy.service"),
        ({"proxy": {"https": {"enabled": True}}}, "spec.values.proxy.https"),
        ({"proxy": {"traefik": {"hsts": {}}}}, "spec.values.proxy.traefik"),
        (
            {"proxy": {"chp": {"networkPolicy": {"allowedIngressPorts": ["http"]}}}},
            "spec.values.proxy.chp.networkPolicy",
        ),
        ({"ingress": {"enabled": True, "hosts": ["nb.learn.example.edu"]}}, "spec.values.ingress"),
        ({"httpRoute": {"enabled": True}}, "spec.values.httpRoute"),
    ],
)
def test_ways_around_the_gate_are_refused_while_a_gate_is_set(values, path):
    with pytest.raises(InvalidValues) as e:
        render(spec(values=values))
    assert e.value.path == path and "spec.gateway.oidc" in e.value.message
    # without a gate the proxy's own exposure is the hub owner's business
    render(spec(gateway=None, auth={"allowUngated": True}, values=values))


def test_gate_closes_z2jh_proxy_policy_so_only_the_gateway_policy_admits():
    proxy = render()["proxy"]
    assert proxy["service"] == {"type": "ClusterIP"}
    assert proxy["chp"]["networkPolicy"] == {
        "allowedIngressPorts": [],
        "interNamespaceAccessLabels": "ignore",
    }
    validate_values(render())
    assert "chp" not in render(spec(gateway=None, auth={"allowUngated": True})).get("proxy", {})


def test_tmp_without_a_gate_is_refused_at_render_even_when_the_crd_rule_never_ran():
    # A hub stored under an older CRD (no CEL rule): the operator's own check refuses it.
    with pytest.raises(InvalidValues) as e:
        render(spec(gateway=None, auth={"mode": "tmp"}))
    assert e.value.path == "spec.auth.mode" and "allowUngated" in e.value.message
    with pytest.raises(InvalidValues):
        render(spec(gateway=None, auth=None))  # tmp by default
    render(spec(gateway=None, auth={"mode": "tmp", "allowUngated": True}))
    m = manifest()
    del m["spec"]["gateway"]
    with pytest.raises(InvalidValues):
        render_values_from_manifest(m)


@pytest.mark.parametrize("cls", ["tmp", "tmpauthenticator.TmpAuthenticator"])
def test_tmp_chosen_through_spec_values_is_refused_without_a_gate(cls):
    sp = {"mode": "sharedPassword", "sharedPassword": {"secretRef": {"name": "pw", "key": "password"}}}
    values = {"hub": {"config": {"JupyterHub": {"authenticator_class": cls}}}}
    with pytest.raises(InvalidValues) as e:
        render(spec(gateway=None, auth=sp, values=values))
    assert e.value.path == "spec.values.hub.config.JupyterHub.authenticator_class"
    render(spec(gateway=None, auth={**sp, "allowUngated": True}, values=values))
    render(spec(values=values))  # gated


def test_the_database_snippet_has_one_home():
    from coursehub.hub import extra_config_snippets

    hub = render()["hub"]
    db_snippets = [k for k, v in hub["extraConfig"].items() if "db_url" in v]
    assert db_snippets == [DATABASE_SNIPPET_KEY]
    assert hub["extraConfig"][DATABASE_SNIPPET_KEY] == extra_config_snippets()[DATABASE_SNIPPET_KEY]
    assert not hasattr(V, "_DATABASE_SNIPPET")
