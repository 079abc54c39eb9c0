"""Real nodes (issue 11): what a learner waits for, and what the real-node parts cost.

Starts a dev cluster with one real node (`coursehub-dev up --real-nodes 1`), the operator by its
chart (dev/coursehub_dev/stack.py) and a hub from the published z2jh 4.4.0 chart, then measures:

1. Warm set-up: nothing running -> the first real node Ready (the images and binaries cached),
   then the operator installed and the hub Ready.
2. Launch link -> JupyterLab answering (its version from the page, so nothing else answered),
   over --learners learners one after another (each stopped before the next): first not
   pre-pulled (the hub's pre-pull off and the course image and network-tools removed from the
   node's containerd before each launch, every record and unpacked layer of them: every learner
   pulls), then pre-pulled (pre-pull on with publishAfterPull, waited for). p50 and p95 of each.
   Each not-pre-pulled launch prints what was removed first (Stack.forget_images, which fails if
   anything of the images is left) and kubelet's pull of each image; the run stops if the node
   still lists an image before the launch, or if kubelet found one "already present".
3. A course's new digest (a new build pushed under the same tag) -> present on every eligible
   real node (containerd lists it), with the operator's resolve interval at 5 s.

Times, printed; asserted only that a not-pre-pulled launch pulled. Run it alone (2 cores), as root:

    flock /tmp/coursehub-e2e.lock uv run python bench/bench_real_nodes.py [--learners 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from coursehub_dev.cluster import DevCluster  # noqa: E402
from coursehub_dev.stack import Stack  # noqa: E402
from coursehub_dev.waiting import wait_until  # noqa: E402
from harness import percentile  # noqa: E402

COURSE = "clustering"
NODE = "real-node-0"
# What a learner pod pulls on a node that has none of it (the pause image stays: the hub's pods
# on the node use it).
COLD_REPOS = ("coursehub/course-", "jupyterhub/k8s-network-tools")


def first_node_ready(cluster: DevCluster, started_wall: float) -> float:
    node = cluster.get(f"/api/v1/nodes/{NODE}")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    from datetime import datetime

    return (
        datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00")).timestamp() - started_wall
    )


def pulls(stack: Stack, ns: str, pod: str) -> list[str]:
    """kubelet's Pulled events of a pod: "Successfully pulled image ... in Xs" or "... already
    present on machine", one per container."""
    events = stack.cluster.get(f"/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3D{pod}")
    return [e["message"] for e in events["items"] if e["reason"] == "Pulled"]


def forget(stack: Stack) -> None:
    """The course image and network-tools gone from the node, or the run stops."""
    print(f"  forgot {stack.forget_images(NODE, *COLD_REPOS)}", flush=True)
    left = [n for n in stack.node_images(NODE) if any(r in n for r in COLD_REPOS)]
    if left:
        raise SystemExit(f"{NODE} still lists {left} after forgetting them: the launch would not pull")


def one_learner(stack: Stack, ns: str, *, cold: bool = False) -> float:
    s = stack.browser()
    t = time.monotonic()
    user = stack.launch(ns, COURSE, s)
    wait_until(lambda: stack.lab_version(ns, user, s), timeout=300, what=f"JupyterLab of {user}")
    secs = time.monotonic() - t
    pod = stack.learner_pod(ns, user)
    if cold:
        if pod is None:
            raise SystemExit(f"no learner pod of {user} to read its pulls from")
        messages = pulls(stack, ns, pod["metadata"]["name"])
        for m in messages:
            print(f"    {m}", flush=True)
        present = [m for m in messages if "already present" in m]
        if present or not messages:
            raise SystemExit(f"a not-pre-pulled launch pulled nothing: {present or 'no Pulled events'}")
    api = stack.hub_api(ns)
    base = stack.hub_url(ns)
    api.delete(f"{base}/hub/api/users/{user}/server", timeout=30)
    wait_until(lambda: stack.learner_pod(ns, user) is None, timeout=120, what=f"{user}'s pod gone")
    api.delete(f"{base}/hub/api/users/{user}", timeout=30)
    return secs


def wait_prepulled(stack: Stack, ns: str, name: str, digest: str | None = None) -> None:
    def done() -> bool:
        obj = stack.cluster.get(f"/apis/coursehub.dev/v1alpha1/namespaces/{ns}/courseimages/{name}")
        if digest and obj.get("status", {}).get("digest") != digest:
            return False
        c = stack.condition("courseimages", ns, name, "PrePulled")
        # reason too: with the hub's pre-pull off it is True as "PrePullDisabled"
        return c.get("status") == "True" and c.get("reason") == "PrePulled"

    wait_until(done, timeout=300, what=f"{name} pre-pulled")


