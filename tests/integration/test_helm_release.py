"""The z2jh release against the real local control plane, with real helm and the published
z2jh 4.4.0 chart (its .tgz, as spec.chart.path takes it); kwok plays its pods.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coursehub.api.jupyterhubdeployment import ChartSource, JupyterHubDeploymentSpec
from coursehub.desired import tenancy
from coursehub.desired.courses import HubRecord
from coursehub.desired.values import SECRETS_ANNOTATION, render_values, validate_values
from coursehub.helm import HelmReleases, ReleaseFailed
from coursehub_dev.paths import Z2JH_CHART

pytestmark = pytest.mark.e2e

CHART = ChartSource(path=str(Z2JH_CHART))


def spec(**over) -> JupyterHubDeploymentSpec:
    base = {
        "chart": CHART.to_wire(),
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
    base.update(over)
    return JupyterHubDeploymentSpec.model_validate(base)


def values_for(s: JupyterHubDeploymentSpec, namespace: str, **kw) -> dict:
    v = render_values("learn", namespace, s, **kw)
    validate_values(v)
    return v


@pytest.fixture
def helm(cluster):
    return HelmReleases(executable=cluster.binaries["helm"], kubeconfig=cluster.kubeconfig, timeout="180s")


def hub_deployment(cluster, namespace: str) -> dict:
    out = cluster.kubectl("get", "deployment", "hub", "-n", namespace, "-o", "json")
    return json.loads(out.stdout)


async def test_install_then_noop_then_one_upgrade(cluster, namespace, helm):
    v1 = values_for(spec(), namespace, secrets_version="h1")
    first = await helm.ensure_release("learn", namespace, CHART, v1)
    assert (first.changed, first.operation, first.revision, first.status) == (True, "install", 1, "deployed")
    assert first.chart_version == "4.4.0"
    dep = hub_deployment(cluster, namespace)
    pod_annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert pod_annotations[SECRETS_ANNOTATION] == "h1"
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "jupyterhub-db-creds",
        "key": "DATABASE_URL",
    }
    svc = json.loads(cluster.kubectl("get", "service", "proxy-public", "-n", namespace, "-o", "json").stdout)
    assert svc["spec"]["type"] == "ClusterIP"

    # Nothing changed: no mutating helm call, the revision stays.
    mutating = helm.mutating_operations
    again = await helm.ensure_release(
        "learn", namespace, CHART, values_for(spec(), namespace, secrets_version="h1")
    )
    assert (again.changed, again.revision) == (False, 1)
    assert helm.mutating_operations == mutating

    # An operator restart (fresh handler, no memory) still sees no change.
    restarted = HelmReleases(executable=cluster.binaries["helm"], kubeconfig=cluster.kubeconfig)
    after_restart = await restarted.ensure_release("learn", namespace, CHART, v1)
    assert (after_restart.changed, after_restart.revision) == (False, 1)
    assert restarted.mutating_operations == 0

    # A spec change upgrades exactly once.
    v2 = values_for(spec(culling={"timeoutSeconds": 1800}), namespace, secrets_version="h1")
    up = await helm.ensure_release("learn", namespace, CHART, v2)
    assert (up.changed, up.operation, up.revision) == (True, "upgrade", 2)
    assert (await helm.ensure_release("learn", namespace, CHART, v2)).changed is False

    # A rotated database Secret (new hash) restarts the hub once: the pod template changes.
    before = hub_deployment(cluster, namespace)["spec"]["template"]
    v3 = values_for(spec(culling={"timeoutSeconds": 1800}), namespace, secrets_version="h2")
    rotated = await helm.ensure_release("learn", namespace, CHART, v3)
    assert (rotated.changed, rotated.revision) == (True, 3)
    after = hub_deployment(cluster, namespace)["spec"]["template"]
    assert after["metadata"]["annotations"][SECRETS_ANNOTATION] == "h2"
    assert after != before
    assert (await helm.ensure_release("learn", namespace, CHART, v3)).changed is False
    status = await helm.release_status("learn", namespace)
    assert status is not None and status.revision == 3


async def test_failed_upgrade_rolls_back_and_is_not_retried(cluster, namespace, helm):
    good = values_for(spec(), namespace)
    assert (await helm.ensure_release("learn", namespace, CHART, good)).revision == 1

    # Valid for the schema and the operator's policy; the API server refuses the rendered hub.
    bad = values_for(spec(values={"hub": {"resources": {"requests": {"cpu": "-1"}}}}), namespace)
    with pytest.raises(ReleaseFailed) as exc:
        await helm.ensure_release("learn", namespace, CHART, bad)
    assert exc.value.reason == "ResourceInvalid"
    assert "rolled back" in exc.value.message
    assert "resources.requests" in exc.value.message
    # Revision 2 failed, revision 3 is the rollback to 1.
    assert exc.value.revision == 3
    status = await helm.release_status("learn", namespace)
    assert (status.revision, status.status) == (3, "deployed")
    assert hub_deployment(cluster, namespace)["spec"]["replicas"] == 1

    # The same failing values are not tried again against the same revision.
    mutating = helm.mutating_operations
    with pytest.raises(ReleaseFailed) as again:
        await helm.ensure_release("learn", namespace, CHART, bad)
    assert again.value.reason == "ResourceInvalid"
    assert helm.mutating_operations == mutating

    # Back to the good values: the rolled-back revision already runs them.
    back = await helm.ensure_release("learn", namespace, CHART, good)
    assert (back.changed, back.revision) == (False, 3)
    assert helm.mutating_operations == mutating


async def test_values_the_schema_refuses_never_reach_the_cluster(cluster, namespace, helm):
    good = values_for(spec(), namespace)
    await helm.ensure_release("learn", namespace, CHART, good)
    bad = {**good, "hub": {**good["hub"], "foo": 1}}  # bypassing validate_values on purpose
    with pytest.raises(ReleaseFailed) as exc:
        await helm.ensure_release("learn", namespace, CHART, bad)
    assert exc.value.reason == "ValuesRejected"
    assert "foo" in exc.value.message
    status = await helm.release_status("learn", namespace)
    assert (status.revision, status.status) == (1, "deployed")


async def test_uninstall(cluster, namespace, helm):
    await helm.ensure_release("learn", namespace, CHART, values_for(spec(), namespace))
    assert await helm.uninstall_release("learn", namespace, wait=True) is True
    assert await helm.release_status("learn", namespace) is None
    gone = cluster.kubectl("get", "deployment", "hub", "-n", namespace, check=False)
    assert gone.returncode != 0
    assert await helm.uninstall_release("learn", namespace) is False


async def test_missing_chart_path_is_reported(namespace, helm):
    missing = ChartSource(path="/nonexistent/jupyterhub")
    with pytest.raises(ReleaseFailed) as exc:
        await helm.ensure_release("learn", namespace, missing, {})
    assert exc.value.reason == "ChartNotFound"


@pytest.fixture
def chart_repository(cluster, tmp_path):
    """The published chart in a plain HTTP chart repository on loopback."""
    import functools
    import shutil
    import subprocess
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    repo = tmp_path / "repo"
    repo.mkdir()
    helm_bin = cluster.binaries["helm"]
    shutil.copy(Z2JH_CHART, repo)  # already a chart package
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(repo))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    subprocess.run([helm_bin, "repo", "index", str(repo), "--url", url], check=True, capture_output=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


async def test_chart_from_a_repository(namespace, helm, chart_repository):
    chart = ChartSource(repository=chart_repository, name="jupyterhub", version="4.4.0")
    v = values_for(spec(), namespace)
    first = await helm.ensure_release("learn", namespace, chart, v)
    assert (first.changed, first.revision, first.chart_version) == (True, 1, "4.4.0")
    # The pinned version is known without asking the repository: a no-op is one `helm status`.
    before = dict(helm.operations)
    again = await helm.ensure_release("learn", namespace, chart, v)
    assert (again.changed, again.revision) == (False, 1)
    calls = {k: n - before.get(k, 0) for k, n in helm.operations.items() if n != before.get(k, 0)}
    assert calls == {("status", "ok"): 1}
    # The same chart from a path is a different source: one upgrade, then quiet again.
    moved = await helm.ensure_release("learn", namespace, CHART, v)
    assert (moved.changed, moved.revision) == (True, 2)
    assert (await helm.ensure_release("learn", namespace, CHART, v)).changed is False

    missing = ChartSource(repository=chart_repository, name="jupyterhub", version="9.9.9")
    with pytest.raises(ReleaseFailed) as exc:
        await helm.ensure_release("learn", namespace, missing, v)
    assert exc.value.reason == "ChartNotFound"
    assert "9.9.9" in exc.value.message


async def test_a_chart_source_helm_cannot_use_is_reported(namespace, helm, tmp_path):
    # The CRD allows file:// repositories; helm has no protocol handler for them without a plugin.
    chart = ChartSource(repository=f"file://{tmp_path}", name="jupyterhub", version="4.4.0")
    with pytest.raises(ReleaseFailed) as exc:
        await helm.ensure_release("learn", namespace, chart, {})
    assert exc.value.reason == "InvalidChartSource"
    assert "file" in exc.value.message
    assert await helm.release_status("learn", namespace) is None


# --- Helm as the hub's tenant (issue 12, item 3) ------------------------------------


def tenant(cluster, namespace: str) -> str:
    """The hub's tenant ServiceAccount and RoleBinding, as the operator applies them; its user name."""
    hub = HubRecord(namespace=namespace, name="learn", uid="u", created="", generation=1, spec=spec())
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(tenancy.tenant_objects(hub))
    )
    return tenancy.helm_user(hub)


