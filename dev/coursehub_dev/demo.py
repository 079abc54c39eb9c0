"""`make demo`: the local control plane, a local registry with tiny course images, a sample hub
and courses, and the operator in the foreground. Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import yaml

from .cluster import DevCluster
from .paths import DEMO_DIR, REPO_ROOT, crd_files, default_state_dir
from .registry import OciRegistry

NAMESPACE = "demo"


def main(state: Path | None = None) -> int:
    state = state or default_state_dir()
    cluster = DevCluster(state_dir=state).up(crds=crd_files())
    registry_dir = state / "registry"
    registry_dir.mkdir(parents=True, exist_ok=True)
    registry = OciRegistry(registry_dir)
    registry.start()
    try:
        docs = []
        for f in ("namespace.yaml", "hub.yaml", "courses.yaml"):
            text = (DEMO_DIR / f).read_text().replace("127.0.0.1:5000", registry.host)
            docs += [d for d in yaml.safe_load_all(text) if d]
        for d in docs:
            if d["kind"] == "CourseImage":
                m = re.match(r"^[^/]+/(.+):([^:@]+)$", d["spec"]["image"])
                if m is None:
                    image = d["spec"]["image"]
                    raise ValueError(f"{DEMO_DIR}/courses.yaml: {image!r} is not <host>/<repo>:<tag>")
                repo, tag = m.groups()
                registry.push_image(repo, tag, f"demo-{tag}")
            chart = (d["spec"].get("chart") or {}) if d["kind"] == "JupyterHubDeployment" else {}
            if chart.get("path") and not Path(chart["path"]).is_absolute():
                # The manifest names the chart from the checkout's root; the operator's chart
                # policy (COURSEHUB_CHART_PATHS) compares absolute paths without '..'.
                chart["path"] = str((REPO_ROOT / chart["path"]).resolve())
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        # The operator below runs in this process: it finds the cluster and helm through these.
        os.environ.update(
            {
                k: v
                for k, v in cluster.env().items()
                if k in ("KUBECONFIG", "PATH", "COURSEHUB_HELM", "COURSEHUB_CHART_PATHS")
            }
        )
        state_flag = "" if state == default_state_dir() else f" --state-dir {state}"
        print(
            f"""
coursehub demo: a hub and {sum(d["kind"] == "CourseImage" for d in docs)} courses in namespace {NAMESPACE}.
In another shell:
  eval $(uv run coursehub-dev env{state_flag})
  kubectl get jhd,cimg -n {NAMESPACE}
  kubectl get configmap coursehub-allowlist -n {NAMESPACE} -o jsonpath='{{.data.allowlist\\.json}}'
  kubectl get ds,pods -n {NAMESPACE} -o wide
Push a new build under a tag and watch the digest follow:
  registry at {registry.url} (repository ol-course-notebooks)
