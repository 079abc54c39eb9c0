"""Images for real nodes, built on this machine (no registry beyond loopback is reachable).

- base: Debian bookworm made by mmdebstrap (python3 with venv and pip, and the machine's CA
  certificates so that pip works through this machine's TLS-inspecting egress), imported
  with buildah;
- pause: Kubernetes' own pause.c compiled statically (build.pause_binary) in an empty image;
- course images: a course repository's Dockerfile built with buildah on the base;
- the operator (the project's Dockerfile), the z2jh hub, configurable-http-proxy and z2jh's
  network-tools: Dockerfiles under images/ (and the top-level one) whose base images are build
  arguments, built here on the base (and on build-only images: Go, uv, Python 3.12).

One recipe per image: a `<name>_tag()` hashing its inputs and a `<name>()` returning the pushed
reference. Build-only images (`_ensure_local`) stay in buildah's storage and are made only when
an image that needs them is built.

Every image is named by a hash of its inputs (its recipe, its files, its base's tag), so a
warm run finds each tag in the local registry and builds nothing. buildah keeps its storage
and the registry its blobs under the per-user cache, beside the Go binaries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from . import build
from .paths import REPO_ROOT
from .registry import OciRegistry

SUITE = "bookworm"
# python3-venv/pip: course images install their requirements into a venv during builds.
BASE_PACKAGES = ("ca-certificates", "python3", "python3-venv", "python3-pip", "tini")
# Bump when a recipe below changes in a way its inputs do not show.
RECIPE_VERSION = "1"
COURSES_DIR = REPO_ROOT / "examples" / "courses-src"
IMAGES_DIR = REPO_ROOT / "images"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
# overlay: layers shared, not copied (buildah unmounts what it mounted when it exits).
STORAGE_DRIVER = "overlay"


def images_root() -> Path:
    return build.cache_root() / "images"


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def _host_ca_files() -> list[Path]:
    return sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []


def _tree_hash(directory: Path) -> str:
    parts: list[bytes | str] = []
    for f in sorted(p for p in directory.rglob("*") if p.is_file()):
        parts += [str(f.relative_to(directory)), f.read_bytes()]
    return _sha(*parts)


@dataclass
class ImageBuilder:
    """Builds the images and keeps them in one local registry (`registry.host`)."""

    log: Callable[[str], object] = print
    registry: OciRegistry | None = None  # the one start_registry() started, if this object did
    registry_host: str | None = None  # 127.0.0.1:<port> of the registry images go to
    timings: dict[str, float] = field(default_factory=dict)  # seconds per image built or checked

    # -- storage -----------------------------------------------------------
    def _buildah(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        root = images_root()
        cmd = [
            _tool("buildah", "buildah"),
            "--root",
            str(root / "storage"),
            "--runroot",
            str(root / "run"),
            "--storage-driver",
            STORAGE_DRIVER,
            *args,
        ]
        # buildah keeps RUN --mount=type=cache directories (pip's, uv's) and scratch space under
        # TMPDIR: in the cache too, not in the machine's /var/tmp.
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(root / "tmp")}
        )
        if check and res.returncode != 0:
            raise RuntimeError(
                f"buildah {' '.join(args[:2])} failed ({res.returncode}):\n{res.stderr[-3000:]}"
            )
        return res

    def start_registry(self, workdir: Path) -> OciRegistry:
        """The local registry, its blobs under the cache (survive `down`), its process under `workdir`."""
        storage = images_root() / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        reg = OciRegistry(workdir)
        # OciRegistry keeps storage in workdir; point it at the cache so images outlive a cluster.
        config = json.loads(reg.config_path.read_text())
        config["storage"]["filesystem"]["rootdirectory"] = str(storage)
        reg.config_path.write_text(json.dumps(config, indent=2))
        reg.start()
        self.registry, self.registry_host = reg, reg.host
        return reg

    @classmethod
    def attach(cls, registry_host: str, log: Callable[[str], object] = print) -> ImageBuilder:
        """A builder pushing to a registry that runs already (a real-node cluster's)."""
        return cls(log=log, registry_host=registry_host)

    def _in_registry(self, repo: str, tag: str) -> bool:
        r = requests.head(
            f"http://{self.registry_host}/v2/{repo}/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            timeout=5,
        )
        return r.status_code == 200

    def _local_name(self, repo: str, tag: str) -> str:
        return f"localhost/{repo}:{tag}"

    def _in_storage(self, repo: str, tag: str) -> bool:
        return (
            self._buildah("inspect", "--type", "image", self._local_name(repo, tag), check=False).returncode
            == 0
        )

    def _ensure(self, repo: str, tag: str, make: Callable[[str], None]) -> str:
        """`registry/repo:tag`, built by `make(local_name)` only when neither the registry nor
        buildah's storage has it."""
        assert self.registry_host is not None, "start_registry() or attach() first"
        started = time.monotonic()
        ref = f"{self.registry_host}/{repo}:{tag}"
        if not self._in_registry(repo, tag):
            local = self._local_name(repo, tag)
            if not self._in_storage(repo, tag):
                self.log(f"[images] building {repo}:{tag}")
                make(local)
            self._buildah("push", "--tls-verify=false", local, f"docker://{ref}")
        self.timings[repo] = time.monotonic() - started
        return ref

    def _ensure_local(self, repo: str, tag: str, make: Callable[[str], None]) -> str:
        """A build-only image: in buildah's storage (never pushed), made when missing."""
        local = self._local_name(repo, tag)
        if not self._in_storage(repo, tag):
            started = time.monotonic()
            self.log(f"[images] building {repo}:{tag} (build only)")
            make(local)
            self.timings[repo] = time.monotonic() - started
        return local

    def _bud(
        self,
        context: Path,
        local: str,
        build_args: dict[str, str],
        *,
        dockerfile: Path | None = None,
        volumes: tuple[str, ...] = (),
        target: str | None = None,
        bare_stages: tuple[str, ...] = (),
    ) -> None:
        """`buildah bud` with runc and the host's network (no CNI bridge or netfilter rules for a
        build step), from local images only (`--pull-never`: no registry beyond loopback).

        `bare_stages`: images of stages without instructions (`FROM ${UV_IMAGE} AS uv`, only
        copied from). buildah 1.28 leaves their working containers mounted; they are removed
        here (only those, so that a concurrent build's containers are left alone)."""
        args = ["bud", "--runtime", "runc", "--network", "host", "--pull-never", "--layers=false"]
        for k, v in build_args.items():
            args += ["--build-arg", f"{k}={v}"]
        for v in volumes:
            args += ["--volume", v]
        if dockerfile is not None:
            args += ["--file", str(dockerfile)]
        if target is not None:
            args += ["--target", target]
        before = set(self._containers_of(bare_stages))
        try:
            self._buildah(*args, "-t", local, str(context))
        finally:
            for ctr in set(self._containers_of(bare_stages)) - before:
                self._buildah("rm", ctr, check=False)

    def _containers_of(self, images: tuple[str, ...]) -> list[str]:
        if not images:
            return []
        out = self._buildah("containers", "--json", check=False).stdout or "[]"
        return [c["id"] for c in json.loads(out) or [] if c.get("imagename") in images]

    def _run(self, ctr: str, script: str) -> None:
        self._buildah("run", "--runtime", "runc", "--network", "host", ctr, "--", "sh", "-euc", script)

    def _derive(
        self,
        local: str,
        script: str,
        *,
        copies: tuple[tuple[str, str], ...] = (),
        adds: tuple[tuple[str, str], ...] = (),
        env: tuple[str, ...] = (),
        from_image: str | None = None,
    ) -> None:
        """An image from `from_image` (default: the base), `copies` and `adds` (host path, image
        path; add unpacks tarballs) and `script` run in it."""
        ctr = self._buildah("from", "--pull-never", from_image or self.base_local()).stdout.strip()
        try:
            for src, dst in copies:
                self._buildah("copy", ctr, src, dst)
            for src, dst in adds:
                self._buildah("add", ctr, src, dst)
            self._run(ctr, script)
            for e in env:
                self._buildah("config", "--env", e, ctr)
            self._buildah("commit", "--rm", ctr, local)
        except BaseException:
            self._buildah("rm", ctr, check=False)
            raise

    # -- images ------------------------------------------------------------
    def base_tag(self) -> str:
        cas = [p for f in _host_ca_files() for p in (f.name, f.read_bytes())]
        return _sha(RECIPE_VERSION, SUITE, *BASE_PACKAGES, *cas)[:20]

    def base(self) -> str:
        return self._ensure("coursehub/base", self.base_tag(), self._make_base)

    def base_local(self) -> str:
        """The base image's name in buildah's storage (what course Dockerfiles build FROM)."""
        self.base()
        return self._local_name("coursehub/base", self.base_tag())

    def _make_base(self, local: str) -> None:
        self._mmdebstrap(local, SUITE, BASE_PACKAGES, self.base_tag())

    def _mmdebstrap(self, local: str, suite: str, packages: tuple[str, ...], tag: str) -> None:
        """A Debian `suite` minbase with `packages` and the machine's CAs, as an image."""
        work = images_root() / f"work-{suite}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        tarball = work / "rootfs.tar"
        hooks = []
        for f in _host_ca_files():
            # The machine's own CAs (its egress inspects TLS): pip inside builds trusts them.
            hooks += [f"--customize-hook=copy-in {f} /usr/local/share/ca-certificates/"]
        hooks += ['--customize-hook=chroot "$1" update-ca-certificates --fresh >/dev/null']
        hooks += ['--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*']
        subprocess.run(
            [
                _tool("mmdebstrap", "mmdebstrap"),
                "--quiet",
                "--mode=root",
                "--variant=minbase",
                f"--include={','.join(packages)}",
                "--dpkgopt=path-exclude=/usr/share/{doc,man,locale}/*",
                *hooks,
                suite,
                str(tarball),
            ],
            check=True,
        )
        ctr = self._buildah("from", "scratch").stdout.strip()
        try:
            self._buildah("add", ctr, str(tarball), "/")
            self._buildah(
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "/bin/bash",
                "--label",
                f"dev.coursehub.recipe={tag}",
                ctr,
            )
            self._buildah("commit", "--rm", ctr, local)
        except BaseException:
            self._buildah("rm", ctr, check=False)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def pause_tag(self) -> str:
        return _sha(RECIPE_VERSION, build.pause_binary(log=self.log).read_bytes())[:20]

    def pause(self) -> str:
        return self._ensure("coursehub/pause", self.pause_tag(), self._make_pause)

    def _make_pause(self, local: str) -> None:
        binary = build.pause_binary(log=self.log)
        ctr = self._buildah("from", "scratch").stdout.strip()
        self._buildah("copy", "--chmod", "0755", ctr, str(binary), "/pause")
        # 65535: the pause container needs no user of its own (as upstream's image).
        self._buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", ctr)
        self._buildah("commit", "--rm", ctr, local)

    def course_tag(self, name: str) -> str:
        return _sha(RECIPE_VERSION, self.base_tag(), _tree_hash(COURSES_DIR / name))[:20]

    def course(self, name: str) -> str:
        """`examples/courses-src/<name>` (a Dockerfile taking BASE_IMAGE) built on the base."""
        context = COURSES_DIR / name
        if not (context / "Dockerfile").exists():
            raise FileNotFoundError(f"{context / 'Dockerfile'} is missing: a course repository needs one")
        base = self.base_local()

        def make(local: str) -> None:
            self._buildah(
                "bud",
                "--runtime",
                "runc",
                # The host's network: no CNI bridge or iptables rules for a build step.
                "--network",
                "host",
                "--pull-never",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "-t",
                local,
                str(context),
            )

        return self._ensure(f"coursehub/course-{name}", self.course_tag(name), make)

    # -- all of them ----------------------------------------------------------
    def course_names(self) -> list[str]:
        return sorted(d.name for d in COURSES_DIR.iterdir() if (d / "Dockerfile").exists())

    def real_node_images(self) -> dict[str, str]:
        """Every image a real-node cluster runs besides pause and base: what `up --real-nodes`
        records in images.json (keys: operator, hub, proxy, network_tools, course-<name>)."""
        refs = {
            "operator": self.operator(),
            "hub": self.hub(),
            "proxy": self.proxy(),
            "network_tools": self.network_tools(),
        }
        for name in self.course_names():
            refs[f"course-{name}"] = self.course(name)
        return refs

    # -- looking inside ----------------------------------------------------
    def run_in(self, ref: str, *command: str, caps: tuple[str, ...] = ()) -> str:
        """stdout of `command` run in the image `ref` (a reference this builder returned), as the
        image's user, in a network namespace of its own with no interfaces but loopback (a
        check of its content, not a service); `caps`: capabilities to add (CAP_NET_ADMIN)."""
        repo_tag = ref.split("/", 1)[1]
        repo, tag = repo_tag.rsplit(":", 1)
        name = self._local_name(repo, tag)
        if not self._in_storage(repo, tag):
            self._buildah("pull", "--tls-verify=false", f"docker://{ref}")
            self._buildah("tag", ref, name)
        ctr = self._buildah("from", "--pull-never", name).stdout.strip()
        try:
            extra = [a for c in caps for a in ("--cap-add", c)]
            return self._buildah(
                "run", "--runtime", "runc", "--network", "none", *extra, ctr, "--", *command
            ).stdout
        finally:
            self._buildah("rm", ctr, check=False)

    # -- build-time network ------------------------------------------------
    def _tls_volumes(self) -> tuple[str, ...]:
        """pip, uv and npm trust the system CA store (which has this machine's CAs: its egress
        inspects TLS), through config files mounted for RUN steps only, never in a layer."""
        d = images_root() / "build-config"
        d.mkdir(parents=True, exist_ok=True)
        files = {
            "pip.conf": "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n",
            "uv.toml": "native-tls = true\n",
            "npmrc": "cafile=/etc/ssl/certs/ca-certificates.crt\n",
        }
        for name, text in files.items():
            if not (d / name).exists() or (d / name).read_text() != text:
                (d / name).write_text(text)
        return (
            f"{d / 'pip.conf'}:/etc/pip.conf:ro",
            f"{d / 'uv.toml'}:/etc/uv/uv.toml:ro",
            f"{d / 'npmrc'}:/etc/npmrc:ro",
        )

    # -- build-only images: what public bases (golang, uv) give a Dockerfile elsewhere ---------
    def go_tag(self) -> str:
        goroot = _goroot()
        return _sha(RECIPE_VERSION, self.base_tag(), *GO_IMAGE_PACKAGES, (goroot / "VERSION").read_text())[
            :20
        ]

    def go_local(self) -> str:
        """The base plus this machine's Go toolchain and a static C toolchain (golang:*-bookworm's role)."""
        goroot = _goroot()
        return self._ensure_local(
            "coursehub/build-go",
            self.go_tag(),
            lambda local: self._derive(
                local,
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
                f" --no-install-recommends {' '.join(GO_IMAGE_PACKAGES)} >/dev/null"
                " && rm -rf /var/lib/apt/lists/*",
                copies=((str(goroot), "/usr/local/go"),),
                env=(
                    "GOPATH=/go",
                    "PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ),
            ),
        )

    def uv_tag(self) -> str:
        return _sha(RECIPE_VERSION, _uv_binary().read_bytes())[:20]

    def uv_local(self) -> str:
        """An image holding only /uv, this machine's uv (ghcr.io/astral-sh/uv's layout)."""

        def make(local: str) -> None:
            ctr = self._buildah("from", "scratch").stdout.strip()
            self._buildah("copy", "--chmod", "0755", ctr, str(_uv_binary()), "/uv")
            self._buildah("commit", "--rm", ctr, local)

        return self._ensure_local("coursehub/build-uv", self.uv_tag(), make)

    # -- course builds (issue 14): what build Jobs run ---------------------
    BUILDAH_PACKAGES = ("buildah", "git", "openssh-client")

    def buildah_tag(self) -> str:
        return _sha(RECIPE_VERSION, self.base_tag(), *self.BUILDAH_PACKAGES)[:20]

    def buildah(self) -> str:
        """`coursehub/buildah`: the base plus Debian's buildah, git and ssh; build Jobs run it
        (operator/coursehub/desired/build.py: vfs storage, chroot isolation, docs/builds.md)."""
        return self._ensure(
            "coursehub/buildah",
            self.buildah_tag(),
            lambda local: self._derive(
                local,
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
                f" --no-install-recommends {' '.join(self.BUILDAH_PACKAGES)} >/dev/null"
                " && rm -rf /var/lib/apt/lists/*",
                env=("STORAGE_DRIVER=vfs", "BUILDAH_ISOLATION=chroot"),
            ),
        )

    # -- the SSO gate (issue 15): oauth2-proxy from the Go module proxy ----------
    def oauth2_proxy_tag(self) -> str:
        binary = build.build(oauth2_proxy_component(), log=self.log).path("oauth2-proxy")
        return _sha(RECIPE_VERSION, self.base_tag(), binary.read_bytes())[:20]

    def oauth2_proxy(self) -> str:
        """`coursehub/oauth2-proxy`: the base plus oauth2-proxy at OAUTH2_PROXY_VERSION, run as
        65532 like upstream's image (the gate's Deployment, desired/gateway.py)."""

        def make(local: str) -> None:
            binary = build.build(oauth2_proxy_component(), log=self.log).path("oauth2-proxy")
            ctr = self._buildah("from", "--pull-never", self.base_local()).stdout.strip()
            try:
                self._buildah("copy", "--chmod", "0755", ctr, str(binary), "/usr/local/bin/oauth2-proxy")
                self._buildah(
                    "config",
                    "--entrypoint",
                    '["/usr/local/bin/oauth2-proxy"]',
                    "--cmd",
                    "",
                    "--user",
                    "65532:65532",
                    ctr,
                )
                self._buildah("commit", "--rm", ctr, local)
            except BaseException:
                self._buildah("rm", ctr, check=False)
                raise

        return self._ensure("coursehub/oauth2-proxy", self.oauth2_proxy_tag(), make)

    # -- Python 3.12 and the z2jh hub ---------------------------------------
    def python312_tag(self) -> str:
        prefix = _python312_prefix()
        # libpython is a file of its own in a shared build (--enable-shared), absent otherwise.
        binaries = [
            (prefix / f).read_bytes()
            for f in ("bin/python3.12", "lib/libpython3.12.so.1.0")
            if (prefix / f).exists()
        ]
        return _sha(RECIPE_VERSION, self.base_tag(), str(prefix), *PYTHON312_LIBS, *binaries)[:20]

    def python312_local(self) -> str:
        """The base plus this machine's CPython 3.12 under /usr/local (python:3.12-slim's layout).

        Debian bookworm has 3.11 and trixie 3.13; the z2jh hub runs 3.12. The machine's 3.12
        (the one `make test-hub` tests the hub module on) was built on this same Debian, so the
        libraries it links are bookworm's: it is copied without its test suite, Tk and IDLE, those
        libraries are installed from Debian, and the build fails if any is missing (ldd). A shared
        (--enable-shared, as pyenv's here) or a static build serves alike."""
        prefix = _python312_prefix()

        def make(local: str) -> None:
            work = images_root() / "work-python312"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            tarball = work / "python.tar"
            excludes = [
                "./lib/python3.12/test",
                "./lib/python3.12/idlelib",
                "./lib/python3.12/tkinter",
                "./lib/python3.12/turtledemo",
                "./lib/python3.12/lib-dynload/_tkinter*",
                "./lib/python3.12/config-3.12-*/libpython3.12.a",
                # .pth files are this machine's own set-up, not Python's.
                "./lib/python3.12/site-packages/*.pth",
                "./bin/idle*",
                "./bin/2to3*",
                "./bin/*-gdb.py",
            ]
            subprocess.run(
                ["tar", "-C", str(prefix), "-cf", str(tarball), *(f"--exclude={e}" for e in excludes), "."],
                check=True,
            )
            try:
                self._derive(
                    local,
                    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
                    f" --no-install-recommends {' '.join(PYTHON312_LIBS)} >/dev/null"
                    " && rm -rf /var/lib/apt/lists/* && ldconfig"
                    # Scripts whose #! names the machine's prefix.
                    " && for f in /usr/local/bin/*; do"
                    f'   if head -c 64 "$f" | grep -q "^#!{prefix}"; then'
                    '     sed -i "1s|^#!.*|#!/usr/local/bin/python3.12|" "$f"; fi; done'
                    " && missing=$(for f in /usr/local/bin/python3.12"
                    "   /usr/local/lib/python3.12/lib-dynload/*.so;"
                    '   do ldd "$f" | grep "not found" | sed "s|^|$f: |"; done)'
                    ' && if [ -n "$missing" ]; then echo "$missing" >&2; exit 1; fi'
                    " && python3.12 -c"
                    " 'import ssl, sqlite3, ctypes, bz2, lzma, zlib, readline, uuid, decimal'"
                    " && pip3.12 --version >/dev/null",
                    adds=((str(tarball), "/usr/local"),),
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)

        return self._ensure_local("coursehub/build-python312", self.python312_tag(), make)

    def hub_tag(self) -> str:
        return _sha(RECIPE_VERSION, self.python312_tag(), _tree_hash(IMAGES_DIR / "hub"))[:20]

    def hub(self) -> str:
        """z2jh 4.4.0's hub image (images/hub: upstream's Dockerfile, its pinned requirements) on
        the base with CPython 3.12."""

        def make(local: str) -> None:
            py = self.python312_local()
            self._bud(
                IMAGES_DIR / "hub",
                local,
                {"BUILD_IMAGE": py, "PYTHON_IMAGE": py},
                volumes=self._tls_volumes(),
            )

        return self._ensure("coursehub/k8s-hub", self.hub_tag(), make)

    # -- configurable-http-proxy (z2jh's proxy.chp) ------------------------------
    def node_tag(self) -> str:
        cas = [p for f in _host_ca_files() for p in (f.name, f.read_bytes())]
        return _sha(RECIPE_VERSION, NODE_SUITE, *NODE_PACKAGES, *cas)[:20]

    def node_local(self) -> str:
        """Debian trixie with its Node.js 20 (configurable-http-proxy 5.2 needs Node >= 20; bookworm
        has 18), tini and the machine's CAs: the proxy's runtime base."""
        tag = self.node_tag()
        return self._ensure_local(
            "coursehub/build-node", tag, lambda local: self._mmdebstrap(local, NODE_SUITE, NODE_PACKAGES, tag)
        )

    def npm_local(self) -> str:
        """node_local() plus Debian's npm: the proxy's build stage."""
        return self._ensure_local(
            "coursehub/build-npm",
            _sha(RECIPE_VERSION, self.node_tag(), "npm")[:20],
            lambda local: self._derive(
                local,
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq"
                " --no-install-recommends npm >/dev/null && rm -rf /var/lib/apt/lists/*",
                from_image=self.node_local(),
            ),
        )

    def proxy_tag(self) -> str:
        return _sha(RECIPE_VERSION, self.node_tag(), _tree_hash(IMAGES_DIR / "configurable-http-proxy"))[:20]

    def proxy(self) -> str:
        """configurable-http-proxy 5.2.0 (images/configurable-http-proxy: npm ci of a locked
        package.json), run by z2jh's chart as `configurable-http-proxy --ip= ...` (user 65534)."""

        def make(local: str) -> None:
            self._bud(
                IMAGES_DIR / "configurable-http-proxy",
                local,
                {"BUILD_IMAGE": self.npm_local(), "NODE_IMAGE": self.node_local()},
                volumes=self._tls_volumes(),
            )

        return self._ensure("coursehub/configurable-http-proxy", self.proxy_tag(), make)

    # -- z2jh's network-tools (the block-cloud-metadata init container) ----------
    def network_tools_tag(self) -> str:
        return _sha(RECIPE_VERSION, self.base_tag(), _tree_hash(IMAGES_DIR / "network-tools"))[:20]

    def network_tools(self) -> str:
        """iptables on the Debian base (images/network-tools), as z2jh's k8s-network-tools."""

        def make(local: str) -> None:
            self._bud(IMAGES_DIR / "network-tools", local, {"BASE_IMAGE": self.base_local()})

        return self._ensure("coursehub/k8s-network-tools", self.network_tools_tag(), make)

    # -- the operator: the project's Dockerfile ----------------------------
    def operator_tag(self) -> str:
        files = [
            p for f in _operator_context_files() for p in (str(f.relative_to(REPO_ROOT)), f.read_bytes())
        ]
        return _sha(RECIPE_VERSION, self.base_tag(), self.go_tag(), self.uv_tag(), *files)[:20]

    def operator(self) -> str:
        """The top-level Dockerfile (the operator's wheel, installed by `uv sync --no-editable`,
        helm and the puller's no-op) with this machine's images as its base-image arguments."""

        def make(local: str) -> None:
            gomodcache, gocache = _go_env("GOMODCACHE"), _go_env("GOCACHE")
            Path(gomodcache).mkdir(parents=True, exist_ok=True)
            Path(gocache).mkdir(parents=True, exist_ok=True)
            self._bud(
                REPO_ROOT,
                local,
                dict(
                    zip(
                        OPERATOR_BASE_ARGS, (self.base_local(), self.go_local(), self.uv_local()), strict=True
                    )
                ),
                bare_stages=(self.uv_local(),),
                # The machine's Go caches: helm compiles in seconds when the dev tooling built it.
                volumes=(
                    *self._tls_volumes(),
                    f"{gomodcache}:/go/pkg/mod",
                    f"{gocache}:/root/.cache/go-build",
                ),
            )

        return self._ensure("coursehub/operator", self.operator_tag(), make)


OAUTH2_PROXY_VERSION = "v7.15.6"


def oauth2_proxy_component() -> build.Component:
    """oauth2-proxy's main package is its module root; its version is set by ldflags."""
    v = OAUTH2_PROXY_VERSION
    module = "github.com/oauth2-proxy/oauth2-proxy/v7"
    return build.Component(
        name="oauth2-proxy",
        version=v,
        binaries=("oauth2-proxy",),
        go_mod=lambda: f"module coursehub.dev/devcluster/oauth2-proxy\n\ngo 1.24.0\n\nrequire {module} {v}\n",
        packages=(module,),
        ldflags=(f"-X {module}/pkg/version.VERSION={v}",),
    )


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"{name!r} not found; run scripts/install-system-deps.sh (Debian package {package!r})"
        )
    return path


GO_IMAGE_PACKAGES = ("gcc", "libc6-dev", "binutils")
NODE_SUITE = "trixie"
NODE_PACKAGES = ("ca-certificates", "nodejs", "tini")
# The top-level Dockerfile's base-image arguments (tests/unit/test_dockerfile.py holds them equal).
OPERATOR_BASE_ARGS = ("PYTHON_IMAGE", "GO_IMAGE", "UV_IMAGE")


def _go_env(var: str) -> str:
    return subprocess.run(
        [_tool("go", "golang (scripts/install-system-deps.sh)"), "env", var],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _goroot() -> Path:
    return Path(_go_env("GOROOT"))


def _uv_binary() -> Path:
    """The uv executable itself (pyenv puts a shell shim first on PATH)."""
    found = Path(_tool("uv", "uv (scripts/bootstrap-uv.sh)")).resolve()
    if found.read_bytes()[:4] == b"\x7fELF":
        return found
    real = subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True, check=True).stdout.strip()
    return Path(real).resolve()


def _operator_context_files() -> list[Path]:
    """What the top-level Dockerfile's build context holds: the `!` lines of .dockerignore, less
    byte-code, plus the Dockerfile itself."""
    out = [REPO_ROOT / "Dockerfile", REPO_ROOT / ".dockerignore"]
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines():
        if not line.startswith("!"):
            continue
        path = REPO_ROOT / line[1:].rstrip("/")
        if path.is_file():
            out.append(path)
        else:
            out += sorted(
                f
                for f in path.rglob("*")
                if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"
            )
    return out


# The shared libraries CPython 3.12's binary and extension modules link (ldd), from Debian.
PYTHON312_LIBS = (
    "libssl3",
    "libffi8",
    "libsqlite3-0",
    "libbz2-1.0",
    "liblzma5",
    "zlib1g",
    "libncursesw6",
    "libreadline8",
    "libuuid1",
    "libexpat1",
    "libcrypt1",
    "libnsl2",
    "libtirpc3",
)


def _python312_prefix() -> Path:
    """The prefix of the machine's CPython 3.12 (scripts/find-python.sh: the hub venv's too)."""
    res = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "find-python.sh"), "3.12"], capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip())
    out = subprocess.run(
        [res.stdout.strip(), "-c", "import sys; print(sys.base_prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())
