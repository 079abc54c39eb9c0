"""The README's "What is here" table matches the tree: every path it names exists, and every
top-level directory and every package of the operator and the dev tooling has a row."""

from __future__ import annotations

import re
import subprocess

from coursehub_dev.paths import REPO_ROOT


def _table_paths() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## What is here", 1)[1].split("\n## ", 1)[0]
    paths = []
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            paths += re.findall(r"`([^`]+)`", first_cell)
    return paths


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.splitlines() if (REPO_ROOT / p).exists()]


def test_every_path_in_the_table_exists():
    paths = _table_paths()
    assert paths, "README.md has no 'What is here' table"
    missing = [p for p in paths if not (REPO_ROOT / p).exists()]
    assert not missing, f"README.md names paths that are not in the tree: {missing}"


def test_every_top_level_directory_and_package_has_a_row():
    rows = {p.rstrip("/") for p in _table_paths()}
    tracked = _tracked()
    wanted = {p.split("/")[0] for p in tracked if "/" in p and not p.startswith(".")}
    for root in ("operator/coursehub/", "dev/"):
        wanted |= {
            "/".join(p.split("/")[: root.count("/") + 1])
            for p in tracked
            if p.startswith(root) and p.count("/") > root.count("/")
        }

    def covered(path: str) -> bool:
        # A row for a directory or for something inside it covers it; in dev/, whose one
        # package the dev/ row describes, the parent's row does.
        return (
            path in rows
            or any(r.startswith(path + "/") for r in rows)
            or (path.startswith("dev/") and "dev" in rows)
        )

    missing = sorted(p for p in wanted if not covered(p))
    assert not missing, f"README.md's 'What is here' table has no row for: {missing}"
