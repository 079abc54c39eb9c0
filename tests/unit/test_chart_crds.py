"""The chart ships crds/ itself (symlinks), never a copy that can drift; no cluster needed.

tests/e2e/test_chart.py checks the same through helm (template --include-crds, package).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chart_crds_equal_generated_crds():
    chart = REPO / "charts" / "coursehub-operator" / "crds"
    generated = {p.name: p.read_bytes() for p in sorted((REPO / "crds").glob("*.yaml"))}
    assert generated, "crds/ is empty: run `coursehub crds --write crds`"
    assert {p.name: p.read_bytes() for p in sorted(chart.glob("*.yaml"))} == generated
    # Symlinks (relative, inside the repository, so Argo CD's repo server accepts them).
    for p in chart.glob("*.yaml"):
        assert p.is_symlink() and not Path(p.readlink()).is_absolute()
        assert p.resolve().parent == (REPO / "crds").resolve()
