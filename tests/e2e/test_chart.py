"""The operator's Helm chart on the local control plane.

helm lint; helm template renders; the manifests pass a server dry-run and apply for real in
a namespace that enforces the "restricted" Pod Security Standard; the operator Deployment
becomes Available (kwok runs its pod); the ServiceAccount can do what the operator needs and
nothing more (kubectl auth can-i as the ServiceAccount); the chart's CRDs are crds/.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import yaml

from coursehub.kube import BY_KIND
from coursehub.reconcile.hub import OWNED_KINDS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "coursehub-operator"
CRD_DIR = REPO / "crds"


def helm(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([cluster.binaries["helm"], *args], capture_output=True, text=True, env=cluster.env())
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def render(cluster, release: str, namespace: str, *sets: str) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return helm(cluster, *args).stdout


def docs_of(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def resource_name(res) -> str:
    """A coursehub.kube.Resource as kubectl names it: plural.group."""
    return f"{res.plural}.{res.group}" if res.group else res.plural


def can_i(
    cluster,
    sa: str,
    verb: str,
    resource: str,
    *,
    namespace: str | None = None,
    subresource: str | None = None,
) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={sa}"]
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    if subresource:
        args.append(f"--subresource={subresource}")
    res = cluster.kubectl(*args, check=False)
    # can-i exits 0 for yes and 1 for no; anything else is an error of the test itself.
    assert res.returncode in (0, 1), res.stderr
    return res.stdout.strip() == "yes"


@pytest.fixture
def restricted_namespace(cluster):
    """A fresh namespace that enforces the restricted Pod Security Standard."""
    name = f"chart-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "label",
        "namespace",
        name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def priority_level_uid(cluster, name: str) -> str:
    obj = cluster.kubectl("get", "prioritylevelconfiguration", name, "-o", "json").stdout
    return json.loads(obj)["metadata"]["uid"]


def served_in(cluster, user: str, path: str) -> str:
    """The UID of the API server's priority level that served a GET of `path` as `user`: its
    X-Kubernetes-PF-PriorityLevel-UID response header, which kubectl shows at -v=8 (refused
    requests carry it too)."""
    out = cluster.kubectl("get", "--raw", path, f"--as={user}", "-v=8", check=False)
    m = re.search(r"X-Kubernetes-Pf-Prioritylevel-Uid:\s*([0-9a-f-]{36})", out.stderr, re.IGNORECASE)
    assert m, out.stderr[-2000:]
    return m.group(1)


def _cleanup_cluster_scoped(cluster, release: str) -> None:
    cluster.kubectl(
        "delete",
        "clusterrole,clusterrolebinding,flowschema",
        "-l",
        f"app.kubernetes.io/instance={release}",
        "--wait=false",
        check=False,
    )


def test_helm_lint_is_clean(cluster):
    for sets in (
        ["watch.allNamespaces=true"],
        ["watch.namespaces={a,b}", "argocd.healthChecks=true"],
        ["shards[0].name=a", "shards[0].namespaces={x}", "shards[1].name=b", "shards[1].namespaces={y}"],
    ):
        args = ["lint", "--strict", str(CHART)]
        for s in sets:
            args += ["--set", s]
        res = helm(cluster, *args)
        assert "0 chart(s) failed" in res.stdout
        assert "[ERROR]" not in res.stdout and "[WARNING]" not in res.stdout, res.stdout


def test_listed_namespaces_are_the_default_and_all_namespaces_an_explicit_choice(cluster):
    res = helm(cluster, "template", "rel", str(CHART), "--namespace", "ops", check=False)
    assert res.returncode != 0
    assert "watch.namespaces must list the namespaces to watch" in res.stderr
    assert "watch.allNamespaces=true" in res.stderr  # the fix is named
    objs = docs_of(render(cluster, "rel", "ops", "watch.namespaces={jupyter}"))
    assert not [
        d
        for d in objs
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "rel-coursehub-operator"
    ]
    roles = [d for d in objs if d["kind"] == "Role"]
    assert [
        d["metadata"]["namespace"] for d in roles if d["metadata"]["name"] == "rel-coursehub-operator"
    ] == ["jupyter"]
    # ... and the leader election's Leases in its own namespace
    assert [d["metadata"]["namespace"] for d in roles if d["metadata"]["name"].endswith("-leases")] == ["ops"]


def test_tenant_cluster_role_is_desired_tenancy_rules(cluster):
    from coursehub.desired.tenancy import TENANT_RULES

    objs = docs_of(render(cluster, "rel", "ops", "watch.namespaces={jupyter}"))
    (role,) = [
        d
        for d in objs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "rel-coursehub-operator-tenant"
    ]
    assert role["rules"] == TENANT_RULES
    (dep,) = [d for d in objs if d["kind"] == "Deployment"]
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["COURSEHUB_TENANT_CLUSTER_ROLE"] == "rel-coursehub-operator-tenant"
    assert env["COURSEHUB_TENANT_SERVICE_ACCOUNT"] == "coursehub-helm"
    assert env["COURSEHUB_CHART_REPOSITORIES"] == "https://hub.jupyter.org/helm-chart/"
    assert env["COURSEHUB_CHART_NAMES"] == "jupyterhub"
    assert env["COURSEHUB_CHART_PATHS"] == "" and env["COURSEHUB_CHART_OCI"] == ""


def test_chart_crds_are_the_generated_crds(cluster, tmp_path):
    # In the chart directory (symlinks into crds/) ...
    chart_crds = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert chart_crds == {p.name: p.read_bytes() for p in sorted(CRD_DIR.glob("*.yaml"))}
    # ... and in the packaged chart, where helm stores the files' contents.
    helm(cluster, "package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("coursehub-operator-*.tgz")
    with tarfile.open(tgz) as tar:
        packaged = {
            Path(m.name).name: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.name.startswith("coursehub-operator/crds/")
        }
    assert packaged == chart_crds
    # ... and in what `helm template --include-crds` renders.
    rendered = docs_of(
        helm(cluster, "template", "x", str(CHART), "--include-crds", "--set", "watch.namespaces={a}").stdout
    )
    crd_docs = [d for d in rendered if d["kind"] == "CustomResourceDefinition"]
    assert sorted(crd_docs, key=lambda d: d["metadata"]["name"]) == sorted(
        (yaml.safe_load(p.read_text()) for p in CRD_DIR.glob("*.yaml")), key=lambda d: d["metadata"]["name"]
    )


def test_argocd_snippet_carries_the_lua_files(cluster):
    text = render(cluster, "x", "ops", "argocd.healthChecks=true", "watch.namespaces={a}")
    (cm,) = [
        d
        for d in docs_of(text)
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("argocd-health")
    ]
    for kind, path in (
        ("CourseImage", "courseimage-health.lua"),
        ("JupyterHubDeployment", "jupyterhubdeployment-health.lua"),
    ):
        assert (
            cm["data"][f"resource.customizations.health.coursehub.dev_{kind}"]
            == (CHART / "argocd" / path).read_text()
        )
    assert not any(
        d["kind"] == "ConfigMap" for d in docs_of(render(cluster, "x", "ops", "watch.namespaces={a}"))
    )


def test_rendered_deployment_follows_the_contract(cluster):
    objs = docs_of(
        render(
            cluster,
            "rel",
            "ops",
            "image.tag=1.2.3",
            "aws.endpointURL=http://moto:5000",
            "operator.resolveIntervalSeconds=120",
            "watch.allNamespaces=true",
        )
    )
    (dep,) = [d for d in objs if d["kind"] == "Deployment"]
    spec = dep["spec"]
    # Two replicas, one leading (a Lease); a rolling update replaces one pod at a time.
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}
    le = {e["name"]: e for e in c["env"]}
    assert le["COURSEHUB_LEADER_ELECTION"]["value"] == "true"
    assert le["COURSEHUB_LEASE_NAME"]["value"] == "rel-coursehub-operator"
    assert le["COURSEHUB_LEASE_NAMESPACE"]["value"] == "ops"
    assert le["COURSEHUB_IDENTITY"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "COURSEHUB_SHARD" not in le
    assert c["image"].endswith(":1.2.3")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"healthz": 8080, "metrics": 8000}
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"] and "--all-namespaces" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["COURSEHUB_AWS_ENDPOINT_URL"] == "http://moto:5000"
    assert env["COURSEHUB_RESOLVE_INTERVAL"] == "120"
    assert env["COURSEHUB_METRICS_PORT"] == "8000"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    (svc,) = [d for d in objs if d["kind"] == "Service"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_chart_applies_and_operator_becomes_available(cluster, restricted_namespace, namespace):
    ns = restricted_namespace
    release = f"ch{uuid.uuid4().hex[:6]}"
    manifests = render(cluster, release, ns, "watch.allNamespaces=true")
    try:
        dry = cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=manifests)
        # The restricted profile would warn on the Deployment's pod template if it fell short.
        assert "PodSecurity" not in dry.stderr, dry.stderr
        # Control: the same Deployment without its security contexts does draw the warning,
        # so the check above can fail.
        (dep,) = [d for d in docs_of(manifests) if d["kind"] == "Deployment"]
        dep["spec"]["template"]["spec"].pop("securityContext")
        dep["spec"]["template"]["spec"]["containers"][0].pop("securityContext")
        weak = cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", input=yaml.safe_dump(dep))
        assert "PodSecurity" in weak.stderr and "restricted" in weak.stderr, weak.stderr
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=manifests)
        fullname = f"{release}-coursehub-operator"
        cluster.kubectl(
            "wait", "-n", ns, "--for=condition=Available", f"deployment/{fullname}", "--timeout=180s"
        )
        pods = yaml.safe_load(cluster.kubectl("get", "pods", "-n", ns, "-o", "yaml").stdout)["items"]
        assert len(pods) == 2 and {p["spec"]["serviceAccountName"] for p in pods} == {fullname}

        sa = f"system:serviceaccount:{ns}:{fullname}"
        other = "some-hub-namespace"
        must = [
            ("list", "courseimages.coursehub.dev", None, None),
            ("watch", "jupyterhubdeployments.coursehub.dev", None, None),
            ("patch", "courseimages.coursehub.dev", other, "status"),
            ("patch", "jupyterhubdeployments.coursehub.dev", other, "status"),
            ("update", "jupyterhubdeployments.coursehub.dev", other, "finalizers"),
            ("patch", "courseimages.coursehub.dev", other, None),  # its own finalizer, by SSA
            ("get", "secrets", other, None),  # the Secrets hubs and courses reference, one by one
            ("create", "events", other, None),
            ("patch", "configmaps", other, None),
            ("create", "daemonsets.apps", other, None),
            ("delete", "daemonsets.apps", other, None),
            ("create", "deployments.apps", other, None),
            ("create", "services", other, None),
            ("create", "roles.rbac.authorization.k8s.io", other, None),
            ("create", "rolebindings.rbac.authorization.k8s.io", other, None),
            ("create", "networkpolicies.networking.k8s.io", other, None),
            ("create", "serviceaccounts", other, None),  # the tenant account
            # list (by a hub's label, once per process) every kind a hub owns: what a hub no
            # longer wants is pruned after a restart too
            *(("list", resource_name(BY_KIND[kind]), other, None) for kind in OWNED_KINDS),
            ("impersonate", "serviceaccounts/coursehub-helm", other, None),
            (
                "bind",
                f"clusterroles.rbac.authorization.k8s.io/{release}-coursehub-operator-tenant",
                other,
                None,
            ),
            ("list", "namespaces", None, None),
            ("watch", "customresourcedefinitions.apiextensions.k8s.io", None, None),
            # leader election and namespace claims: Leases of its own namespace
            ("get", "leases.coordination.k8s.io", ns, None),
            ("create", "leases.coordination.k8s.io", ns, None),
            ("update", "leases.coordination.k8s.io", ns, None),
        ]
        must_not = [
            ("delete", "nodes", None, None),
            ("get", "nodes", None, None),
            ("escalate", "roles.rbac.authorization.k8s.io", other, None),
            ("bind", "roles.rbac.authorization.k8s.io", other, None),
            ("escalate", "clusterroles.rbac.authorization.k8s.io", None, None),
            ("create", "clusterroles.rbac.authorization.k8s.io", None, None),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, None),
            ("impersonate", "serviceaccounts", other, None),  # any name
            ("impersonate", "serviceaccounts/default", other, None),
            ("impersonate", "users", None, None),
            ("impersonate", "groups", None, None),
            ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", other, None),
            ("bind", "clusterroles.rbac.authorization.k8s.io/admin", other, None),
            # no cluster-wide (or any) list/watch of Secrets; Helm writes its own as the tenant
            ("list", "secrets", None, None),
            ("watch", "secrets", None, None),
            ("list", "secrets", other, None),
            ("create", "secrets", other, None),
            # z2jh's rights are the tenant's, not the operator's
            ("create", "pods", other, None),
            ("create", "persistentvolumeclaims", other, None),
            ("create", "poddisruptionbudgets.policy", other, None),
            ("create", "jobs.batch", other, None),
            ("create", "namespaces", None, None),
            ("delete", "namespaces", None, None),
            ("create", "customresourcedefinitions.apiextensions.k8s.io", None, None),
            ("update", "courseimages.coursehub.dev", other, None),  # never rewrites a spec
            ("delete", "courseimages.coursehub.dev", other, None),  # never deletes a user's object
            ("delete", "jupyterhubdeployments.coursehub.dev", other, None),
            ("create", "pods", other, "exec"),
            ("get", "pods", other, "log"),
            ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", None, None),
            ("*", "*", None, None),
            # Leases only where the operator runs, and never deleted or watched
            ("update", "leases.coordination.k8s.io", other, None),
            ("create", "leases.coordination.k8s.io", None, None),
            ("delete", "leases.coordination.k8s.io", ns, None),
            ("list", "leases.coordination.k8s.io", ns, None),
            # webhooks are off by default: no EndpointSlice rights at all (the leader's slice)
            ("create", "endpointslices.discovery.k8s.io", ns, None),
            ("update", "endpointslices.discovery.k8s.io", ns, None),
        ]
        wrong = [
            f"{v} {r} (ns={n}, sub={s})"
            for v, r, n, s in must
            if not can_i(cluster, sa, v, r, namespace=n, subresource=s)
        ]
        assert not wrong, f"the operator's ServiceAccount lacks: {wrong}"
        wrong = [
            f"{v} {r} (ns={n}, sub={s})"
            for v, r, n, s in must_not
            if can_i(cluster, sa, v, r, namespace=n, subresource=s)
        ]
        assert not wrong, f"the operator's ServiceAccount may do more than it needs: {wrong}"

        # Its Lease requests are served in the API server's leader-election priority level
        # (the chart's FlowSchema), its other requests where any ServiceAccount's are.
        leader_level = priority_level_uid(cluster, "leader-election")
        lease = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{fullname}"
        assert served_in(cluster, sa, lease) == leader_level
        assert served_in(cluster, sa, f"/api/v1/namespaces/{ns}/configmaps") != leader_level
        other_sa = f"system:serviceaccount:{ns}:default"  # control: the FlowSchema is what does it
        assert served_in(cluster, other_sa, lease) != leader_level

        # As the operator: the tenant objects of a hub in `namespace`, applied with its own
        # rights (`bind` on the tenant ClusterRole, no escalation), then what Helm may do there.
        from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
        from coursehub.desired import tenancy
        from coursehub.desired.courses import HubRecord

        spec = JupyterHubDeploymentSpec.model_validate(
            {
                "chart": {"path": "/charts/jupyterhub"},
                "domain": "d.example.edu",
                "database": {"type": "sqlite-memory"},
                "auth": {"allowUngated": True},
            }
        )
        hub = HubRecord(namespace=namespace, name="learn", uid="u", created="", generation=1, spec=spec)
        objs = tenancy.tenant_objects(hub, cluster_role=f"{release}-coursehub-operator-tenant")
        cluster.kubectl("apply", f"--as={sa}", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objs))
        # ... but never a binding to a role it may not bind
        bad = cluster.kubectl(
            "create",
            "rolebinding",
            "grab",
            "--clusterrole=admin",
            f"--serviceaccount={namespace}:coursehub-helm",
            f"--as={sa}",
            "-n",
            namespace,
            check=False,
        )
        assert bad.returncode != 0 and "forbidden" in bad.stderr.lower(), bad.stderr
        tenant = tenancy.helm_user(hub)
        for verb, res in [
            ("create", "deployments.apps"),
            ("create", "secrets"),  # Helm's release storage, z2jh's hub Secret
            ("list", "secrets"),
            ("create", "roles.rbac.authorization.k8s.io"),
            ("create", "networkpolicies.networking.k8s.io"),
            ("create", "pods"),
        ]:
            assert can_i(cluster, tenant, verb, res, namespace=namespace), f"the tenant lacks {verb} {res}"
        for verb, res, where in [
            ("create", "configmaps", "kube-system"),
            ("create", "deployments.apps", "default"),
            ("get", "secrets", "default"),
            ("list", "secrets", None),
            ("create", "clusterroles.rbac.authorization.k8s.io", None),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
            ("create", "namespaces", None),
            ("list", "namespaces", None),
            ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
            ("escalate", "roles.rbac.authorization.k8s.io", namespace),
            ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", namespace),
            ("impersonate", "serviceaccounts", namespace),
            ("update", "jupyterhubdeployments.coursehub.dev", namespace),
        ]:
            assert not can_i(cluster, tenant, verb, res, namespace=where), (
                f"the tenant may {verb} {res} in {where}"
            )
    finally:
        _cleanup_cluster_scoped(cluster, release)


def test_namespace_scoped_install_with_helm(cluster, restricted_namespace, namespace):
    """watch.allNamespaces=false: rights only in the listed namespaces (a Role in each)."""
    ns, watched = restricted_namespace, namespace
    release = f"sc{uuid.uuid4().hex[:6]}"
    try:
        # Real `helm install`: the CRDs already exist in this cluster, which helm must tolerate.
        helm(
            cluster,
            "install",
            release,
            str(CHART),
            "--namespace",
            ns,
            "--set",
            "watch.allNamespaces=false",
            "--set",
            f"watch.namespaces={{{watched}}}",
        )
        fullname = f"{release}-coursehub-operator"
        cluster.kubectl(
            "wait", "-n", ns, "--for=condition=Available", f"deployment/{fullname}", "--timeout=180s"
        )
        dep = yaml.safe_load(cluster.kubectl("get", "deployment", fullname, "-n", ns, "-o", "yaml").stdout)
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={watched}" in args and "--all-namespaces" not in args

        sa = f"system:serviceaccount:{ns}:{fullname}"
        assert can_i(cluster, sa, "watch", "courseimages.coursehub.dev", namespace=watched)
        assert can_i(cluster, sa, "create", "daemonsets.apps", namespace=watched)
        assert can_i(cluster, sa, "list", "networkpolicies.networking.k8s.io", namespace=watched)
        assert not can_i(cluster, sa, "list", "secrets", namespace=watched)
        assert not can_i(cluster, sa, "watch", "courseimages.coursehub.dev")  # not cluster-wide
        assert not can_i(cluster, sa, "get", "secrets", namespace="default")
        assert not can_i(cluster, sa, "impersonate", "serviceaccounts/coursehub-helm", namespace="default")
        assert can_i(cluster, sa, "impersonate", "serviceaccounts/coursehub-helm", namespace=watched)
        assert not can_i(cluster, sa, "create", "daemonsets.apps", namespace="default")
        assert can_i(cluster, sa, "list", "namespaces")  # rbac.clusterReads
        assert not can_i(cluster, sa, "delete", "nodes")
    finally:
        helm(cluster, "uninstall", release, "--namespace", ns, "--wait", check=False)
        _cleanup_cluster_scoped(cluster, release)


SHARDS = ["shards[0].name=a", "shards[0].namespaces={n1,n2}", "shards[1].name=b", "shards[1].namespaces={n3}"]


def test_the_flowschema_covers_only_the_operator_s_own_leases(cluster):
    docs = docs_of(render(cluster, "r1", "ops", "watch.allNamespaces=true"))
    (fs,) = [d for d in docs if d["kind"] == "FlowSchema"]
    assert fs["metadata"]["name"] == "r1-coursehub-operator-leases"
    assert fs["spec"]["priorityLevelConfiguration"] == {"name": "leader-election"}
    assert fs["spec"]["matchingPrecedence"] < 9000  # before the "service-accounts" schema
    (rule,) = fs["spec"]["rules"]
    assert rule["subjects"] == [
        {"kind": "ServiceAccount", "serviceAccount": {"name": "r1-coursehub-operator", "namespace": "ops"}}
    ]
    assert rule["resourceRules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
            "namespaces": ["ops"],
        }
    ]
    assert "nonResourceRules" not in rule
    for off in ("leaderElection.flowSchema=false", "leaderElection.enabled=false"):
        docs = docs_of(render(cluster, "r1", "ops", "watch.allNamespaces=true", off, "replicas=1"))
        assert not [d for d in docs if d["kind"] == "FlowSchema"], off


def test_shards_render_one_deployment_each_with_its_namespaces_and_lease(cluster):
    objs = docs_of(render(cluster, "rel", "ops", *SHARDS, "shards[2].name=c", "shards[2].namespaces={n4}"))
    deps = {d["metadata"]["name"]: d for d in objs if d["kind"] == "Deployment"}
    assert set(deps) == {"rel-coursehub-operator-a", "rel-coursehub-operator-b", "rel-coursehub-operator-c"}
    for shard, namespaces in (("a", ["n1", "n2"]), ("b", ["n3"]), ("c", ["n4"])):
        dep = deps[f"rel-coursehub-operator-{shard}"]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert [a for a in c["args"] if a.startswith("--namespace")] == [
            f"--namespace={n}" for n in namespaces
        ]
        assert "--all-namespaces" not in c["args"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["COURSEHUB_SHARD"] == shard
        assert env["COURSEHUB_LEASE_NAME"] == f"rel-coursehub-operator-{shard}"  # an election per shard
        assert dep["spec"]["replicas"] == 2
        # Each Deployment selects its own pods only.
        assert dep["spec"]["selector"]["matchLabels"]["coursehub.dev/shard"] == shard
        assert dep["spec"]["template"]["metadata"]["labels"]["coursehub.dev/shard"] == shard
    # Rights in the shards' namespaces (a Role each), Leases in the operator's own.
    roles = {(d["metadata"]["name"], d["metadata"]["namespace"]) for d in objs if d["kind"] == "Role"}
    assert {ns for name, ns in roles if name == "rel-coursehub-operator"} == {"n1", "n2", "n3", "n4"}
    assert ("rel-coursehub-operator-leases", "ops") in roles
    (leases,) = [d for d in objs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leases")]
    assert leases["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]


def test_chart_refuses_a_namespace_in_two_shards_and_naming_it(cluster):
    res = helm(
        cluster,
        "template",
        "rel",
        str(CHART),
        *[x for s in [*SHARDS, "shards[2].name=c", "shards[2].namespaces={n5,n2}"] for x in ("--set", s)],
        check=False,
    )
    assert res.returncode != 0
    assert "namespace n2 is listed by shards a and c" in res.stderr, res.stderr
    # The operator's own rule (coursehub.leadership) finds the same one.
    from coursehub.leadership import overlapping_namespaces

    assert overlapping_namespaces({"a": ["n1", "n2"], "b": ["n3"], "c": ["n5", "n2"]}) == {"n2": ("a", "c")}
    # Two replicas need leader election.
    res = helm(
        cluster,
        "template",
        "rel",
        str(CHART),
        "--set",
        "watch.namespaces={j}",
        "--set",
        "leaderElection.enabled=false",
        check=False,
    )
    assert res.returncode != 0 and "enable leader election or set replicas=1" in res.stderr
    one = docs_of(
        render(cluster, "rel", "ops", "watch.namespaces={j}", "leaderElection.enabled=false", "replicas=1")
    )
    (dep,) = [d for d in one if d["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "COURSEHUB_LEADER_ELECTION" not in env
    assert not [d for d in one if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leases")]


WEBHOOK_ON = ["webhook.enabled=true", "webhook.secretName=hooks"]


def _env(dep: dict) -> dict[str, dict]:
    return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def _slice_rules(objs: list[dict]) -> list[tuple[str, str, dict]]:
    """(kind, name, rule) of every rule of the render that mentions discovery.k8s.io."""
    return [
        (d["kind"], d["metadata"]["name"], r)
        for d in objs
        if d["kind"] in ("Role", "ClusterRole")
        for r in d.get("rules") or []
        if "discovery.k8s.io" in r.get("apiGroups", []) or "*" in r.get("apiGroups", [])
    ]


def test_webhook_service_has_no_selector_and_slice_rights_exist_only_with_webhooks(cluster):
    """With leader election the webhook Service has no selector (a selector sends about half of
    all pushes to a standby, which serves none): the leader writes its EndpointSlice, with a Role
    for exactly that. Without webhooks no such right; without leader election a selector."""
    off = docs_of(render(cluster, "rel", "ops", "watch.namespaces={j}"))
    assert not [d for d in off if d["kind"] == "Service" and d["metadata"]["name"].endswith("-webhook")]
    assert not _slice_rules(off)
    (dep,) = [d for d in off if d["kind"] == "Deployment"]
    assert not {"COURSEHUB_POD_IP", "COURSEHUB_WEBHOOK_SERVICE"} & set(_env(dep))

    on = docs_of(render(cluster, "rel", "ops", "watch.namespaces={j}", *WEBHOOK_ON))
    (svc,) = [
        d for d in on if d["kind"] == "Service" and d["metadata"]["name"] == "rel-coursehub-operator-webhook"
    ]
    assert "selector" not in svc["spec"], svc["spec"]
    assert svc["spec"]["ports"] == [{"name": "webhook", "port": 80, "targetPort": 9443, "protocol": "TCP"}]
    # Exactly these rules, in the release namespace only: a wider one fails here.
    assert _slice_rules(on) == [
        (
            "Role",
            "rel-coursehub-operator-webhook-endpoints",
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "update"],
                "resourceNames": ["rel-coursehub-operator-webhook-leader"],
            },
        ),
        (
            "Role",
            "rel-coursehub-operator-webhook-endpoints",
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["create"]},
        ),
    ]
    (role,) = [d for d in on if d["kind"] == "Role" and d["metadata"]["name"].endswith("-webhook-endpoints")]
    assert role["metadata"]["namespace"] == "ops"
    (binding,) = [
        d for d in on if d["kind"] == "RoleBinding" and d["metadata"]["name"].endswith("-webhook-endpoints")
    ]
    assert (
        binding["metadata"]["namespace"] == "ops" and binding["roleRef"]["name"] == role["metadata"]["name"]
    )
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-coursehub-operator", "namespace": "ops"}
    ]
    (dep,) = [d for d in on if d["kind"] == "Deployment"]
    env = _env(dep)
    assert env["COURSEHUB_WEBHOOK_SERVICE"]["value"] == "rel-coursehub-operator-webhook"
    assert env["COURSEHUB_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # The slice the operator writes is the one the Role names.
    from coursehub.desired.leader_endpoint import slice_name

    assert slice_name(svc["metadata"]["name"]) in _slice_rules(on)[0][2]["resourceNames"]

    # One pod, no election: Kubernetes follows it by a selector; the operator writes no slice.
    single = docs_of(
        render(
            cluster,
            "rel",
            "ops",
            "watch.namespaces={j}",
            "leaderElection.enabled=false",
            "replicas=1",
            *WEBHOOK_ON,
        )
    )
    (svc,) = [d for d in single if d["kind"] == "Service" and d["metadata"]["name"].endswith("-webhook")]
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "coursehub-operator",
        "app.kubernetes.io/instance": "rel",
    }
    assert not _slice_rules(single)
    (dep,) = [d for d in single if d["kind"] == "Deployment"]
    assert not {"COURSEHUB_POD_IP", "COURSEHUB_WEBHOOK_SERVICE"} & set(_env(dep))

    # Shards: each shard's leader serves its own courses' pushes, through its own Service.
    sharded = docs_of(render(cluster, "rel", "ops", *SHARDS, *WEBHOOK_ON))
    services = {
        d["metadata"]["name"]: d
        for d in sharded
        if d["kind"] == "Service" and "webhook" in d["metadata"]["name"]
    }
    assert set(services) == {"rel-coursehub-operator-a-webhook", "rel-coursehub-operator-b-webhook"}
    assert all("selector" not in s["spec"] for s in services.values())
    for dep in (d for d in sharded if d["kind"] == "Deployment"):
        shard = dep["metadata"]["labels"]["coursehub.dev/shard"]
        assert _env(dep)["COURSEHUB_WEBHOOK_SERVICE"]["value"] == f"rel-coursehub-operator-{shard}-webhook"
    assert _slice_rules(sharded)[0][2]["resourceNames"] == [
        "rel-coursehub-operator-a-webhook-leader",
        "rel-coursehub-operator-b-webhook-leader",
    ]


def test_webhook_slice_rights_are_one_slice_in_the_operators_namespace(cluster, restricted_namespace):
    """As the chart's ServiceAccount (kubectl auth can-i): the leader's EndpointSlice only."""
    ns = restricted_namespace
    release = f"wh{uuid.uuid4().hex[:6]}"
    args = ["template", release, str(CHART), "--namespace", ns, "--set", "watch.allNamespaces=true"]
    for s in WEBHOOK_ON:
        args += ["--set", s]
    args += ["--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"]
    try:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=helm(cluster, *args).stdout)
        sa = f"system:serviceaccount:{ns}:{release}-coursehub-operator"
        mine = f"endpointslices.discovery.k8s.io/{release}-coursehub-operator-webhook-leader"
        other = "endpointslices.discovery.k8s.io/some-other-service-abcde"
        must = [("get", mine, ns), ("update", mine, ns), ("create", "endpointslices.discovery.k8s.io", ns)]
        must_not = [
            ("update", other, ns),  # another Service's slice
            ("get", other, ns),
            ("patch", mine, ns),
            ("delete", mine, ns),
            ("list", "endpointslices.discovery.k8s.io", ns),
            ("watch", "endpointslices.discovery.k8s.io", ns),
            ("create", "endpointslices.discovery.k8s.io", "default"),  # only the operator's namespace
            ("update", mine, "default"),
            ("create", "endpointslices.discovery.k8s.io", None),
            ("create", "endpoints", ns),
            ("update", "services", ns),
        ]
        wrong = [f"{v} {r} (ns={n})" for v, r, n in must if not can_i(cluster, sa, v, r, namespace=n)]
        assert not wrong, f"the operator's ServiceAccount lacks: {wrong}"
        wrong = [f"{v} {r} (ns={n})" for v, r, n in must_not if can_i(cluster, sa, v, r, namespace=n)]
        assert not wrong, f"the operator's ServiceAccount may do more than it needs: {wrong}"
    finally:
        _cleanup_cluster_scoped(cluster, release)
