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
