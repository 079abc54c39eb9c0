"""The suite's own layout: pytest imports test modules by basename (rootdir/`tests` on the path),
so two files with one name in different folders stop the whole run at collection."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique_across_folders():
    names = Counter(p.name for p in TESTS.rglob("test_*.py") if ".venv" not in p.parts)
    assert [n for n, k in names.items() if k > 1] == []