Ctrl-C stops the operator, the registry and the cluster.
""",
            flush=True,
        )
        from coursehub.operator_main import run

        os.environ.setdefault("COURSEHUB_RESOLVE_INTERVAL", "30")
        os.environ.setdefault("COURSEHUB_ECR_LIFECYCLE", "false")
        # The demo registry is plain HTTP on loopback: named, or the resolver refuses it.
        os.environ.setdefault("COURSEHUB_INSECURE_REGISTRIES", "127.0.0.1")
        return run(namespaces=[NAMESPACE], all_namespaces=False, liveness=None)
    except KeyboardInterrupt:
        return 0
    finally:
        # Ctrl-C reaches this process twice (the terminal's SIGINT to the process group, and
        # `uv run` forwarding it); a second one must not cut the cleanup short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        registry.stop()
        cluster.down()


if __name__ == "__main__":
    sys.exit(main())


# -- `make demo`: one real node ---------------------------------------------------------------
REAL_NAMESPACE = "demo"
EXAMPLE_COURSES = REPO_ROOT / "examples" / "courses"  # the CourseImage of each example course
HUB_REQUIREMENTS = REPO_ROOT / "images" / "hub" / "requirements.txt"
EXISTING_MARK = "existing.json"  # in the state dir: the demo went to a cluster it did not start


def hub_version() -> str:
    """The JupyterHub version the hub image installs (what a link's answer must name)."""
    m = re.search(r"^jupyterhub==(\S+)$", HUB_REQUIREMENTS.read_text(), re.M)
    if m is None:
        raise ValueError(f"{HUB_REQUIREMENTS}: no jupyterhub== pin")
    return m.group(1)


def check_link(url: str, version: str) -> str:
    """A launch link answered by the hub: JupyterHub's own header with the image's version, and
    the course accepted (a redirect on to the spawn, or a GPU course's confirmation page).
    Checking logs in one temporary user, who starts nothing and is culled when idle."""
    import requests

    s = requests.Session()
    s.trust_env = False  # the node IP directly, never a proxy
    r = s.get(url, allow_redirects=False, timeout=30)
    who = r.headers.get("X-JupyterHub-Version")
    if who != version:
        raise RuntimeError(
            f"{url}: answered by {who or 'not JupyterHub'} ({r.status_code}), not JupyterHub {version}"
        )
    if not (r.status_code == 302 and "/hub/spawn" in r.headers.get("Location", "")) and r.status_code != 200:
        raise RuntimeError(f"{url}: JupyterHub refused the course ({r.status_code}): {r.text[:500]}")
    return who


def example_courses(names: list[str], gpu_node: bool) -> list[dict]:
    """The spec of each built example course from examples/courses/<name>.yaml (slug, GPU,
    notebook); without a real GPU node a GPU course becomes `optional` (it runs on CPU)."""
    out = []
    for name in names:
        path = EXAMPLE_COURSES / f"{name}.yaml"
        spec = (yaml.safe_load(path.read_text()) or {}).get("spec", {}) if path.exists() else {}
        gpu = spec.get("gpu", "none")
        if gpu == "required" and not gpu_node:
            gpu = "optional"
        out.append(
            {
                "source": name,
                "slug": spec.get("course", name),
                "gpu": gpu,
                "notebook": spec.get("defaultNotebook"),
            }
        )
    return out


def real(state: Path | None = None, kubeconfig: Path | None = None, images: Path | None = None) -> int:
    """One real node (plus kwok) with the operator installed by its chart, a z2jh hub and the
    example courses built and published; prints a checked launch link per course and returns,
    leaving it running (`coursehub-dev down` / `make demo-down` stops it and restores the
    machine). With `kubeconfig`: the same on an existing cluster (docs/kind.md)."""
    import json
    import time

    from .existing import ExistingCluster, install_stack
    from .stack import Stack

    state = state or default_state_dir()
    started = time.monotonic()
    stack: Stack
    if kubeconfig:
        if images is None:
            raise ValueError(
                "--kubeconfig needs --images: a JSON file naming the images pushed for it (docs/kind.md)"
            )
        existing = ExistingCluster(kubeconfig.resolve(), state)
        stack = install_stack(Stack, existing, json.loads(images.read_text()))
        (state / EXISTING_MARK).write_text(json.dumps({"kubeconfig": str(kubeconfig.resolve())}))
    else:
        cluster = DevCluster(state_dir=state, real_nodes=1)
        try:
            cluster.up()  # no CRDs: the operator's chart installs them, as for a user
            stack = Stack.install(cluster)
        except BaseException:
            cluster.down()
            raise
    ns = stack.namespace(REAL_NAMESPACE)
    gpu_node = bool(
        stack.cluster.get(
            "/api/v1/nodes?labelSelector=coursehub.dev%2Freal-node%3Dtrue,ol.mit.edu%2Fgpu_node%3Dtrue"
        )["items"]
    )
    courses = example_courses(stack.builder.course_names(), gpu_node)
    for c in courses:
        stack.create_course(
            ns, c["source"], name=c["source"], slug=c["slug"], gpu=c["gpu"], default_notebook=c["notebook"]
        )
    # Idle temporary users (and those the link check below logs in) go after an hour.
    culling = {
        "enabled": True,
        "timeoutSeconds": 3600,
        "everySeconds": 300,
        "maxAgeSeconds": 0,
        "users": True,
    }
    stack.create_hub(ns, culling=culling)
    stack.wait_hub_ready(ns, timeout=600)
    for c in courses:
        stack.wait_course_published(ns, c["source"], timeout=600)
    version = hub_version()
    links = {c["slug"]: stack.launch_url(ns, c["slug"]) for c in courses}
    for url in links.values():
        check_link(url, version)
    took = time.monotonic() - started
    flag = "" if state == default_state_dir() else f" --state-dir {state}"
    lines = "\n".join(f"  {slug:<32} {url}" for slug, url in links.items())
    inspect = f"eval $(uv run coursehub-dev env{flag})"
    stop = f"Stop it and restore the machine: make demo-down (uv run coursehub-dev down{flag})"
    if kubeconfig:
        inspect = f"export KUBECONFIG={kubeconfig.resolve()}"
        stop = f"Take the demo and the operator back out: uv run coursehub-dev down{flag}"
    print(
        f"""
coursehub demo ready in {took:.0f}s: JupyterHub {version} (z2jh 4.4.0) in namespace {ns}, the operator
installed by its chart, {len(links)} courses published. Open a launch link in a browser on this machine:
{lines}
Each link was checked: JupyterHub {version} answered and accepted the course.
  {inspect}   # then: kubectl get jhd,cimg,pods -n {ns} -o wide
{stop}
""",
        flush=True,
    )
    return 0
