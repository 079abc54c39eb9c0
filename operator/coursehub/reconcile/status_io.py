"""Write one object's status subresource when it differs, and post the Events its change deserves."""

from __future__ import annotations

from .. import conditions
from ..api.common import API_VERSION
from ..conditions import Cond
from ..kube import Kube, NotFound


async def write_status(
    kube: Kube,
    raw: dict,
    fields: dict,
    conds: list[Cond],
    generation: int | None,
    *,
    first_ready_event: bool = True,
) -> dict | None:
    """Apply `fields` plus the merged `conds` as the status of `raw`'s object if anything changed.

    Returns the status now stored (None when nothing was written or the object is gone).
    `first_ready_event=False`: no Event for a first Ready=True (conditions.events_for).
    """
    old = raw.get("status") or {}
    merged = conditions.merge(old.get("conditions"), conds, generation)
    new_status = {**fields, "conditions": merged}
    if same_status(old, new_status):
        return None
    body = {
        "apiVersion": API_VERSION,
        "kind": raw["kind"],
        "metadata": {"name": raw["metadata"]["name"], "namespace": raw["metadata"]["namespace"]},
        "status": new_status,
    }
    try:
        updated = await kube.apply(body, subresource="status")
    except NotFound:
        return None
    for type_, reason, message in conditions.events_for(
        old.get("conditions"), merged, first_ready=first_ready_event
    ):
        await kube.event(raw, reason=reason, message=message, type_=type_)
    return updated.get("status", new_status)


def same_status(old: dict, new: dict) -> bool:
    strip = {k: v for k, v in old.items() if k != "conditions"}
    new_strip = {k: v for k, v in new.items() if k != "conditions"}
    return strip == new_strip and conditions.same_ignoring_time(old.get("conditions"), new.get("conditions"))
