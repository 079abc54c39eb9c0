"""The running pre-puller (issue 12 item 2, item 8's pull-secret rule) on the local control plane.

A real operator process applies the pullers; the API server admits them, the scheduler
places their pods on kwok nodes, and the pods that run carry every lock-down field, run only
the trusted no-op, land only where the hub's learner pods may go, are cut off by a deny-all
NetworkPolicy, and never name a pull secret of another namespace.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
import yaml

from coursehub.desired import puller
from coursehub_dev import samples
from coursehub_dev.samples import course_manifest
from fixtures.cluster import get_yaml, wait_until

pytestmark = pytest.mark.e2e

OPERATOR_IMAGE = "registry.example.invalid/coursehub-operator@sha256:" + "c" * 64
# Learner pods of this hub may go to kwok-node-0 and (GPU pods) kwok-gpu-0; never kwok-node-1.
LEARNER_NODES = {
    "required": [
        {
            "matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["kwok-node-0", "kwok-gpu-0"]}
            ]
        }
    ]
}
SECRET = "registry-creds"


def apply(cluster, ns, *objs):
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(objs))


def condition(obj: dict, type_: str) -> dict:
    for c in (obj.get("status") or {}).get("conditions", []):
        if c["type"] == type_:
            return c
    return {}


def docker_config_secret(name: str, host: str) -> dict:
    auth = {"auths": {host: {"username": "learner", "password": "not-used"}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": json.dumps(auth)},
    }


def rolled_out(cluster, ns, name) -> bool:
    try:
        return puller.rolled_out(get_yaml(cluster, "daemonset", name, "-n", ns))
    except subprocess.CalledProcessError:
        return False


def puller_pods(cluster, ns, name) -> list[dict]:
    return get_yaml(cluster, "pods", "-n", ns, "-l", f"coursehub.dev/puller={name}")["items"]


@pytest.fixture
def other_namespace(cluster):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def hub_with_pinned_learners(cluster, namespace, other_namespace, operator_factory, oci_registry):
    """A hub whose learner pods may run on kwok-node-0 (and GPU pods on kwok-gpu-0) only, taking
    CourseImages from every namespace; the operator runs with a known operator image."""
    op = operator_factory([namespace, other_namespace], env={"COURSEHUB_OPERATOR_IMAGE": OPERATOR_IMAGE})
    hub = samples.hub_manifest(
        "learn",
        courses={"namespaces": "All"},
        values={
            "proxy": {"service": {"type": "ClusterIP"}},
            "singleuser": {"extraNodeAffinity": LEARNER_NODES},
        },
    )
    apply(cluster, namespace, hub)
    try:
        wait_until(
            lambda: (
                condition(get_yaml(cluster, "jhd", "learn", "-n", namespace), "ReleaseDeployed").get("status")
                == "True"
            ),
            timeout=120,
            what="hub release deployed",
        )
    except Exception as e:
        status = get_yaml(cluster, "jhd", "learn", "-n", namespace).get("status")
        raise AssertionError(f"{e}\nhub status: {status}\noperator log:\n{op.log()[-6000:]}") from None
    return namespace, other_namespace, oci_registry, op


def test_running_pullers_are_locked_down_and_only_where_learners_go(
    cluster, hub_with_pinned_learners, unique_repo
):
    ns, other, reg, _op = hub_with_pinned_learners
    cpu = reg.ref(unique_repo, "stats-101")
    gpu = reg.ref(unique_repo, "uai-1")
    foreign = reg.ref(unique_repo, "foreign-1")
    reg.push_image(unique_repo, "stats-101", "stats-1")
    reg.push_image(unique_repo, "uai-1", "uai-1")
    reg.push_image(unique_repo, "foreign-1", "foreign-1")
    # The hub's namespace holds a Secret with the same name as the foreign course's: the
    # puller must not pick it up for a course of another namespace.
    apply(cluster, ns, docker_config_secret(SECRET, reg.host))
    apply(cluster, other, docker_config_secret(SECRET, reg.host))
    apply(
        cluster,
        ns,
        course_manifest("stats", "stats-101", cpu),
        course_manifest("uai-1", "uai-1", gpu, gpu="required"),
    )
    apply(
        cluster,
        other,
        course_manifest("foreign-1", "foreign-1", foreign, imagePullSecretRef={"name": SECRET}),
    )

    for name in (puller.GENERAL, puller.GPU):
        wait_until(lambda name=name: rolled_out(cluster, ns, name), timeout=120, what=f"{name} rolled out")
    cluster.kubectl("wait", "--for=condition=Ready", "courseimage", "--all", "-n", ns, "--timeout=90s")

    # Placement: only the nodes this hub's learner pods may use.
    assert sorted(p["spec"]["nodeName"] for p in puller_pods(cluster, ns, puller.GENERAL)) == ["kwok-node-0"]
    assert sorted(p["spec"]["nodeName"] for p in puller_pods(cluster, ns, puller.GPU)) == ["kwok-gpu-0"]

    for name in (puller.GENERAL, puller.GPU):
        pods = puller_pods(cluster, ns, name)
        assert pods
        for pod in pods:
            assert pod["status"]["phase"] == "Running"
            spec = pod["spec"]
            assert spec["automountServiceAccountToken"] is False
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert not any(k in spec for k in ("hostNetwork", "hostPID", "hostIPC"))
            # No service account token was mounted anywhere.
            for c in spec["initContainers"] + spec["containers"]:
                mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
                assert not any("serviceaccount" in m for m in mounts), (c["name"], mounts)
                sc = {**spec["securityContext"], **c["securityContext"]}  # the container's over the pod's
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65534, c["name"]
                assert sc["allowPrivilegeEscalation"] is False, c["name"]
                assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), c["name"]
                assert sc["readOnlyRootFilesystem"] is True, c["name"]
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
                assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
            first, *rest = spec["initContainers"]
            assert first["image"] == OPERATOR_IMAGE
            assert first["command"] == ["cp", puller.NOOP_IN_OPERATOR_IMAGE, puller.NOOP]
            for c in rest:
                assert c["command"] == [puller.NOOP] and "args" not in c, c["name"]
            assert "/bin/sh" not in json.dumps(spec)
            images = {c["image"] for c in rest}
            assert "quay.io/jupyterhub/k8s-network-tools:4.4.0" in images
            assert [c["image"] for c in spec["containers"]] == ["registry.k8s.io/pause:3.10"]

    # Pull secrets: only from the hub's namespace. The foreign course is in no puller and says why.
    wait_until(
        lambda: (
            condition(get_yaml(cluster, "courseimage", "foreign-1", "-n", other), "PrePulled").get("reason")
            == "PullSecretElsewhere"
        ),
        timeout=60,
        what="the foreign course says its pull secret is in another namespace",
    )
    foreign_image = get_yaml(cluster, "courseimage", "foreign-1", "-n", other)["status"]["resolvedImage"]
    for name in (puller.GENERAL, puller.GPU):
        ds = get_yaml(cluster, "daemonset", name, "-n", ns)
        assert SECRET not in [s["name"] for s in ds["spec"]["template"]["spec"].get("imagePullSecrets", [])]
        assert foreign_image not in puller.images_of(ds)

    # The NetworkPolicy selects every puller pod and allows nothing.
    policy = wait_until(
        lambda: get_yaml(cluster, "networkpolicy", puller.NETWORK_POLICY, "-n", ns),
        timeout=30,
        what="puller NetworkPolicy applied",
    )
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not policy["spec"].get("ingress") and not policy["spec"].get("egress")
    selected = get_yaml(
        cluster,
        "pods",
        "-n",
        ns,
        "-l",
        ",".join(f"{k}={v}" for k, v in policy["spec"]["podSelector"]["matchLabels"].items()),
    )["items"]
    assert {p["metadata"]["name"] for p in selected} == {
        p["metadata"]["name"] for n in (puller.GENERAL, puller.GPU) for p in puller_pods(cluster, ns, n)
    }


def test_chart_passes_the_operators_own_image(cluster):
    """The trusted no-op comes from the image the operator itself runs (by digest when pinned)."""
    from fixtures.cluster import REPO_ROOT

    digest = "sha256:" + "d" * 64
    out = subprocess.run(
        [
            cluster.binaries["helm"],
            "template",
            "x",
            str(REPO_ROOT / "charts/coursehub-operator"),
            "--set",
            f"image.digest={digest}",
            "--set",
            "watch.namespaces={jupyter}",
        ],
        capture_output=True,
        text=True,
        env=cluster.env(),
        check=True,
    ).stdout
    (deployment,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"].endswith("@" + digest)
    assert env["COURSEHUB_OPERATOR_IMAGE"] == container["image"]
