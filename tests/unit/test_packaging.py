"""What ships: the operator's wheel and the image's venv hold the operator alone.

The dev cluster, the local registry and the demo live in the dev/ workspace member
(coursehub_dev), reached only through the dev dependency group. These tests build the real
wheel with `uv build` and run the Dockerfile's `uv sync --no-dev` on a copy of exactly what the
image's build context holds, then look inside.
"""

from __future__ import annotations

import ast
import contextlib
import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from coursehub_dev.paths import REPO_ROOT

# Dev-only packages that once leaked into the runtime package (issue 13, item 4).
FORBIDDEN_IMPORTS = {"requests", "cryptography", "coursehub_dev", "pytest", "moto"}
# operator/coursehub/hub/ is shipped as file content into the hub image (hub.extraFiles /
# extraConfig) and imports the hub's packages there, not the operator's.
HUB_SIDE = "coursehub/hub/"
# kopf imports kubernetes_asyncio's ~950 generated modules (~77 MB RSS, half the operator's
# memory budget, issue 16) whenever it is installed: the operator must neither import nor
# depend on it (kube.py loads kubeconfigs itself). The hub side uses it inside the hub image.
HEAVY_DIST, HEAVY_MODULE = "kubernetes-asyncio", "kubernetes_asyncio"


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH: run `make deps` (it installs uv when missing)")
    return uv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    res = subprocess.run(
        [_uv(), "build", "--wheel", "--offline", "--out-dir", str(out), "--package", "coursehub-operator"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    (path,) = out.glob("coursehub_operator-*.whl")
    return path


def _top_level_imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _requirement_closure(requirements: list[str]) -> set[str]:
    """Normalised names of the distributions the requirements pull in (in this environment)."""

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen: set[str] = set()
    todo = [r for r in requirements if "extra ==" not in r]
    while todo:
        name = norm(re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0])
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            todo += [r for r in importlib.metadata.requires(name) or [] if "extra ==" not in r]
    return seen


def test_wheel_holds_only_the_operator_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"coursehub", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    assert "coursehub/cli.py" in names and "coursehub/operator_main.py" in names
    for n in names:
        assert "devcluster" not in n and "coursehub_dev" not in n, n
        assert not n.startswith("tests/") and "/tests/" not in n, n


def test_wheel_entry_points_are_the_operator_command_only(wheel):
    with zipfile.ZipFile(wheel) as z:
        (ep,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        text = z.read(ep).decode()
    assert "coursehub = coursehub.cli:main" in text
    assert "coursehub-dev" not in text


def test_wheel_code_imports_only_the_standard_library_and_its_declared_dependencies(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(z.read(meta)).get_all("Requires-Dist") or []
        sources = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
    allowed_dists = _requirement_closure(requires)
    module_dists = importlib.metadata.packages_distributions()
    problems = []
    for name, source in sorted(sources.items()):
        for mod in sorted(_top_level_imports(source)):
            if mod in FORBIDDEN_IMPORTS:
                problems.append(f"{name} imports {mod} (dev-only)")
                continue
            if name.startswith(HUB_SIDE) or mod == "coursehub" or mod in sys.stdlib_module_names:
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in module_dists.get(mod, [])}
            if not dists & allowed_dists:
                problems.append(f"{name} imports {mod}, which no runtime dependency provides")
    assert not problems, "\n".join(problems)


def test_wheel_neither_depends_on_nor_imports_kubernetes_asyncio(wheel):
    with zipfile.ZipFile(wheel) as z:
        (meta,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(z.read(meta)).get_all("Requires-Dist") or []
        sources = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
    assert HEAVY_DIST not in _requirement_closure(requires), (
        f"a runtime dependency pulls in {HEAVY_DIST}; kopf would import it (~77 MB): keep it in the dev group"
    )
    importers = [
        n
        for n, src in sources.items()
        if not n.startswith(HUB_SIDE) and HEAVY_MODULE in _top_level_imports(src)
    ]
    assert not importers, f"{importers} import {HEAVY_MODULE}: load kubeconfigs with coursehub.kube instead"


def test_image_venv_from_uv_sync_no_dev_holds_the_operator_alone(tmp_path):
    """The Dockerfile's python-build stage, on a copy of its build context (.dockerignore)."""
    ctx = tmp_path / "context"
    ctx.mkdir()
    for f in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO_ROOT / f, ctx / f)
    shutil.copytree(REPO_ROOT / "operator", ctx / "operator", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "VIRTUAL_ENV": "",
    }
    res = subprocess.run(
        [_uv(), "sync", "--frozen", "--no-dev", "--no-editable", "--offline", "--python", sys.executable],
        cwd=ctx,
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    (site,) = venv.glob("lib/python3*/site-packages")
    installed = {p.name for p in site.iterdir()}
    assert "coursehub" in installed
    for dev_only in ("coursehub_dev", "requests", "cryptography", "pytest", "moto", HEAVY_MODULE):
        assert dev_only not in installed, f"{dev_only} is in the image's venv"
    # Every operator module imports with the runtime dependencies alone (the hub module needs
    # the hub image's packages and is tested on them by `make test-hub`).
    check = (
        "import importlib, pkgutil, coursehub\n"
        "for m in pkgutil.walk_packages(coursehub.__path__, 'coursehub.'):\n"
        "    if not m.name.startswith('coursehub.hub.'):\n"
        "        importlib.import_module(m.name)\n"
    )
    res = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert subprocess.run([str(venv / "bin" / "coursehub"), "--help"], capture_output=True).returncode == 0
