"""CourseImage I/O: resolve images, write statuses, hold and release the finalizer.

Decisions are made by coursehub.desired.*; this module only fetches, calls and writes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

from .. import conditions, metrics
from ..api.common import API_VERSION, now_rfc3339
from ..desired.courses import CourseRecord, selects
from ..desired.status import Resolution, course_status
from ..kube import COURSE_IMAGES, SECRETS, TRANSIENT_API_ERRORS, Kube, KubeError, NotFound
from ..settings import Settings
from ..state import Index

log = logging.getLogger(__name__)

FINALIZER = "coursehub.dev/unpublish"
API_RETRY_SECONDS = 2.0


# -- status ------------------------------------------------------------------
async def write_status(kube: Kube, index: Index, key: tuple[str, str]) -> None:
    """Compute the course's status from the index and write it only if it differs."""
    async with index.course_lock(key):
        course = index.courses.get(key)
        raw = index.raw_courses.get(key)
        if course is None or raw is None or course.deleting:
            return
        if index.hub_starting_for(key):
            return  # that hub's first round writes this status, with its publication in it
        pubs = index.publications_for(key)
        selecting = (
            ()
            if pubs
            else tuple(
                h.ref
                for h in index.hubs.values()
                if not h.deleting and selects(h, course, index.namespace_labels)
            )
        )
        fields, conds = course_status(
            course, index.resolutions.get(key), pubs, index.retention.get(key), selecting
        )
        old = raw.get("status") or {}
        merged = conditions.merge(old.get("conditions"), conds, course.generation)
        merged = [
            c for c in merged if c["type"] in {x.type for x in conds}
        ]  # drop conditions no longer computed
        new_status = {**fields, "conditions": merged}
        if _same_status(old, new_status):
            return
        body = {
            "apiVersion": API_VERSION,
            "kind": "CourseImage",
            "metadata": {"name": key[1], "namespace": key[0]},
            "status": new_status,
        }
        try:
            updated = await kube.apply(body, subresource="status")
        except NotFound:
            return
        index.raw_courses[key] = {**raw, "status": updated.get("status", new_status)}
        await _transition_events(kube, raw, old.get("conditions"), merged)


def _same_status(old: dict, new: dict) -> bool:
    strip = {k: v for k, v in old.items() if k != "conditions"}
    new_strip = {k: v for k, v in new.items() if k != "conditions"}
    return strip == new_strip and conditions.same_ignoring_time(old.get("conditions"), new.get("conditions"))


async def _transition_events(kube: Kube, raw: dict, old: list | None, new: list) -> None:
    for type_, reason, message in conditions.events_for(old, new):
        await kube.event(raw, reason=reason, message=message, type_=type_)


