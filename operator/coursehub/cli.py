"""The `coursehub` command: crds, render, dev up|down|env, run."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from .crds import CRD_DIR, REPO_ROOT


def default_state_dir() -> Path:
    return Path(os.environ.get("COURSEHUB_DEVCLUSTER_DIR", REPO_ROOT / ".devcluster"))


def cmd_crds(args) -> int:
    from . import crds

    if args.write:
        for p in crds.write_all(Path(args.write)):
            print(p)
        return 0
    print("---\n".join(crds.render(c) for c in crds.all_crds().values()), end="")
    return 0


def cmd_docs(args) -> int:
    from . import docs

    if args.write:
        print(docs.write_reference())
        return 0
    print(docs.reference_markdown(), end="")
    return 0


def cmd_render(args) -> int:
    from .desired.values import render_values_from_manifest

    docs = [d for d in yaml.safe_load_all(Path(args.file).read_text()) if d]
    hubs = [d for d in docs if d.get("kind") == "JupyterHubDeployment"]
    if len(hubs) != 1:
        print(
            f"error: {args.file} must contain exactly one JupyterHubDeployment (found {len(hubs)})",
            file=sys.stderr,
        )
        return 2
    try:
        values = render_values_from_manifest(hubs[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(values, sort_keys=False, width=120), end="")
    return 0


def cmd_dev(args) -> int:
    from .devcluster.cluster import DevCluster

    state = Path(args.state_dir) if args.state_dir else default_state_dir()
    if args.action == "up":
        DevCluster(state_dir=state).up(crds=sorted(CRD_DIR.glob("*.yaml")))
        # The processes run in sessions of their own and outlive this command.
        return 0
    if args.action == "down":
        DevCluster.attach(state).down()
        return 0
    if args.action == "env":
        c = DevCluster.attach(state)
        if not c.kubeconfig.exists():
            print(f"error: no dev cluster at {state}; run `coursehub dev up` first", file=sys.stderr)
            return 1
        bin_dirs = sorted({str(Path(p).parent) for p in c.binaries.values()})
        print(f"export KUBECONFIG={c.kubeconfig}")
        print(f"export PATH={os.pathsep.join(bin_dirs)}:$PATH")
        return 0
    if args.action == "build":
        from .devcluster.build import build_all

        for name, path in build_all().items():
            print(f"{name}\t{path}")
        return 0
    return 2


def cmd_run(args) -> int:
    from .operator_main import run

    return run(namespaces=args.namespace, all_namespaces=args.all_namespaces, liveness=args.liveness)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coursehub", description="Run JupyterHub for courses on Kubernetes.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("crds", help="print the CRDs generated from the API models")
    c.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR instead of printing")
    c.set_defaults(fn=cmd_crds)

    dc = sub.add_parser("docs", help="print the reference of both kinds, generated from the models")
    dc.add_argument("--write", action="store_true", help="write docs/reference.md instead of printing")
    dc.set_defaults(fn=cmd_docs)

    r = sub.add_parser("render", help="print the exact z2jh values a JupyterHubDeployment renders to")
    r.add_argument("file")
    r.set_defaults(fn=cmd_render)

    d = sub.add_parser("dev", help="the local Kubernetes control plane")
    d.add_argument("action", choices=["up", "down", "env", "build"])
    d.add_argument("--state-dir", help="where the cluster keeps its data (default .devcluster/)")
    d.set_defaults(fn=cmd_dev)

    o = sub.add_parser("run", help="run the operator")
    o.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    o.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    o.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    o.set_defaults(fn=cmd_run)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
