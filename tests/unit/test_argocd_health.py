"""The Argo CD health checks (Lua) against status fixtures, in a real Lua 5.1 runtime.

Argo CD runs health scripts with gopher-lua (Lua 5.1 semantics): the live object is the
global `obj`, the script returns a table {status, message}. lupa's lua51 module is the
reference Lua 5.1, so a script that leans on a newer Lua fails here as it would there.

Fixtures: tests/fixtures/status/<kind>-<case>.yaml, each `{expect: {status,
messageContains}, object: <the live object>}`. Objects captured from e2e runs go there too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

lupa = pytest.importorskip("lupa.lua51")

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "CourseImage": REPO / "charts/coursehub-operator/argocd/courseimage-health.lua",
    "JupyterHubDeployment": REPO / "charts/coursehub-operator/argocd/jupyterhubdeployment-health.lua",
}
FIXTURES = sorted((REPO / "tests/fixtures/status").glob("*.yaml"))
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(lua, value):
    """A JSON-like Python value as Lua values: dicts and lists become tables (lists 1-based)."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(kind: str, obj: dict) -> dict:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(SCRIPTS[kind].read_text())
    return {"status": result["status"], "message": result["message"]}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_fixtures_exist_for_both_kinds():
    kinds = {_load(p)["object"]["kind"] for p in FIXTURES}
    assert kinds == set(SCRIPTS)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_health_of_fixture(path: Path):
    doc = _load(path)
    obj, expect = doc["object"], doc["expect"]
    got = health(obj["kind"], obj)
    assert got["status"] in ARGO_STATUSES
    assert got["status"] == expect["status"], got["message"]
    assert expect.get("messageContains", "") in got["message"]


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_ready_true_for_an_older_generation_is_not_healthy(kind):
    """Right after an edit `kubectl wait --for=condition=Ready` and Argo CD must both wait."""
    obj = {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "generation": 2},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "ok",
                    "observedGeneration": 1,
                }
            ],
        },
    }
    assert health(kind, obj)["status"] == "Progressing"
    obj["metadata"]["generation"] = 1
    assert health(kind, obj)["status"] == "Healthy"


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
@pytest.mark.parametrize(
    "status", [None, {}, {"observedGeneration": 1}, {"observedGeneration": 1, "conditions": []}]
)
def test_incomplete_status_is_progressing(kind, status):
    obj = {"apiVersion": "coursehub.dev/v1alpha1", "kind": kind, "metadata": {"name": "x", "generation": 1}}
    if status is not None:
        obj["status"] = status
    assert health(kind, obj)["status"] == "Progressing"


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_unknown_ready_is_progressing_and_unknown_reason_false_is_degraded(kind):
    def with_ready(status, reason):
        return {
            "apiVersion": "coursehub.dev/v1alpha1",
            "kind": kind,
            "metadata": {"name": "x", "generation": 1},
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": status,
                        "reason": reason,
                        "message": "m",
                        "observedGeneration": 1,
                    }
                ],
            },
        }

    assert health(kind, with_ready("Unknown", "SomethingNew"))["status"] == "Progressing"
    assert health(kind, with_ready("False", "SomethingNew"))["status"] == "Degraded"
    assert health(kind, with_ready("False", "Pending"))["status"] == "Progressing"
    assert health(kind, with_ready("False", "Progressing"))["status"] == "Progressing"


def test_course_transient_reasons_are_progressing():
    for reason in ("Resolving", "Pulling", "NotPublished", "WaitingForPull", "NotResolved"):
        obj = {
            "apiVersion": "coursehub.dev/v1alpha1",
            "kind": "CourseImage",
            "metadata": {"name": "x", "generation": 1},
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": reason,
                        "message": "m",
                        "observedGeneration": 1,
                    }
                ],
            },
        }
        assert health("CourseImage", obj)["status"] == "Progressing", reason


def test_install_docs_carry_the_scripts_verbatim():
    """docs/install.md shows the argocd-cm snippet; it must be the tested Lua, not a copy that drifted."""
    doc = (REPO / "docs" / "install.md").read_text()
    for kind, path in SCRIPTS.items():
        indented = "".join(("    " + ln) if ln.strip() else ln for ln in path.read_text().splitlines(True))
        assert f"  resource.customizations.health.coursehub.dev_{kind}: |\n{indented}" in doc, kind