def new_build(stack: Stack, ref: str) -> None:
    """The course image plus one small layer, pushed under the same tag (a new digest)."""
    b = stack.builder
    repo_tag = ref.split("/", 1)[1]
    repo, tag = repo_tag.rsplit(":", 1)
    local = b._local_name(repo, tag)
    ctr = b._buildah("from", "--pull-never", local).stdout.strip()
    try:
        marker = Path(tempfile.mkdtemp()) / "build-id"
        marker.write_text(uuid.uuid4().hex)
        b._buildah("copy", ctr, str(marker), "/build-id")
        b._buildah("commit", ctr, f"{local}-next")
    finally:
        b._buildah("rm", ctr, check=False)
    b._buildah("push", "--tls-verify=false", f"{local}-next", f"docker://{ref}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--learners", type=int, default=10)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-real-")) / "state"
    cluster = DevCluster(state_dir=state, real_nodes=1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    out: list[str] = [f"commit {commit}, {args.learners} learners per case, 1 real node"]
    try:
        wall, t = time.time(), time.monotonic()
        cluster.up()
        up_secs = time.monotonic() - t
        node_secs = first_node_ready(cluster, wall)
        t = time.monotonic()
        stack = Stack.install(cluster)
        op_secs = time.monotonic() - t
        ns = stack.namespace("bench")
        course = stack.create_course(ns, COURSE)
        ref = course["spec"]["image"]
        t = time.monotonic()
        stack.create_hub(ns, pre_pull={"enabled": False})
        stack.wait_hub_ready(ns)
        stack.wait_course_published(ns, COURSE)
        hub_secs = time.monotonic() - t
        out.append(
            f"warm: nothing -> {NODE} Ready {node_secs:.1f}s (up with control plane {up_secs:.1f}s); "
            f"operator image + chart {op_secs:.1f}s; hub Ready {hub_secs:.1f}s"
        )
        print(out[-1], flush=True)

        cold: list[float] = []
        for _ in range(args.learners):
            forget(stack)
            cold.append(one_learner(stack, ns, cold=True))
            print(f"  not pre-pulled: {cold[-1]:.1f}s", flush=True)
        hub = stack.hub_manifest(ns, pre_pull={"enabled": True, "publishAfterPull": True})
        stack.apply(hub)
        t = time.monotonic()
        wait_prepulled(stack, ns, COURSE)
        prepull_secs = time.monotonic() - t
        warm: list[float] = []
        for _ in range(args.learners):
            warm.append(one_learner(stack, ns))
            print(f"  pre-pulled: {warm[-1]:.1f}s", flush=True)
        for label, xs in (("not pre-pulled", cold), ("pre-pulled", warm)):
            out.append(
                f"launch link -> JupyterLab answering, {label}: n={len(xs)} p50 {percentile(xs, 50):.1f}s "
                f"p95 {percentile(xs, 95):.1f}s max {max(xs):.1f}s"
            )
        out.append(f"pre-pull after enabling it: {prepull_secs:.1f}s")

        old = stack.cluster.get(f"/apis/coursehub.dev/v1alpha1/namespaces/{ns}/courseimages/{COURSE}")
        t = time.monotonic()
        new_build(stack, ref)
        pushed = time.monotonic()

        def new_digest() -> str | None:
            obj = stack.cluster.get(f"/apis/coursehub.dev/v1alpha1/namespaces/{ns}/courseimages/{COURSE}")
            d = obj.get("status", {}).get("digest")
            return d if d and d != old["status"]["digest"] else None

        digest = wait_until(new_digest, timeout=120, what="the new digest resolved")
        resolved = time.monotonic()
        repo = ref.rsplit(":", 1)[0]
        wait_until(
            lambda: f"{repo}@{digest}" in stack.node_images(NODE), timeout=300, what=f"{digest} on {NODE}"
        )
        on_node = time.monotonic()
        wait_prepulled(stack, ns, COURSE, digest)
        out.append(
            f"new digest: push {pushed - t:.1f}s; push -> resolved {resolved - pushed:.1f}s; "
            f"-> on every real node ({NODE}) {on_node - pushed:.1f}s; "
            f"-> PrePulled {time.monotonic() - pushed:.1f}s"
        )
    finally:
        t = time.monotonic()
        cluster.down()
        out.append(f"down {time.monotonic() - t:.1f}s")
    print("\n[bench_real_nodes]\n" + "\n".join(out))


if __name__ == "__main__":
    main()
