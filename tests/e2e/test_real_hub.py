"""A learner's whole path on real nodes (issue 11, parts 3, 4, 5 and 7).

The operator runs in the cluster, installed by its chart from its image built here
(`real_cluster`); it installs the published z2jh 4.4.0 chart, whose hub and proxy run as real
pods from images built here at z2jh's pins. A learner's launch link goes through the proxy's
NodePort on a node IP, tmp login and the spawn, and JupyterLab from the course image answers:
the test asserts on who answered (JupyterLab's version as installed in the learner's pod).
With publishAfterPull the course is offered only after coursehub's puller pulled everything a
learner pod needs, and the learner pod pulls nothing. An idle learner is culled: pod gone and
temporary user deleted (z2jh's bare `--cull-users`, accepted by the hub image's idle-culler 1.4.0).
The GPU course (examples/courses-src/uai-1, gpu: required) is pre-pulled by the GPU puller on the
GPU node only, and a learner's launch of it runs JupyterLab on the GPU node, asking for the GPU
(the node advertises nvidia.com/gpu through its status capacity; there is no device plugin here).
Hub database: sqlite in memory (the hub forgets users when it restarts; postgres runs on the
host's loopback, which pods do not reach).
"""

from __future__ import annotations

import json
import time

import pytest

from coursehub_dev.realnodes import GPU_LABEL, GPU_RESOURCE, GPU_TAINT
from coursehub_dev.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.real_nodes]

COURSE = "clustering"
CULL_TIMEOUT, CULL_EVERY = 60, 10  # the API's smallest timeout; the culler looks every 10 s
GPU_COURSE, GPU_SLUG = "uai-1", "uai_source-uai.1"  # examples/courses/uai-1.yaml's slug
GPU_REPO = "coursehub/course-uai-1"  # the repository ImageBuilder.course("uai-1") pushes to


@pytest.fixture(scope="module")
def real_hub(real_cluster):
    """One hub with the clustering course, pre-pulled before it is offered, idle culling on."""
    ns = real_cluster.namespace("real-hub")
    real_cluster.create_course(ns, COURSE)
    real_cluster.create_hub(
        ns,
        culling={
            "enabled": True,
            "timeoutSeconds": CULL_TIMEOUT,
            "everySeconds": CULL_EVERY,
            "maxAgeSeconds": 0,
            "users": True,
        },
        pre_pull={"enabled": True, "publishAfterPull": True},
    )
    real_cluster.wait_hub_ready(ns)
    real_cluster.wait_course_published(ns, COURSE)
    yield ns
    real_cluster.cluster.kubectl(
        "delete", "jupyterhubdeployment", "hub", "-n", ns, "--wait=false", check=False
    )


def test_launch_link_opens_jupyterlab_on_a_real_pod_that_pulled_nothing(real_cluster, real_hub):
    ns = real_hub
    base = real_cluster.hub_url(ns)
    s = real_cluster.browser()
    t = time.monotonic()
    user = real_cluster.launch(ns, COURSE, s)
    seen = wait_until(
        lambda: real_cluster.lab_version(ns, user, s), timeout=180, what=f"JupyterLab of {user}"
    )
    secs = time.monotonic() - t

    pod = real_cluster.learner_pod(ns, user)
    assert pod is not None, f"no learner pod for {user}"
    assert pod["spec"]["nodeName"] in real_cluster.node_ips  # a real node (names differ on kind)
    name = pod["metadata"]["name"]
    installed = real_cluster.cluster.kubectl(
        "exec", "-n", ns, name, "-c", "notebook", "--",
        "python", "-c", "import jupyterlab; print(jupyterlab.__version__)",
    ).stdout.strip()  # fmt: skip
    assert seen == installed  # JupyterLab in the learner's pod answered, nothing else
    contents = s.get(f"{base}/user/{user}/api/contents", timeout=10).json()
    assert "intro.ipynb" in {c["name"] for c in contents["content"]}
    course_image = real_cluster.cluster.get(
        f"/apis/coursehub.dev/v1alpha1/namespaces/{ns}/courseimages/{COURSE}"
    )
    assert pod["spec"]["containers"][0]["image"] == course_image["status"]["resolvedImage"]

    # Pre-pulled for real: every container of the learner pod found its image on the node
    # (the course image and z2jh's network-tools), and the sandbox's pause came with the puller.
    events = real_cluster.cluster.get(
        f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3D{name}"
    )["items"]
    pulled = [e for e in events if e["reason"] in ("Pulling", "Pulled")]
    containers = [c["name"] for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]]
    assert "block-cloud-metadata" in containers
    assert len(pulled) == len(containers), json.dumps(pulled, indent=1)
    for e in pulled:
        assert e["reason"] == "Pulled" and "already present on machine" in e["message"], e["message"]
    print(f"\n[real-hub] launch link -> JupyterLab {seen} answering in {secs:.1f}s (pre-pulled)")


def test_idle_learner_is_culled_pod_gone_and_user_deleted(real_cluster, real_hub):
    ns = real_hub
    base = real_cluster.hub_url(ns)
    s = real_cluster.browser()
    user = real_cluster.launch(ns, COURSE, s)
    wait_until(lambda: real_cluster.lab_version(ns, user, s), timeout=180, what=f"JupyterLab of {user}")
    assert real_cluster.learner_pod(ns, user) is not None

    api = real_cluster.hub_api(ns)  # a hub service token (admin:users)
    r = api.get(f"{base}/hub/api/users/{user}", timeout=10)
    assert r.json()["name"] == user  # the hub answered, and knows the learner

    def culled() -> bool:
        if real_cluster.learner_pod(ns, user) is not None:
            return False
        gone = api.get(f"{base}/hub/api/users/{user}", timeout=10)
        return gone.status_code == 404 and gone.json().get("status") == 404

    wait_until(culled, timeout=CULL_TIMEOUT + 6 * CULL_EVERY + 120, what=f"{user} culled")


