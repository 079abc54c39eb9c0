"""ECR lifecycle policies from the courses: compute (pure, desired/lifecycle), put only on change.

Runs beside the hubs: a course change recomputes the policies; an unchanged set of policies
makes no AWS call at all, except a drift check every resync interval.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .. import backoff, metrics
from ..desired.courses import CourseRecord
from ..desired.lifecycle import CourseUsage, build_lifecycle_policies
from ..desired.status import Retention
from ..registry.ecr_lifecycle import RepositorySettings, apply_lifecycle_policies
from ..registry.reference import parse_ecr_host, parse_reference
from ..settings import Settings
from ..state import Index
from . import courses as course_io

log = logging.getLogger(__name__)
TRANSIENT = {"Throttled", "EndpointUnreachable"}


def course_usage(course: CourseRecord) -> CourseUsage | None:
    """The course's use of an ECR repository, or None for other registries."""
    ref = parse_reference(course.spec.image)
    if parse_ecr_host(ref.registry) is None:
        return None
    digest = course.resolved_image.split("@", 1)[1] if course.resolved_image else ref.digest
    keep = course.spec.retention.keep if course.spec.retention else 5
    return CourseUsage(ref.repository, ref.registry, ref.tag, digest, course.spec.course, keep)


async def retention_loop(kube, index: Index, settings: Settings) -> None:
    if not settings.ecr_lifecycle:
        return
    applied: dict | None = None  # the desired policies last put (or found) in place
    checked_at = 0.0
    attempt = 0
    create = RepositorySettings() if settings.ecr_create_repositories else None
    while True:
        try:
            await asyncio.wait_for(index.courses_changed.wait(), timeout=settings.resync_interval)
        except TimeoutError:
            pass
        index.courses_changed.clear()
        await asyncio.sleep(settings.debounce)
        usages = {key: u for key, c in index.courses.items() if not c.deleting and (u := course_usage(c))}
        if not usages and applied is None:
            continue
        desired = build_lifecycle_policies(usages.values(), untagged_days=settings.ecr_untagged_days)
        policies = {k: p.policy for k, p in desired.items()}
        if policies == applied and time.monotonic() - checked_at < settings.resync_interval:
            continue  # nothing changed since the last put or check: no AWS call
        results = await asyncio.to_thread(
            apply_lifecycle_policies, desired, endpoint_url=settings.aws_endpoint_url, create_missing=create
        )
        for r in results.values():
            if r.changed:
                metrics.ECR_POLICY_PUTS.labels(result="ok").inc()
            elif not r.ok:
                metrics.ECR_POLICY_PUTS.labels(result=r.reason).inc()
        changed = []
        for key, usage in usages.items():
            res = results.get(usage.key)
            policy = desired.get(usage.key)
            if res is None or policy is None:
                continue
            summary = policy.summaries.get(usage.slug, "")
            ret = (
                Retention(True, "Applied", f"{usage.registry_host}/{usage.repository}: {summary}")
                if res.ok
                else Retention(False, res.reason, f"{usage.registry_host}/{usage.repository}: {res.message}")
            )
            if index.retention.get(key) != ret:
                index.retention[key] = ret
                changed.append(key)
        await asyncio.gather(*(course_io.write_status(kube, index, k) for k in changed))
        failed = [r for r in results.values() if not r.ok]
        if any(r.reason in TRANSIENT for r in failed):
            attempt += 1
            applied = None
            delay = backoff.delay(attempt, base=2.0, cap=300.0)
            log.warning(
                "ECR lifecycle: %d repositories failed transiently; retrying in %.0fs", len(failed), delay
            )
            asyncio.get_running_loop().call_later(delay, index.courses_changed.set)
        else:
            attempt = 0
            applied = policies if not failed else None
            checked_at = time.monotonic()
