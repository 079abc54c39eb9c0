"""`coursehub-dev`: the local control plane (up, down, env), its binaries (build) and the demo."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .paths import crd_files, default_state_dir


def cmd_up(state: Path, real_nodes: int = 0) -> int:
    from .cluster import DevCluster
    from .realnodes import RealNodesBusy

    try:
        DevCluster(state_dir=state, real_nodes=real_nodes).up(crds=crd_files())
    except RealNodesBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # The processes run in sessions of their own and outlive this command.
    return 0


def cmd_down(state: Path) -> int:
    from .cluster import DevCluster

    DevCluster.attach(state).down()
    return 0


def cmd_env(state: Path) -> int:
    from .cluster import DevCluster

    c = DevCluster.attach(state)
    if not c.kubeconfig.exists():
        print(f"error: no dev cluster at {state}; run `coursehub-dev up` first", file=sys.stderr)
        return 1
    env = c.env()
    bin_dirs = sorted({str(Path(p).parent) for p in c.binaries.values()})
    print(f"export KUBECONFIG={env['KUBECONFIG']}")
    print(f"export COURSEHUB_HELM={env['COURSEHUB_HELM']}")
    print(f"export PATH={os.pathsep.join(bin_dirs)}:$PATH")
    return 0


def cmd_build(_state: Path) -> int:
    from .build import build_all

    for name, path in build_all().items():
        print(f"{name}\t{path}")
    return 0


def cmd_demo(state: Path) -> int:
    from .demo import main as demo

    return demo(state)


COMMANDS = {
    "up": (cmd_up, "start the local control plane (etcd, kube-apiserver, ..., kwok) with the CRDs"),
    "down": (cmd_down, "stop it and remove its data"),
    "env": (cmd_env, "print KUBECONFIG, COURSEHUB_HELM and PATH for `eval`"),
    "build": (cmd_build, "build etcd, Kubernetes, kwok and helm from the Go module proxy (cached)"),
    "demo": (cmd_demo, "the cluster, a local registry, a sample hub and courses, the operator"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coursehub-dev", description="coursehub's local dev cluster and demo.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, (_fn, help_text) in COMMANDS.items():
        c = sub.add_parser(name, help=help_text)
        c.add_argument(
            "--state-dir",
            type=Path,
            help="where the cluster keeps its data (default .devcluster/, or $COURSEHUB_DEVCLUSTER_DIR)",
        )
        if name == "up":
            c.add_argument(
                "--real-nodes",
                type=int,
                default=0,
                metavar="N",
                help="also start N real nodes (containerd, kubelet; the last a GPU node when N >= 2); "
                "root only, one such cluster per machine (docs/real-nodes.md)",
            )
    args = p.parse_args(argv)
    if args.command == "up":
        return cmd_up(args.state_dir or default_state_dir(), args.real_nodes)
    return COMMANDS[args.command][0](args.state_dir or default_state_dir())


if __name__ == "__main__":
    sys.exit(main())
