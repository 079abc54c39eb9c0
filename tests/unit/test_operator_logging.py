"""`COURSEHUB_JSON_LOGS=true` gives kopf's JSON log lines; otherwise kopf's text format.

Run in a child process: logging setup is process-global.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import logging, sys
from coursehub.operator_main import configure_logging
configure_logging(sys.argv[1] == "json")
logging.getLogger("coursehub.reconcile").warning("hub %s is degraded", "h1")
logging.getLogger("pyhelm3").warning("release not found")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("coursehub.reconcile").exception("round failed")
"""


def _run(mode: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stderr


def test_json_logs_are_one_object_per_line():
    lines = _run("json").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["message"] for r in records] == ["hub h1 is degraded", "round failed"]
    first, second = records
    assert first["severity"] == "warn" and first["logger"] == "coursehub.reconcile"
    assert "timestamp" in first
    # The traceback stays inside the one JSON line instead of spilling raw lines.
    assert second["severity"] == "error" and "ZeroDivisionError" in second["exc_info"]


def test_text_logs_keep_the_traceback():
    out = _run("text")
    assert "[WARNING ] hub h1 is degraded" in out
    assert "release not found" not in out
    assert "Traceback (most recent call last)" in out and "ZeroDivisionError" in out