def _lab_version_in(real_cluster, ns: str, pod: str) -> str:
    return real_cluster.cluster.kubectl(
        "exec", "-n", ns, pod, "-c", "notebook", "--",
        "python", "-c", "import jupyterlab; print(jupyterlab.__version__)",
    ).stdout.strip()  # fmt: skip


def _pulled(real_cluster, ns: str, pod: str) -> list[dict]:
    events = real_cluster.cluster.get(
        f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3D{pod}"
    )["items"]
    return [e for e in events if e["reason"] in ("Pulling", "Pulled")]


def _puller_pods(real_cluster, ns: str, puller: str) -> list[dict]:
    return real_cluster.cluster.get(
        f"/api/v1/namespaces/{ns}/pods?labelSelector=coursehub.dev%2Fpuller%3D{puller}"
    )["items"]


def test_gpu_course_runs_on_the_gpu_node_pre_pulled_there_only(real_cluster, real_hub):
    rc, ns = real_cluster, real_hub
    key, value = GPU_LABEL
    gpus = {
        n["metadata"]["name"]
        for n in rc.cluster.get(f"/api/v1/nodes?labelSelector={key.replace('/', '%2F')}%3D{value}")["items"]
    } & set(rc.node_ips)
    if not gpus:
        pytest.skip(f"no real node labelled {key}={value} (docs/kind.md: a GPU-labelled, tainted worker)")
    general = set(rc.node_ips) - gpus
    # Nothing of the course on any node first: whatever is there afterwards, the puller pulled.
    for node in rc.node_ips:
        if rc.reads_node_images(node):
            print(f"\n[real-hub] forgot {rc.forget_images(node, GPU_REPO)}")

    rc.create_course(ns, GPU_COURSE, slug=GPU_SLUG, name=GPU_COURSE, gpu="required")
    # publishAfterPull: offered once the GPU puller pulled it
    course = rc.wait_course_published(ns, GPU_COURSE)
    image = course["status"]["resolvedImage"]
    wait_until(
        lambda: rc.condition("courseimages", ns, GPU_COURSE, "PrePulled").get("status") == "True",
        timeout=60,
        what=f"{GPU_COURSE} PrePulled",
    )

    # Pre-pulled on the GPU nodes only: the GPU puller runs there (and nowhere else) and its
    # container of this course ran (so its image was pulled there); the general puller has none.
    gpu_pullers = _puller_pods(rc, ns, "coursehub-puller-gpu")
    assert {p["spec"]["nodeName"] for p in gpu_pullers} == gpus
    for p in gpu_pullers:
        (mine,) = [c["name"] for c in p["spec"]["initContainers"] if c["image"] == image]
        ran = [c for c in p["status"].get("initContainerStatuses", []) if c["name"] == mine]
        assert ran and ran[0]["state"].get("terminated", {}).get("exitCode") == 0, p["status"]
    for p in _puller_pods(rc, ns, "coursehub-puller"):
        assert p["spec"]["nodeName"] in general
        assert image not in [c["image"] for c in p["spec"]["initContainers"]]
    for node in rc.node_ips:
        if rc.reads_node_images(node):  # what the node's containerd holds
            held = [n for n in rc.node_images(node) if GPU_REPO in n]
            assert bool(held) == (node in gpus), f"{node}: {held}"

    s = rc.browser()
    user = rc.launch(ns, GPU_SLUG, s)
    try:
        seen = wait_until(lambda: rc.lab_version(ns, user, s), timeout=180, what=f"JupyterLab of {user}")
        pod = rc.learner_pod(ns, user)
        assert pod is not None, f"no learner pod for {user}"
        spec, name = pod["spec"], pod["metadata"]["name"]
        assert spec["nodeName"] in gpus
        notebook = spec["containers"][0]
        assert notebook["image"] == image
        assert notebook["resources"]["limits"][GPU_RESOURCE] == "1"
        assert notebook["resources"]["requests"][GPU_RESOURCE] == "1"
        assert {**GPU_TAINT, "operator": "Equal"} in spec["tolerations"]
        # the GPU label ANDed into every required node-affinity term (course_spawner.merge_traits)
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        gpu_term = {"key": key, "operator": "In", "values": [value]}
        assert all(gpu_term in t["matchExpressions"] for t in terms["nodeSelectorTerms"]), terms
        # Who answered: JupyterLab of the GPU course's own image (it has NVIDIA's NVML bindings).
        assert seen == _lab_version_in(rc, ns, name)
        rc.cluster.kubectl("exec", "-n", ns, name, "-c", "notebook", "--", "python", "-c", "import pynvml")
        contents = s.get(f"{rc.hub_url(ns)}/user/{user}/api/contents", timeout=10).json()
        assert "intro.ipynb" in {c["name"] for c in contents["content"]}
        # The learner pod pulled nothing: the GPU puller had pulled it all on that node.
        pulled = _pulled(rc, ns, name)
        assert pulled, "no Pulled events for the learner pod"
        for e in pulled:
            assert e["reason"] == "Pulled" and "already present on machine" in e["message"], e["message"]
        print(f"[real-hub] GPU course: JupyterLab {seen} on {spec['nodeName']} with {GPU_RESOURCE}: 1")
    finally:
        # the node's one GPU back for others
        api, base = rc.hub_api(ns), rc.hub_url(ns)
        api.delete(f"{base}/hub/api/users/{user}/server", timeout=30)
        wait_until(lambda: rc.learner_pod(ns, user) is None, timeout=120, what=f"{user}'s pod gone")
        api.delete(f"{base}/hub/api/users/{user}", timeout=30)
