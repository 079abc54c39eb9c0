"""Add and remove the operator's finalizers: one guarded patch each, never a resurrection."""

from __future__ import annotations

import logging

from ..kube import Kube, KubeError, NotFound, Resource

log = logging.getLogger(__name__)


async def add_finalizer(kube: Kube, res: Resource, raw: dict, finalizer: str) -> None:
    """Add `finalizer` to exactly the object version in `raw`, never create or resurrect it.

    A server-side apply would create the object when it was deleted meanwhile (an event
    handled late), so this is a merge patch guarded by uid and resourceVersion: a deleted
    object gives 404, a changed one 409; both are left to the next watch event.
    """
    meta = raw["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if finalizer in finalizers or meta.get("deletionTimestamp"):
        return
    try:
        await kube.merge_patch(
            res,
            meta["name"],
            meta["namespace"],
            {
                "metadata": {
                    "uid": meta["uid"],
                    "resourceVersion": meta["resourceVersion"],
                    "finalizers": [*finalizers, finalizer],
                }
            },
        )
    except NotFound:
        pass
    except KubeError as e:
        if e.status not in (409, 422):
            raise
        log.info(
            "%s %s/%s changed before its finalizer was added; the next event retries",
            res.kind,
            meta["namespace"],
            meta["name"],
        )


async def remove_finalizer(kube: Kube, res: Resource, raw: dict, finalizer: str) -> None:
    """Remove `finalizer` (test-then-remove: never drop someone else's on a stale list)."""
    meta = raw["metadata"]
    finalizers = meta.get("finalizers") or []
    if finalizer not in finalizers:
        return
    idx = finalizers.index(finalizer)
    try:
        await kube.json_patch(
            res,
            meta["name"],
            meta["namespace"],
            [
                {"op": "test", "path": f"/metadata/finalizers/{idx}", "value": finalizer},
                {"op": "remove", "path": f"/metadata/finalizers/{idx}"},
            ],
        )
    except NotFound:
        pass
    except KubeError as e:
        if e.status not in (409, 422):
            raise
        # The list moved: the watch event that moved it brings fresh data and a retry.
        log.info("finalizer list of %s %s/%s changed, retrying", res.kind, meta["namespace"], meta["name"])