# -- resolution ----------------------------------------------------------------
class Resolver:
    """Resolves every CourseImage's spec.image: on change, and again every interval."""

    def __init__(self, kube: Kube, index: Index, settings: Settings):
        self.kube = kube
        self.index = index
        self.settings = settings
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.queued: set[tuple[str, str]] = set()
        self.calls = 0

    def schedule(self, key: tuple[str, str]) -> None:
        if key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    async def run(self) -> None:
        workers = [asyncio.create_task(self._worker()) for _ in range(self.settings.resolve_concurrency)]
        try:
            while True:
                await asyncio.sleep(self.settings.resolve_interval)
                for key in list(self.index.courses):
                    self.schedule(key)
        finally:
            for w in workers:
                w.cancel()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            try:
                await self.resolve_one(key)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_API_ERRORS as e:
                # The API server is away (restart, outage): say so in one line and write the
                # status again soon, not only at the next resolve interval.
                log.warning(
                    "resolving %s/%s: the Kubernetes API failed (%s: %s), retrying", *key, type(e).__name__, e
                )
                metrics.RECONCILE_ERRORS.labels(kind="CourseImage", reason=type(e).__name__).inc()
                asyncio.get_running_loop().call_later(API_RETRY_SECONDS, self.schedule, key)
            except Exception:  # never let one course stop the others
                log.exception("resolving %s/%s failed unexpectedly", *key)
                metrics.RECONCILE_ERRORS.labels(kind="CourseImage", reason="Unexpected").inc()

    async def resolve_one(self, key: tuple[str, str]) -> None:
        from ..registry import ResolveError, resolve_image
        from ..registry.reference import parse_ecr_host, parse_reference

        course = self.index.courses.get(key)
        if course is None or course.deleting:
            return
        started = time.monotonic()
        ref = course.spec.image
        registry_kind = "ecr" if parse_ecr_host(parse_reference(ref).registry) else "oci"
        try:
            docker_config = await self._docker_config(course)
            self.calls += 1
            resolved = await resolve_image(
                ref,
                docker_config=docker_config,
                ecr_endpoint_url=self.settings.aws_endpoint_url,
                insecure_registries=self.settings.insecure_registries or None,
            )
            resolution = Resolution(
                course.generation,
                True,
                "Resolved",
                "",
                resolved.digest,
                resolved.pinned,
                self._resolved_at(key, resolved.pinned),
            )
            metrics.REGISTRY_CALLS.labels(registry=registry_kind, result="ok").inc()
        except ResolveError as e:
            resolution = Resolution(course.generation, False, e.reason, e.message)
            metrics.REGISTRY_CALLS.labels(registry=registry_kind, result=e.reason).inc()
        except _SecretProblem as e:
            resolution = Resolution(course.generation, False, "RegistryUnauthorized", str(e))
        metrics.RECONCILE_SECONDS.labels(kind="CourseImage").observe(time.monotonic() - started)
        metrics.RECONCILES.labels(
            kind="CourseImage", result="ok" if resolution.ok else resolution.reason
        ).inc()
        current = self.index.courses.get(key)
        if current is None or current.generation != course.generation:
            return  # the spec moved on while we resolved; the newer generation is queued
        self.index.resolutions[key] = resolution
        if resolution.ok and resolution.pinned != current.resolved_image:
            if current.resolved_image:
                raw = self.index.raw_courses.get(key)
                if raw:
                    await self.kube.event(
                        raw,
                        reason="DigestChanged",
                        message=f"{ref} moved from {current.resolved_image.split('@')[1]} "
                        f"to {resolution.digest}",
                    )
            self.index.courses[key] = _replace(current, resolved_image=resolution.pinned)
            self.index.wake_hubs_for_namespace(key[0])
        await write_status(self.kube, self.index, key)

    def _resolved_at(self, key: tuple[str, str], pinned: str) -> str:
        """When this digest was first resolved: an unchanged digest keeps its time, so a periodic
        re-resolve that finds nothing new writes nothing (also after a restart, from status)."""
        prev = self.index.resolutions.get(key)
        if prev is not None and prev.ok and prev.pinned == pinned and prev.at:
            return prev.at
        status = (self.index.raw_courses.get(key) or {}).get("status") or {}
        if status.get("resolvedImage") == pinned and status.get("resolvedAt"):
            return status["resolvedAt"]
        return now_rfc3339()

    async def _docker_config(self, course: CourseRecord) -> dict | None:
        ref = course.spec.image_pull_secret_ref
        if ref is None:
            return None
        try:
            secret = await self.kube.get(SECRETS, ref.name, course.namespace)
        except NotFound:
            raise _SecretProblem(
                f"spec.imagePullSecretRef: Secret {ref.name} not found in {course.namespace}"
            )
        raw = (secret.get("data") or {}).get(".dockerconfigjson")
        if not raw:
            raise _SecretProblem(
                f"spec.imagePullSecretRef: Secret {ref.name} has no key .dockerconfigjson "
                f"(type kubernetes.io/dockerconfigjson)"
            )
        try:
            return json.loads(base64.b64decode(raw))
        except ValueError:
            raise _SecretProblem(
                f"spec.imagePullSecretRef: Secret {ref.name} key .dockerconfigjson is not JSON"
            )


class _SecretProblem(Exception):
    pass


def _replace(course: CourseRecord, **changes) -> CourseRecord:
    from dataclasses import replace

    return replace(course, **changes)


# -- finalizer -----------------------------------------------------------------
async def ensure_finalizer(kube: Kube, raw: dict) -> None:
    await add_finalizer(kube, COURSE_IMAGES, raw, FINALIZER)


async def add_finalizer(kube: Kube, res, raw: dict, finalizer: str) -> None:
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


async def release_finalizer(kube: Kube, raw: dict) -> None:
    finalizers = raw["metadata"].get("finalizers") or []
    if FINALIZER not in finalizers:
        return
    idx = finalizers.index(FINALIZER)
    try:
        # test-then-remove: never drop someone else's finalizer on a stale index
        await kube.json_patch(
            COURSE_IMAGES,
            raw["metadata"]["name"],
            raw["metadata"]["namespace"],
            [
                {"op": "test", "path": f"/metadata/finalizers/{idx}", "value": FINALIZER},
                {"op": "remove", "path": f"/metadata/finalizers/{idx}"},
            ],
        )
    except NotFound:
        pass
    except KubeError as e:
        if e.status in (409, 422):  # the list moved; the next event retries with fresh data
            log.info(
                "finalizer list of %s/%s changed, retrying",
                raw["metadata"]["namespace"],
                raw["metadata"]["name"],
            )
            return
        raise


async def finish_deletion(kube: Kube, index: Index, key: tuple[str, str], raw: dict | None) -> None:
    """Unpublish from every hub, then let the object go."""
    index.wake_hubs_for_namespace(key[0])
    while index.publications.get(key):
        await asyncio.sleep(0.2)  # hub reconcilers drop it from their allowlists and pullers
    raw = index.raw_courses.get(key) or raw  # the freshest finalizer list (a retry may follow events)
    if raw is not None:
        await release_finalizer(kube, raw)
