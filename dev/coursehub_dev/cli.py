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
        cluster = DevCluster(state_dir=state, real_nodes=real_nodes).up(crds=crd_files())
    except RealNodesBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if real_nodes:
        from .realnodes import RealNodes
        from .stack import Stack

        # The z2jh chart's quay.io images under their own names, as a cluster with internet
        # access pulls them: this cluster then serves as "an existing cluster" (docs/kind.md).
        refs = RealNodes.images_of(state)
        Stack(cluster, refs["registry"], {}, {}, RealNodes.image_builder(state)).z2jh_images()
        print(f"images (COURSEHUB_E2E_IMAGES): {state / 'realnodes' / 'images.json'}")
    # The processes run in sessions of their own and outlive this command.
    return 0


def cmd_down(state: Path) -> int:
    from .cluster import DevCluster
    from .demo import EXISTING_MARK, REAL_NAMESPACE

    mark = state / EXISTING_MARK
    if mark.exists():
        # `demo --kubeconfig` went to a cluster it did not start: take back what it installed.
        import json

        from .existing import ExistingCluster, uninstall_stack
        from .stack import Stack

        existing = ExistingCluster(Path(json.loads(mark.read_text())["kubeconfig"]), state)
        uninstall_stack(Stack(existing, "", {}, {}, None), [REAL_NAMESPACE])  # type: ignore[arg-type]
        existing.down()
        return 0
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


def cmd_demo(
    state: Path, kwok: bool = False, kubeconfig: Path | None = None, images: Path | None = None
) -> int:
    from .demo import main as kwok_demo
    from .demo import real
    from .realnodes import RealNodesBusy

    if kwok:
        return kwok_demo(state)
    try:
        return real(state, kubeconfig, images)
    except (RealNodesBusy, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


COMMANDS = {
    "up": (cmd_up, "start the local control plane (etcd, kube-apiserver, ..., kwok) with the CRDs"),
    "down": (cmd_down, "stop it and remove its data"),
    "env": (cmd_env, "print KUBECONFIG, COURSEHUB_HELM and PATH for `eval`"),
    "build": (cmd_build, "build etcd, Kubernetes, kwok and helm from the Go module proxy (cached)"),
    "demo": (
        cmd_demo,
        "one real node, the operator by its chart, a z2jh hub and the example courses; prints launch links",
    ),
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
        if name == "demo":
            c.add_argument(
                "--kwok",
                action="store_true",
                help="the kwok-only demo: the operator in the foreground, no root",
            )
            c.add_argument(
                "--kubeconfig", type=Path, help="an existing cluster instead of the local one (docs/kind.md)"
            )
            c.add_argument(
                "--images", type=Path, help="with --kubeconfig: JSON naming registry, operator, course-<name>"
            )
    args = p.parse_args(argv)
    if args.command == "up":
        return cmd_up(args.state_dir or default_state_dir(), args.real_nodes)
    if args.command == "demo":
        return cmd_demo(args.state_dir or default_state_dir(), args.kwok, args.kubeconfig, args.images)
    return COMMANDS[args.command][0](args.state_dir or default_state_dir())


if __name__ == "__main__":
    sys.exit(main())