def escaping_chart(tmp_path: Path, manifest: dict) -> ChartSource:
    """A chart that renders one object of its own namespace and `manifest` (somewhere else)."""
    chart = tmp_path / "escape"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: escape\nversion: 0.1.0\n")
    own = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "own"}, "data": {"a": "b"}}
    (chart / "templates" / "objects.yaml").write_text(yaml.safe_dump_all([own, manifest]))
    return ChartSource(path=str(chart))


def exists(cluster, *args: str) -> bool:
    return cluster.kubectl("get", *args, check=False).returncode == 0


async def test_the_z2jh_chart_installs_with_the_tenant_rights_alone(cluster, namespace, helm):
    user = tenant(cluster, namespace)
    out = await helm.ensure_release("learn", namespace, CHART, values_for(spec(), namespace), as_user=user)
    assert (out.changed, out.revision, out.status) == (True, 1, "deployed")
    again = await helm.ensure_release("learn", namespace, CHART, values_for(spec(), namespace), as_user=user)
    assert again.changed is False
    assert await helm.uninstall_release("learn", namespace, wait=True, as_user=user) is True


@pytest.mark.parametrize(
    "target, where",
    [
        (
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": "kube-system"}},
            ("configmap", "-n", "kube-system"),
        ),
        (
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "rules": []},
            ("clusterrole",),
        ),
    ],
)
async def test_impersonated_helm_is_refused_outside_the_hub_namespace(
    cluster, namespace, helm, tmp_path, target, where
):
    name = f"escape-{namespace}"
    manifest = {**target, "metadata": {**target.get("metadata", {}), "name": name}}
    chart = escaping_chart(tmp_path, manifest)
    user = tenant(cluster, namespace)
    with pytest.raises(ReleaseFailed) as exc:
        await helm.ensure_release("escape", namespace, chart, {}, as_user=user)
    # The API server refused it, naming the tenant and the object; nothing was created.
    assert exc.value.reason == "Forbidden", exc.value.message
    assert f"system:serviceaccount:{namespace}:coursehub-helm" in exc.value.message
    assert not exists(cluster, *where, name)
    assert not exists(cluster, "configmap", "own", "-n", namespace)  # atomic: the install is removed
    # Control: the very same chart as the operator's own (admin) identity does escape, so the
    # refusal above is the impersonation's doing.
    helm_admin = HelmReleases(
        executable=cluster.binaries["helm"], kubeconfig=cluster.kubeconfig, timeout="60s"
    )
    try:
        await helm_admin.ensure_release("escape", namespace, chart, {})
        assert exists(cluster, *where, name)
    finally:
        await helm_admin.uninstall_release("escape", namespace, wait=True)
        cluster.kubectl("delete", *where, name, "--ignore-not-found", check=False)


async def test_impersonating_an_account_the_operator_may_not_use_is_reported(cluster, namespace):
    # A user with no right to impersonate (the operator's own rights are checked in test_chart).
    cluster.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = cluster.kubectl("create", "token", "nobody", "-n", namespace).stdout.strip()
    cfg = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    cfg["users"] = [{"name": "nobody", "user": {"token": token}}]
    for ctx in cfg["contexts"]:
        ctx["context"]["user"] = "nobody"
    kubeconfig = Path(cluster.state_dir) / f"nobody-{namespace}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(cfg))
    weak = HelmReleases(executable=cluster.binaries["helm"], kubeconfig=kubeconfig, timeout="60s")
    with pytest.raises(ReleaseFailed) as exc:
        await weak.ensure_release(
            "learn", namespace, CHART, {}, as_user=f"system:serviceaccount:{namespace}:coursehub-helm"
        )
    assert exc.value.reason == "ImpersonationRefused", exc.value.message
    assert "tenancy.serviceAccountName" in exc.value.message
