"""The `coursehub` command: crds, docs, render, run. (The dev cluster is `coursehub-dev`, in dev/.)"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


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
        print(docs.write_reference(Path(args.write)))
        return 0
    print(docs.reference_markdown(), end="")
    return 0


def cmd_render(args) -> int:
    from .desired.manifest import render_values_from_manifest
    from .settings import current

    docs = [d for d in yaml.safe_load_all(Path(args.file).read_text()) if d]
    hubs = [d for d in docs if d.get("kind") == "JupyterHubDeployment"]
    if len(hubs) != 1:
        print(
            f"error: {args.file} must contain exactly one JupyterHubDeployment (found {len(hubs)})",
            file=sys.stderr,
        )
        return 2
    try:
        # The chart policy is the operator's (COURSEHUB_CHART_* settings), as the reconciler applies it.
        values = render_values_from_manifest(hubs[0], current().chart_policy())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(values, sort_keys=False, width=120), end="")
    return 0


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
    dc.add_argument(
        "--write",
        nargs="?",
        const="docs/reference.md",
        metavar="FILE",
        help="write the page to FILE (default: docs/reference.md of the current directory)",
    )
    dc.set_defaults(fn=cmd_docs)

    r = sub.add_parser("render", help="print the exact z2jh values a JupyterHubDeployment renders to")
    r.add_argument("file")
    r.set_defaults(fn=cmd_render)

    o = sub.add_parser("run", help="run the operator")
    o.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    o.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    o.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    o.set_defaults(fn=cmd_run)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
