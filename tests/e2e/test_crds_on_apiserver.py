"""The CRDs on a real API server: examples apply, bad manifests are refused naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

GOOD_COURSE = {
    "apiVersion": "coursehub.dev/v1alpha1",
    "kind": "CourseImage",
    "metadata": {"name": "c1"},
    "spec": {"course": "uai_source-uai.0a", "image": "registry.example.edu/courses/nb:uai_source-uai.0a"},
}
GOOD_HUB = {
    "apiVersion": "coursehub.dev/v1alpha1",
    "kind": "JupyterHubDeployment",
    "metadata": {"name": "h1"},
    "spec": {
        "chart": {
            "repository": "https://hub.jupyter.org/helm-chart/",
            "name": "jupyterhub",
            "version": "4.4.1",
        },
        "domain": "nb.example.edu",
        "auth": {"mode": "tmp"},
        "gateway": {
            "oidc": {
                "issuerURL": "https://sso.example.edu/realms/olapps",
                "secretRef": {"name": "oidc"},
                "allowedGroups": ["learners"],
            }
        },
        "database": {"type": "postgres", "urlSecretRef": {"name": "db", "key": "DATABASE_URL"}},
    },
}


def _with(base: dict, path: str, value) -> dict:
    """A copy of `base` with dotted `path` set to `value` (or removed when value is ...)."""
    obj = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = obj
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return obj


# (id, manifest, text the API server's refusal must contain: the field it names)
INVALID = [
    ("slug-space", _with(GOOD_COURSE, "spec.course", "bad slug"), "spec.course"),
    ("slug-slash", _with(GOOD_COURSE, "spec.course", "a/b"), "spec.course"),
    ("slug-leading-dot", _with(GOOD_COURSE, "spec.course", ".hidden"), "spec.course"),
    ("slug-too-long", _with(GOOD_COURSE, "spec.course", "a" * 64), "spec.course"),
    ("slug-missing", _with(GOOD_COURSE, "spec.course", ...), "spec.course"),
    ("image-space", _with(GOOD_COURSE, "spec.image", "registry.example.edu/nb: tag"), "spec.image"),
    ("image-no-tag", _with(GOOD_COURSE, "spec.image", "registry.example.edu/courses/nb"), "spec.image"),
    ("image-upper-repo", _with(GOOD_COURSE, "spec.image", "registry.example.edu/Courses/nb:1"), "spec.image"),
    ("image-bad-digest", _with(GOOD_COURSE, "spec.image", "r.example.edu/nb@sha256:abc"), "spec.image"),
    ("image-missing", _with(GOOD_COURSE, "spec.image", ...), "spec.image"),
    # One grammar with the operator's parser (tests/unit/test_image_reference.py has the table).
    ("image-port-out-of-range", _with(GOOD_COURSE, "spec.image", "ex.com:99999/x:1"), "spec.image"),
    ("image-name-256", _with(GOOD_COURSE, "spec.image", "r.example.edu/" + "a" * 242 + ":1"), "spec.image"),
    ("gpu-enum", _with(GOOD_COURSE, "spec.gpu", "sometimes"), "spec.gpu"),
    (
        "notebook-absolute",
        _with(GOOD_COURSE, "spec.defaultNotebook", "/etc/passwd.ipynb"),
        "spec.defaultNotebook",
    ),
    (
        "notebook-dotdot",
        _with(GOOD_COURSE, "spec.defaultNotebook", "a/../../b.ipynb"),
        "spec.defaultNotebook",
    ),
    ("notebook-not-ipynb", _with(GOOD_COURSE, "spec.defaultNotebook", "intro.py"), "spec.defaultNotebook"),
    ("retention-zero", _with(GOOD_COURSE, "spec.retention", {"keep": 0}), "spec.retention.keep"),
    (
        "memory-format",
        _with(GOOD_COURSE, "spec.resources", {"memory": {"limit": "lots"}}),
        "spec.resources.memory.limit",
    ),
    (
        "cpu-negative",
        _with(GOOD_COURSE, "spec.resources", {"cpu": {"guarantee": -1}}),
        "spec.resources.cpu.guarantee",
    ),
    ("course-unknown-field", _with(GOOD_COURSE, "spec.tag", "latest"), "spec.tag"),
    ("course-no-spec", _with(GOOD_COURSE, "spec", ...), "spec"),
    ("tmp-without-gateway", _with(GOOD_HUB, "spec.gateway", ...), "spec.gateway.oidc"),
    ("auth-enum", _with(GOOD_HUB, "spec.auth", {"mode": "github"}), "spec.auth.mode"),
    (
        "culling-negative-timeout",
        _with(GOOD_HUB, "spec.culling", {"timeoutSeconds": -5}),
        "spec.culling.timeoutSeconds",
    ),
    (
        "culling-negative-every",
        _with(GOOD_HUB, "spec.culling", {"everySeconds": -1}),
        "spec.culling.everySeconds",
    ),
    (
        "culling-negative-max-age",
        _with(GOOD_HUB, "spec.culling", {"maxAgeSeconds": -1}),
        "spec.culling.maxAgeSeconds",
    ),
    (
        "postgres-without-secret",
        _with(GOOD_HUB, "spec.database", {"type": "postgres"}),
        "spec.database.urlSecretRef",
    ),
    (
        "database-default-type-without-secret",
        _with(GOOD_HUB, "spec.database", {}),
        "spec.database.urlSecretRef",
    ),
    ("database-enum", _with(GOOD_HUB, "spec.database", {"type": "mysql"}), "spec.database.type"),
    ("domain-missing", _with(GOOD_HUB, "spec.domain", ...), "spec.domain"),
    ("domain-invalid", _with(GOOD_HUB, "spec.domain", "not a host"), "spec.domain"),
    ("chart-missing", _with(GOOD_HUB, "spec.chart", ...), "spec.chart"),
    (
        "chart-name-and-path",
        _with(GOOD_HUB, "spec.chart", {"name": "jupyterhub", "path": "/charts/jupyterhub"}),
        "spec.chart",
    ),
    (
        "chart-repo-without-version",
        _with(GOOD_HUB, "spec.chart", {"repository": "https://x.example/", "name": "j"}),
        "spec.chart.repository",
    ),
    ("chart-version-format", _with(GOOD_HUB, "spec.chart.version", "latest"), "spec.chart.version"),
    ("namespaces-enum", _with(GOOD_HUB, "spec.courses", {"namespaces": "Some"}), "spec.courses.namespaces"),
    (
        "selector-without-namespace-selector",
        _with(GOOD_HUB, "spec.courses", {"namespaces": "Selector"}),
        "spec.courses.namespaceSelector",
    ),
    (
        "on-unknown-default-without-default",
        _with(GOOD_HUB, "spec.courses", {"onUnknown": "default"}),
        "spec.courses.default",
    ),
    ("on-unknown-enum", _with(GOOD_HUB, "spec.courses", {"onUnknown": "ignore"}), "spec.courses.onUnknown"),
    (
        "default-course-slug",
        _with(GOOD_HUB, "spec.courses", {"default": "no spaces allowed"}),
        "spec.courses.default",
    ),
    (
        "gpu-label-format",
        _with(GOOD_HUB, "spec.singleuser", {"gpuNodes": {"label": "gpu"}}),
        "spec.singleuser.gpuNodes.label",
    ),
    (
        "gpu-toleration-effect",
        _with(
            GOOD_HUB,
            "spec.singleuser",
            {"gpuNodes": {"label": "gpu=true", "toleration": "gpu=true:Sometimes"}},
        ),
        "spec.singleuser.gpuNodes.toleration",
    ),
    (
        "start-timeout-small",
        _with(GOOD_HUB, "spec.singleuser", {"startTimeoutSeconds": 1}),
        "spec.singleuser.startTimeoutSeconds",
    ),
    (
        "shared-password-without-secret",
        _with(GOOD_HUB, "spec.auth", {"mode": "sharedPassword"}),
        "spec.auth.sharedPassword",
    ),
    ("hub-unknown-field", _with(GOOD_HUB, "spec.replicas", 2), "spec.replicas"),
    (
        "oidc-issuer-scheme",
        _with(
            GOOD_HUB,
            "spec.gateway",
            {"oidc": {"issuerURL": "sso.example.edu", "secretRef": {"name": "oidc"}, "allowedGroups": ["x"]}},
        ),
        "spec.gateway.oidc.issuerURL",
    ),
    (
        # a gate that would admit every account of the issuer (issue 12, item 9)
        "gate-admits-anyone",
        _with(
            GOOD_HUB,
            "spec.gateway",
            {"oidc": {"issuerURL": "https://sso.example.edu/realms/olapps", "secretRef": {"name": "oidc"}}},
        ),
        "allowedGroups or emailDomains",
    ),
    (
        # TLS for a gate that does not exist (issue 15)
        "gateway-tls-without-oidc",
        _with(GOOD_HUB, "spec.gateway", {"tls": {"secretRef": {"name": "learn-tls"}}}),
        "spec.gateway.tls needs spec.gateway.oidc",
    ),
]


def test_enough_invalid_cases():
    assert len(INVALID) >= 25


def test_crds_established(cluster):
    out = cluster.kubectl("get", "crd", "-o", "name").stdout
    assert "customresourcedefinition.apiextensions.k8s.io/courseimages.coursehub.dev" in out
    assert "customresourcedefinition.apiextensions.k8s.io/jupyterhubdeployments.coursehub.dev" in out


VALID_VARIANTS = [
    _with(GOOD_HUB, "spec.courses", {"default": "stats_101"}),
    _with(GOOD_HUB, "spec.courses", {"namespaces": "All", "selector": {"matchLabels": {"hub": "learn"}}}),
    _with(_with(GOOD_HUB, "spec.gateway", ...), "spec.auth", {"mode": "tmp", "allowUngated": True}),
    _with(GOOD_HUB, "spec.database", {"type": "sqlite-memory"}),
    _with(GOOD_HUB, "spec.chart", {"path": "charts/jupyterhub"}),
    _with(
        GOOD_HUB, "spec.chart", {"name": "oci://registry.example.edu/charts/jupyterhub", "version": "4.4.1"}
    ),
]


def test_valid_baselines_are_accepted(cluster, namespace):
    for obj in (GOOD_COURSE, GOOD_HUB, *VALID_VARIANTS):
        cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


# The operator's parser accepts these (tests/unit/test_image_reference.py), so the CRD must too.
VALID_IMAGES = [
    "[::1]:5000/x:1",
    "r.example.edu/" + "a" * 241 + ":" + "t" * 128,
    "ex.com:65535/x@sha256:" + "a" * 64,
]


def test_valid_image_references_are_accepted(cluster, namespace):
    for image in VALID_IMAGES:
        manifest = _with(GOOD_COURSE, "spec.image", image)
        cluster.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest)
        )


@pytest.mark.parametrize("case,manifest,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_refused_naming_field(cluster, namespace, case, manifest, field):
    res = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert res.returncode != 0, f"{case}: the API server accepted an invalid manifest"
    assert field in res.stderr, f"{case}: refusal does not name {field}: {res.stderr}"


def test_every_example_applies(cluster):
    files = sorted(REPO.glob("examples/**/*.yaml"))
    assert files
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    for doc in docs:  # namespaces for real, so the namespaced objects can be checked
        if doc["kind"] == "Namespace":
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    for doc in docs:
        cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))


def test_kubectl_explain_teaches(cluster):
    out = cluster.kubectl("explain", "courseimage.spec.course").stdout
    assert "case-insensitively" in out
    out = cluster.kubectl("explain", "jupyterhubdeployment.spec.auth.allowUngated").stdout
    assert "gateway" in out


def test_daemonset_runs_one_ready_pod_per_eligible_node(cluster, namespace):
    ds = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "probe"},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {
                    "initContainers": [
                        {"name": "pull", "image": "example.edu/x:1", "command": ["/bin/sh", "-c", "true"]}
                    ],
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ds))
    cluster.kubectl("rollout", "status", "-n", namespace, "ds/probe", "--timeout=60s")
    pods = yaml.safe_load(cluster.kubectl("get", "pods", "-n", namespace, "-o", "yaml").stdout)["items"]
    nodes = sorted(p["spec"]["nodeName"] for p in pods)
    # The GPU node is tainted and this DaemonSet does not tolerate it.
    assert nodes == ["kwok-node-0", "kwok-node-1"]
    assert all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"]) for p in pods
    )


def test_garbage_collection_follows_owner_references(cluster, namespace):
    cm = cluster.kubectl("create", "configmap", "owner", "-n", namespace, "-o", "yaml").stdout
    uid = yaml.safe_load(cm)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(child))
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    cluster.kubectl("wait", "--for=delete", "configmap/child", "-n", namespace, "--timeout=60s")


def test_version_is_real(cluster):
    info = cluster.get("/version")
    assert info["gitVersion"].startswith("v1.3")
    assert info["major"] == "1"
