"""Where the checkout keeps what the dev tooling needs.

coursehub_dev is a uv workspace member that is only ever installed editable from this
checkout (never into the operator's image), so paths relative to its own file are the
checkout's. The operator package knows no such paths: its commands take them as arguments.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = REPO_ROOT / "crds"  # `coursehub crds --write crds` writes them here
# The z2jh chart as published, kept in the checkout byte for byte (charts/z2jh-4.4.0/README.md;
# a unit test compares it with ../shared/z2jh-4.4.0 where that exists), so a clone anywhere has
# it: the hub chart every test, benchmark and demo installs (spec.chart.path takes the .tgz as
# it is). COURSEHUB_Z2JH_CHART names another copy of the same file.
Z2JH_DIR = REPO_ROOT / "charts" / "z2jh-4.4.0"
Z2JH_CHART = Path(os.environ.get("COURSEHUB_Z2JH_CHART") or Z2JH_DIR / "jupyterhub-4.4.0.tgz").resolve()
DEMO_DIR = REPO_ROOT / "examples" / "demo"


def crd_files() -> list[Path]:
    return sorted(CRD_DIR.glob("*.yaml"))


def default_state_dir() -> Path:
    """Where `coursehub-dev up` keeps the cluster's data ($COURSEHUB_DEVCLUSTER_DIR overrides)."""
    return Path(os.environ.get("COURSEHUB_DEVCLUSTER_DIR") or REPO_ROOT / ".devcluster")
