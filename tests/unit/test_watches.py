"""What the operator watches: only what the chart's RBAC lets it list and watch."""

from __future__ import annotations

import kopf

from coursehub import handlers
from coursehub.desired.hub_round import secret_versions


def watched(watch_namespaces: bool) -> set[tuple[str, str]]:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, watch_namespaces=watch_namespaces)
    return {(s.group or "", s.any_name or "") for s in registry._watching.get_all_selectors()}


def test_no_watch_on_secrets():
    # The chart grants `get` on Secrets only: a watch would be refused (403) in production.
    # Rotation is noticed by the hub reconciler's poll of the Secrets it references instead.
    for namespaces in (False, True):
        assert not [w for w in watched(namespaces) if w[1] == "secrets"]
    assert watched(True) == {
        ("coursehub.dev", "courseimages"),
        ("coursehub.dev", "jupyterhubdeployments"),
        ("", "namespaces"),
        # the pre-pullers: a finished rollout wakes its hub (the chart grants watch on them)
        ("apps", "daemonsets"),
    }


def secret(rv: str) -> dict:
    return {"metadata": {"name": "db", "uid": "u1", "resourceVersion": rv}, "data": {"k": "dg=="}}


def test_a_poll_wakes_a_hub_only_on_another_resource_version():
    seen = secret_versions({"db": secret("7"), "pw": None})
    assert seen == {"db": "7", "pw": None}  # versions only: no content is kept
    assert secret_versions({"db": secret("7"), "pw": None}) == seen  # at rest: no round
    assert secret_versions({"db": secret("8"), "pw": None}) != seen  # rotated
    assert secret_versions({"db": secret("7"), "pw": secret("1")}) != seen  # appeared
    assert secret_versions({"db": None, "pw": None}) != seen  # deleted


def test_the_index_keeps_a_copy_of_a_watched_body_without_managed_fields():
    raw = {
        "apiVersion": "coursehub.dev/v1alpha1",
        "kind": "CourseImage",
        "metadata": {"name": "c1", "finalizers": ["a"], "managedFields": [{"manager": "kubectl"}]},
        "spec": {"course": "c1", "tags": [{"k": "v"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    plain = handlers._plain(kopf.Body(raw))
    assert plain == {**raw, "metadata": {"name": "c1", "finalizers": ["a"]}}
    # a copy: kopf's body is a live view that later events change
    raw["metadata"]["finalizers"].append("b")
    raw["spec"]["tags"][0]["k"] = "changed"
    raw["status"]["conditions"].clear()
    assert plain["metadata"]["finalizers"] == ["a"]
    assert plain["spec"]["tags"] == [{"k": "v"}]
    assert plain["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert "managedFields" in raw["metadata"]
