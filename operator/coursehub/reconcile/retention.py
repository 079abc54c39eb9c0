"""ECR lifecycle policies from the courses: compute (pure, desired/lifecycle), put only on change.

Runs beside the hubs: a course change recomputes the policies; an unchanged set of policies
makes no AWS call at all, except a drift check every resync interval. Results go into the
index for the course status writer. A course whose image or policy cannot be handled gets
that in its RetentionApplied condition; the loop itself never stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from .. import aio, backoff, metrics
from ..desired.courses import CourseRecord
from ..desired.lifecycle import CourseUsage, RepositoryPolicy, build_lifecycle_policies
from ..desired.status import RetentionResult
from ..registry.ecr_lifecycle import RepositorySettings, apply_lifecycle_policies
from ..registry.reference import parse_ecr_host, parse_reference
from ..settings import Settings
from ..state import Index, Key

log = logging.getLogger(__name__)
TRANSIENT = {"Throttled", "EndpointUnreachable"}


def course_usage(course: CourseRecord) -> CourseUsage | None:
    """The course's use of an ECR repository, or None for other registries (ValueError: unusable)."""
    ref = parse_reference(course.spec.image)
    if parse_ecr_host(ref.registry) is None:
        return None
    digest = course.resolved_image.split("@", 1)[1] if course.resolved_image else ref.digest
    keep = course.spec.retention.keep if course.spec.retention else 5
    return CourseUsage(ref.repository, ref.registry, ref.tag, digest, course.spec.course, keep)


class EcrRetention:
    def __init__(self, index: Index, settings: Settings):
        self.index = index
        self.settings = settings
        self.applied: dict | None = None  # the desired policies last put (or found) in place
        self.checked_at = 0.0
        self.attempt = 0

    async def run(self) -> None:
        if not self.settings.ecr_lifecycle:
            return
        idx = self.index
        while True:
            await aio.wait_event(idx.courses_changed, self.settings.resync_interval)
            idx.courses_changed.clear()
            await asyncio.sleep(self.settings.debounce)
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end retention for every course
                log.exception("ECR lifecycle round failed unexpectedly; retrying")
                metrics.RECONCILE_ERRORS.labels(kind="EcrRetention", reason="Unexpected").inc()
                self.applied = None
                self._retry_later()

    def _retry_later(self) -> None:
        self.attempt += 1
        delay = backoff.delay(self.attempt, base=2.0, cap=300.0)
        asyncio.get_running_loop().call_later(delay, self.index.courses_changed.set)

    def _record(self, results: dict[Key, RetentionResult]) -> None:
        changed = [k for k, r in results.items() if self.index.retention.get(k) != r]
        self.index.retention.update({k: results[k] for k in changed})
        self.index.course_changed(*changed)

    async def round(self) -> None:
        idx = self.index
        usages: dict[Key, CourseUsage] = {}
        outcome: dict[Key, RetentionResult] = {}
        for key, c in list(idx.courses.items()):
            if c.deleting:
                continue
            try:
                u = course_usage(c)
            except ValueError as e:
                outcome[key] = RetentionResult(False, "InvalidImageReference", f"spec.image: {e}")
                continue
            if u is not None:
                usages[key] = u
        by_repo: dict[str, list[Key]] = defaultdict(list)
        for key, u in usages.items():
            by_repo[u.key].append(key)
        desired: dict[str, RepositoryPolicy] = {}
        for repo, keys in by_repo.items():
            try:
                desired.update(
                    build_lifecycle_policies(
                        [usages[k] for k in keys], untagged_days=self.settings.ecr_untagged_days
                    )
                )
            except ValueError as e:
                for k in keys:
                    outcome[k] = RetentionResult(False, "InvalidPolicy", f"{repo}: {e}")
        if not usages and self.applied is None:
            self._record(outcome)
            return
        policies = {k: p.policy for k, p in desired.items()}
        if policies == self.applied and time.monotonic() - self.checked_at < self.settings.resync_interval:
            self._record(outcome)
            return  # nothing changed since the last put or check: no AWS call
        create = RepositorySettings() if self.settings.ecr_create_repositories else None
        try:
            results = await asyncio.to_thread(
                apply_lifecycle_policies,
                desired,
                endpoint_url=self.settings.aws_endpoint_url,
                create_missing=create,
            )
        except Exception as e:  # the AWS client itself failed: every ECR course says so
            log.warning("ECR lifecycle: applying the policies failed (%s: %s)", type(e).__name__, e)
            for key in usages:
                outcome.setdefault(key, RetentionResult(False, "RetentionFailed", f"{type(e).__name__}: {e}"))
            self._record(outcome)
            self.applied = None
            self._retry_later()
            return
        for r in results.values():
            if r.changed:
                metrics.ECR_POLICY_PUTS.labels(result="ok").inc()
            elif not r.ok:
                metrics.ECR_POLICY_PUTS.labels(result=r.reason).inc()
        for key, usage in usages.items():
            res = results.get(usage.key)
            policy = desired.get(usage.key)
            if res is None or policy is None:
                continue
            where = f"{usage.registry_host}/{usage.repository}"
            outcome[key] = (
                RetentionResult(True, "Applied", f"{where}: {policy.summaries.get(usage.slug, '')}")
                if res.ok
                else RetentionResult(False, res.reason, f"{where}: {res.message}")
            )
        self._record(outcome)
        failed = [r for r in results.values() if not r.ok]
        if any(r.reason in TRANSIENT for r in failed):
            self.applied = None
            log.warning("ECR lifecycle: %d repositories failed transiently; retrying", len(failed))
            self._retry_later()
        else:
            self.attempt = 0
            self.applied = policies if not failed else None
            self.checked_at = time.monotonic()
