"""The one writer of CourseImage status, and the course finalizer.

The resolver, the hub rounds and the ECR retention loop only record their results in the
index (state.Index) and mark the course; this writer computes the status from all of them
(desired.status.course_status) and writes it once, only when it differs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import metrics
from ..desired.build import build_status, built_condition, with_build
from ..desired.courses import selects
from ..desired.hub_round import publication_current, published_pulling
from ..desired.status import course_status
from ..kube import COURSE_IMAGES, TRANSIENT_API_ERRORS, Kube
from ..state import Index, Key
from . import status_io
from .finalizers import add_finalizer, remove_finalizer

log = logging.getLogger(__name__)

FINALIZER = "coursehub.dev/unpublish"
API_RETRY_SECONDS = 2.0
# The API server sets the pace of a burst's status writes, not this process: 16 at once kept it at
# ~115% CPU of 2 cores (799 writes in 2.0 s, bench_scale); 48: 1.6 s.
WRITE_CONCURRENCY = 48


class CourseStatusWriter:
    def __init__(self, kube: Kube, index: Index, hold_max: float = 5.0):
        self.kube = kube
        self.index = index
        # How long a status may wait for the due round of a hub that selects the course, and for
        # a new course's first resolution.
        self.hold_max = hold_max
        self.unresolved_since: dict[Key, float] = {}  # course -> when first seen without a resolution

    async def run(self) -> None:
        idx = self.index
        limit = asyncio.Semaphore(WRITE_CONCURRENCY)

        async def one(key: Key) -> None:
            async with limit:
                try:
                    await self.write(key)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # one course never stops the others; it is retried
                    transient = isinstance(e, TRANSIENT_API_ERRORS)
                    log.warning(
                        "writing the status of CourseImage %s/%s failed (%s: %s), retrying",
                        *key,
                        type(e).__name__,
                        e,
                        exc_info=not transient,
                    )
                    metrics.RECONCILE_ERRORS.labels(kind="CourseImage", reason=type(e).__name__).inc()
                    asyncio.get_running_loop().call_later(API_RETRY_SECONDS, idx.course_changed, key)

        while True:
            await idx.status_wakeup.wait()
            idx.status_wakeup.clear()
            # A key marked again while it is written is written again in the next batch, so
            # one course never has two writes in flight.
            batch, idx.status_dirty = idx.status_dirty, set()
            await asyncio.gather(*(one(k) for k in sorted(batch)))

    async def write(self, key: Key) -> None:
        """Compute the course's status from the index and write it only if it differs."""
        idx = self.index
        course = idx.courses.get(key)
        raw = idx.raw_courses.get(key)
        if course is None or raw is None or course.deleting:
            self.unresolved_since.pop(key, None)
            return
        held = self.first_resolution_wait(key, resolved=key in idx.resolutions)
        if held:
            # The resolver marks it again when done: one write then carries the resolution and
            # the publication. A hub round that ran meanwhile reports the course "NotResolved",
            # and writing that first cost a new course in a burst a third status write.
            self._look_again(key, held)
            return
        held = idx.hub_starting_for(key)
        if held:
            # That hub's first round marks this course again, with its publication in it; if
            # the round does not come, the status is written without it after the grace period.
            self._look_again(key, held)
            return
        hubs = [h for h in idx.hubs.values() if not h.deleting and selects(h, course, idx.namespace_labels)]
        pubs_by_hub = idx.publications.get(key, {})
        # Held only for the due rounds of hubs that have not published what is known now.
        behind = [h.key for h in hubs if not publication_current(h, course, pubs_by_hub.get(h.ref))]
        held = idx.hold_for_due_hub(key, behind, self.hold_max)
        if held:
            # That round marks it again (and so does this timer, should the round fail).
            self._look_again(key, held)
            return
        if course.spec.pre_pull:
            pulling = [h.key for h in hubs if published_pulling(pubs_by_hub.get(h.ref))]
            held = idx.hold_for_burst_pull(key, pulling)
            if held:
                # A burst's pull: the round that sees it done marks the course again (its
                # publication turns PrePulled), and one write carries both.
                self._look_again(key, held)
                return
        pubs = idx.publications_for(key)
        selecting = () if pubs else tuple(h.ref for h in hubs)
        fields, conds = course_status(
            course, idx.resolutions.get(key), pubs, idx.retention.get(key), selecting
        )
        build = idx.builds.get(key)
        if build is not None and course.spec.build is not None:  # spec.build: Built and status.build
            conds = with_build(conds, built_condition(build), build, course.resolved_image is not None)
            fields["build"] = build_status(build)
        # A new course becoming Ready is its status, not news: Events are for what goes wrong
        # and for recoveries, so a burst of 1,000 courses posts no Event per course.
        stored = await status_io.write_status(
            self.kube, raw, fields, conds, course.generation, first_ready_event=False
        )
        if stored is not None and key in idx.raw_courses:
            idx.raw_courses[key] = {**idx.raw_courses[key], "status": stored}

    def _look_again(self, key: Key, seconds: float) -> None:
        """A held status: look at it again once its hold is over (whatever it waits for may
        also mark it sooner)."""
        asyncio.get_running_loop().call_later(seconds + 0.1, self.index.course_changed, key)

    def first_resolution_wait(self, key: Key, *, resolved: bool, now: float | None = None) -> float:
        """Seconds the status of a course with no resolution yet waits for its first one (0: write
        now), at most `hold_max` after the writer first saw it so; a slow registry still shows
        "Resolving" then."""
        if resolved:
            self.unresolved_since.pop(key, None)
            return 0.0
        now = time.monotonic() if now is None else now
        since = self.unresolved_since.setdefault(key, now)
        return max(0.0, self.hold_max - (now - since))


# -- finalizer -----------------------------------------------------------------
async def ensure_finalizer(kube: Kube, raw: dict) -> None:
    await add_finalizer(kube, COURSE_IMAGES, raw, FINALIZER)


async def finish_deletion(kube: Kube, index: Index, key: Key, raw: dict | None) -> None:
    """Unpublish from every hub, then let the object go."""
    index.wake_hubs_for_namespace(key[0])
    while index.publications.get(key):
        await asyncio.sleep(0.2)  # hub reconcilers drop it from their allowlists and pullers
    raw = index.raw_courses.get(key) or raw  # the freshest finalizer list (a retry may follow events)
    if raw is not None:
        await remove_finalizer(kube, COURSE_IMAGES, raw, FINALIZER)
