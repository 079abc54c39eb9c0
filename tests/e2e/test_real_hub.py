"""A learner's whole path on real nodes (issue 11, parts 3, 4, 5 and 7).

The operator runs in the cluster, installed by its chart from its image built here
(`real_cluster`); it installs the published z2jh 4.4.0 chart, whose hub and proxy run as real
pods from images built here at z2jh's pins. A learner's launch link goes through the proxy's
NodePort on a node IP, tmp login and the spawn, and JupyterLab from the course image answers:
the test asserts on who answered (JupyterLab's version as installed in the learner's pod).
With publishAfterPull the course is offered only after coursehub's puller pulled everything a
learner pod needs, and the learner pod pulls nothing. An idle learner is culled: pod gone and
temporary user deleted (z2jh's bare `--cull-users`, accepted by the hub image's idle-culler 1.4.0).
Hub database: sqlite in memory (the hub forgets users when it restarts; postgres runs on the
host's loopback, which pods do not reach).
"""

from __future__ import annotations

import json
import time

import pytest

from coursehub_dev.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.real_nodes]

COURSE = "clustering"
CULL_TIMEOUT, CULL_EVERY = 60, 10  # the API's smallest timeout; the culler looks every 10 s


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
