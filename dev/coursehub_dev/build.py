"""Build the local control plane's binaries from the Go module proxy, once per machine.

Nothing prebuilt can be downloaded here, so every binary is compiled from its Go module
at a pinned version into a per-user cache keyed by component and version; a warm cache
makes `build_all()` a few stat calls.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.8"
KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.19.0"

KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# Real nodes only (realnodes.py): a component of their own, so that the control plane's
# cache stays valid and kwok-only machines never build them.
KUBERNETES_NODE_BINARIES = ("kubelet", "kube-proxy")


def cache_root() -> Path:
    """Per-user cache (XDG), so a warm machine never rebuilds."""
    override = os.environ.get("COURSEHUB_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coursehub"


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]
    go_mod: Callable[[], str]  # the wrapper module's go.mod body; a call, since it may ask the proxy
    packages: tuple[str, ...]  # main packages to build, in `binaries` order
    ldflags: tuple[str, ...] = field(default=())
    main_go: str | None = None  # a wrapper main, for modules whose binary has no own module

    @property
    def directory(self) -> Path:
        arch = f"{sys.platform}-{platform.machine()}"
        return cache_root() / "bin" / f"{self.name}-{self.version}-{arch}"

    def path(self, binary: str) -> Path:
        return self.directory / binary

    def is_built(self) -> bool:
        return all(self.path(b).exists() for b in self.binaries)


def _go_mod_download(module: str, version: str) -> dict:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=cache_root(),
    )
    return json.loads(out.stdout)


def _kubernetes_staging_modules(version: str) -> list[str]:
    """The k8s.io/* modules that k8s.io/kubernetes replaces with ./staging paths.

    Read from the published go.mod itself so a version bump needs no hand-kept list.
    """
    info = _go_mod_download("k8s.io/kubernetes", version)
    mods = []
    for line in Path(info["GoMod"]).read_text().splitlines():
        line = line.strip()
        if "=> ./staging/src/" in line:
            mods.append(line.split()[0])
    if not mods:
        raise RuntimeError(f"no staging replaces found in k8s.io/kubernetes {version} go.mod")
    return mods


def kubernetes() -> Component:
    v = KUBERNETES_VERSION
    major, minor, _patch = v.lstrip("v").split(".")
    staging_v = f"v0.{minor}.{_patch}"
    build_date = "2026-01-01T00:00:00Z"
    ldflags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {pkg}.gitVersion={v}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.gitCommit=0000000000000000000000000000000000000000",
            f"-X {pkg}.buildDate={build_date}",
        ]

    def go_mod() -> str:
        staging = _kubernetes_staging_modules(v)
        replaces = "\n".join(f"\t{m} => {m} {staging_v}" for m in staging)
        return (
            "module coursehub.dev/devcluster/k8s\n\ngo 1.24.0\n\n"
            f"require k8s.io/kubernetes {v}\n\nreplace (\n{replaces}\n)\n"
        )

    return Component(
        name="kubernetes",
        version=v,
        binaries=KUBERNETES_BINARIES,
        go_mod=go_mod,
        packages=tuple(f"k8s.io/kubernetes/cmd/{b}" for b in KUBERNETES_BINARIES),
        ldflags=tuple(ldflags),
    )


def kubernetes_node() -> Component:
    """kubelet and kube-proxy from the same wrapper module as the control plane."""
    cp = kubernetes()
    return Component(
        name="kubernetes-node",
        version=cp.version,
        binaries=KUBERNETES_NODE_BINARIES,
        go_mod=cp.go_mod,
        packages=tuple(f"k8s.io/kubernetes/cmd/{b}" for b in KUBERNETES_NODE_BINARIES),
        ldflags=cp.ldflags,
    )


def pause_binary(log=print) -> Path:
    """The pause container's binary: Kubernetes' own pause.c at the pinned version, static.

    Static so that it runs in an image holding nothing else (images.py).
    """
    arch = f"{sys.platform}-{platform.machine()}"
    out = cache_root() / "bin" / f"pause-{KUBERNETES_VERSION}-{arch}" / "pause"
    if out.exists():
        return out
    cache_root().mkdir(parents=True, exist_ok=True)
    src = Path(_go_mod_download("k8s.io/kubernetes", KUBERNETES_VERSION)["Dir"]) / "build/pause/linux/pause.c"
    partial = out.with_name("pause.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "gcc",
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            "-DVERSION=" + KUBERNETES_VERSION,
            "-o",
            str(partial),
            str(src),
        ],
        check=True,
    )
    subprocess.run(["strip", str(partial)], check=True)
    partial.rename(out)
    log(f"[coursehub-dev] built pause from {src}")
    return out


def build_node_binaries(log=print) -> dict[str, Path]:
    """kubelet, kube-proxy and pause: what real nodes need beyond `build_all()`."""
    c = build(kubernetes_node(), log=log)
    paths = {b: c.path(b) for b in c.binaries}
    paths["pause"] = pause_binary(log=log)
    return paths


def etcd() -> Component:
    v = ETCD_VERSION
    # etcd's own main module carries replace directives (unusable as a dependency), so a
    # two-line wrapper calls the same entry point the etcd binary uses.
    main_go = (
        'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
        "func main() { etcdmain.Main(os.Args) }\n"
    )
    mods = (
        "go.etcd.io/etcd/server/v3",
        "go.etcd.io/etcd/api/v3",
        "go.etcd.io/etcd/client/v3",
        "go.etcd.io/etcd/client/pkg/v3",
        "go.etcd.io/etcd/pkg/v3",
    )
    requires = "\n".join(f"\t{m} {v}" for m in mods)
    return Component(
        name="etcd",
        version=v,
        binaries=("etcd",),
        go_mod=lambda: f"module coursehub.dev/devcluster/etcd\n\ngo 1.24.0\n\nrequire (\n{requires}\n)\n",
        packages=(".",),
        ldflags=(),
        main_go=main_go,
    )


def kwok() -> Component:
    v = KWOK_VERSION
    return Component(
        name="kwok",
        version=v,
        binaries=("kwok",),
        go_mod=lambda: f"module coursehub.dev/devcluster/kwok\n\ngo 1.24.0\n\nrequire sigs.k8s.io/kwok {v}\n",
        packages=("sigs.k8s.io/kwok/cmd/kwok",),
        ldflags=(f"-X sigs.k8s.io/kwok/pkg/consts.Version={v}",),
    )


def helm() -> Component:
    v = HELM_VERSION
    return Component(
        name="helm",
        version=v,
        binaries=("helm",),
        go_mod=lambda: f"module coursehub.dev/devcluster/helm\n\ngo 1.24.0\n\nrequire helm.sh/helm/v3 {v}\n",
        packages=("helm.sh/helm/v3/cmd/helm",),
        ldflags=(
            f"-X helm.sh/helm/v3/internal/version.version={v}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        ),
    )


def components() -> list[Component]:
    return [etcd(), kubernetes(), kwok(), helm()]


def build(component: Component, log=print) -> Component:
    if component.is_built():
        return component
    work = cache_root() / "src" / f"{component.name}-{component.version}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    body = component.go_mod()
    (work / "go.mod").write_text(body)
    if component.main_go:
        (work / "main.go").write_text(component.main_go)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false"}
    started = datetime.now(UTC)
    log(f"[coursehub-dev] building {component.name} {component.version} (cold build, cached afterwards)")
    subprocess.run(
        ["go", "mod", "tidy"] if component.main_go else ["go", "mod", "download"],
        cwd=work,
        env=env,
        check=True,
    )
    out_dir = component.directory.with_name(component.directory.name + ".partial")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for binary, pkg in zip(component.binaries, component.packages, strict=True):
        subprocess.run(
            [
                "go",
                "build",
                "-trimpath",
                "-ldflags",
                " ".join(("-s", "-w", *component.ldflags)),
                "-o",
                str(out_dir / binary),
                pkg,
            ],
            cwd=work,
            env=env,
            check=True,
        )
    if component.directory.exists():
        shutil.rmtree(component.directory)
    out_dir.rename(component.directory)  # atomic: a half build never looks cached
    shutil.rmtree(work, ignore_errors=True)
    secs = (datetime.now(UTC) - started).total_seconds()
    log(f"[coursehub-dev] built {component.name} in {secs:.0f}s -> {component.directory}")
    return component


def build_all(log=print) -> dict[str, Path]:
    cache_root().mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for c in components():
        build(c, log=log)
        for b in c.binaries:
            paths[b] = c.path(b)
    return paths


def built_helm() -> Path | None:
    """The dev build of helm, if this machine has one (the tests hand it to the operator)."""
    path = helm().path("helm")
    return path if path.exists() else None
