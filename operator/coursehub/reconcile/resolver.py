"""Resolve every CourseImage's spec.image to a digest: on change, and again when it is due.

Results go into the index (one Resolution per course); the course status writer reports
them. Any failure of one course becomes that course's ImageResolved condition; the workers
never stop.

When a course is due again follows desired.recheck (a digest that just moved is checked
often, one unchanged for a day rarely). ECR courses are not asked one by one: the workers
hand them to one batcher, which asks describe_images for up to 100 of them per call. An OCI
re-check sends the known digest as If-None-Match (registry/oci.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

from .. import metrics
from ..api.common import now_rfc3339
from ..desired.courses import CourseRecord
from ..desired.recheck import recheck_interval, seconds_since
from ..desired.status import Resolution
from ..kube import SECRETS, TRANSIENT_API_ERRORS, Kube, NotFound
from ..registry import (
    ImageReference,
    OciClient,
    RegistryPolicy,
    ResolveError,
    pinned,
    resolve_ecr_batch,
    resolve_image,
)
from ..registry.reference import parse_ecr_host, parse_reference
from ..settings import Settings
from ..state import Index, Key

log = logging.getLogger(__name__)
API_RETRY_SECONDS = 2.0
# How long the ECR batcher keeps gathering while courses keep arriving (a due round hands
# over hundreds within milliseconds), and at most how many times it waits.
ECR_GATHER_SECONDS = 0.05
ECR_GATHER_ROUNDS = 20


class SecretProblem(Exception):
    """The course's spec.imagePullSecretRef cannot be used (the message names the fix)."""


class Resolver:
    def __init__(self, kube: Kube, index: Index, settings: Settings):
        self.kube = kube
        self.index = index
        self.settings = settings
        self.queue: asyncio.Queue[Key] = asyncio.Queue()
        self.queued: set[Key] = set()
        self.calls = 0
        # course -> monotonic time its tag is due to be resolved again
        self.next_due: dict[Key, float] = {}
        # ECR courses waiting for the batcher: course key -> (the course, its reference)
        self.ecr_waiting: dict[Key, tuple[CourseRecord, ImageReference]] = {}
        self.ecr_wakeup = asyncio.Event()
        self.policy = RegistryPolicy.from_settings(settings)
        # While run() runs: one HTTP session for every OCI resolution, so connections to a
        # registry are kept alive across courses and rounds (registry/oci.py, OciClient).
        self.oci: OciClient | None = None

    def schedule(self, key: Key) -> None:
        # Until its resolution says otherwise, a course is due again at the shortest interval
        # (so one whose resolution never finished is not forgotten).
        self.next_due[key] = time.monotonic() + self.settings.resolve_interval
        if key not in self.queued:
            self.queued.add(key)
            self.queue.put_nowait(key)

    def tick(self) -> float:
        """How often the scheduler looks for due courses: a tenth of the shortest interval."""
        return min(max(self.settings.resolve_interval / 10, 0.2), 30.0)

    def schedule_due(self, now: float) -> int:
        """Queue every course whose re-check is due; returns how many."""
        for key in [k for k in self.next_due if k not in self.index.courses]:
            del self.next_due[key]
        due = [k for k in self.index.courses if self.next_due.get(k, now) <= now]
        for key in due:
            self.schedule(key)
        return len(due)

    async def run(self) -> None:
        self.oci = OciClient(self.policy)
        workers = [asyncio.create_task(self._worker()) for _ in range(self.settings.resolve_concurrency)]
        workers.append(asyncio.create_task(self._ecr_batcher()))
        try:
            while True:
                await asyncio.sleep(self.tick())
                self.schedule_due(time.monotonic())
        finally:
            for w in workers:
                w.cancel()
            oci, self.oci = self.oci, None
            await oci.close()

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.queued.discard(key)
            try:
                await self.resolve_one(key, batch_ecr=True)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_API_ERRORS as e:
                # The API server is away (restart, outage): say so in one line and try again
                # soon, not only at the next resolve interval.
                log.warning(
                    "resolving %s/%s: the Kubernetes API failed (%s: %s), retrying", *key, type(e).__name__, e
                )
                metrics.RECONCILE_ERRORS.labels(kind="CourseImage", reason=type(e).__name__).inc()
                asyncio.get_running_loop().call_later(API_RETRY_SECONDS, self.schedule, key)
            except Exception as e:  # never let one course stop the others: it says what happened
                self._unexpected(key, e)

    def _unexpected(self, key: Key, e: Exception) -> None:
        log.error("resolving %s/%s failed unexpectedly", *key, exc_info=e)
        metrics.RECONCILE_ERRORS.labels(kind="CourseImage", reason="Unexpected").inc()
        course = self.index.courses.get(key)
        if course is not None:
            self.index.resolutions[key] = Resolution(
                course.generation,
                False,
                "ResolveFailed",
                f"resolving failed unexpectedly ({type(e).__name__}); retried every resolve interval",
            )
            self.index.course_changed(key)

    async def resolve_one(self, key: Key, *, batch_ecr: bool = False) -> None:
        """Resolve one course and record the result; with `batch_ecr`, an ECR course is handed to
        the batcher instead (resolved with others, recorded by it)."""
        course = self.index.courses.get(key)
        if course is None or course.deleting:
            return
        started = time.monotonic()
        ref = course.spec.image
        registry_kind = "oci"
        try:
            parsed = parse_reference(ref, require_tag_or_digest=True)
            registry_kind = "ecr" if parse_ecr_host(parsed.registry) else "oci"
            docker_config = await self._docker_config(course)
            if registry_kind == "ecr":
                if batch_ecr:
                    self.ecr_waiting[key] = (course, parsed)
                    self.ecr_wakeup.set()
                else:
                    await self._resolve_ecr({key: (course, parsed)})
                return
            self.calls += 1
            metrics.REGISTRY_REQUESTS.labels(registry="oci").inc()
            resolved = await resolve_image(
                ref,
                docker_config=docker_config,
                ecr_endpoint_url=self.settings.aws_endpoint_url,
                policy=None if self.oci else self.policy,
                known_digest=self._known_digest(key, course),
                oci=self.oci,
            )
            resolution = self._resolved(key, course, resolved.digest, resolved.pinned)
            metrics.REGISTRY_CALLS.labels(registry=registry_kind, result="ok").inc()
        except ResolveError as e:
            resolution = Resolution(course.generation, False, e.reason, e.message)
            metrics.REGISTRY_CALLS.labels(registry=registry_kind, result=e.reason).inc()
        except ValueError as e:  # the reference grammar refused spec.image
            resolution = Resolution(course.generation, False, "InvalidImageReference", f"spec.image: {e}")
        except SecretProblem as e:
            resolution = Resolution(course.generation, False, "RegistryUnauthorized", str(e))
        await self._record(key, course, resolution, started)

    # -- ECR, batched ----------------------------------------------------------
    async def _ecr_batcher(self) -> None:
        while True:
            await self.ecr_wakeup.wait()
            # Keep gathering while courses keep arriving (the workers hand a due round over
            # within milliseconds), so one call carries up to 100 of them.
            size = -1
            for _ in range(ECR_GATHER_ROUNDS):
                if len(self.ecr_waiting) == size:
                    break
                size = len(self.ecr_waiting)
                await asyncio.sleep(ECR_GATHER_SECONDS)
            self.ecr_wakeup.clear()
            batch, self.ecr_waiting = self.ecr_waiting, {}
            try:
                await self._resolve_ecr(batch)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_API_ERRORS as e:  # recording (an Event) met an API outage
                log.warning(
                    "recording ECR resolutions: the Kubernetes API failed (%s: %s)", type(e).__name__, e
                )
                for key in batch:
                    asyncio.get_running_loop().call_later(API_RETRY_SECONDS, self.schedule, key)
            except Exception as e:
                for key in batch:
                    self._unexpected(key, e)

    async def _resolve_ecr(self, batch: dict[Key, tuple[CourseRecord, ImageReference]]) -> None:
        if not batch:
            return
        started = time.monotonic()
        self.calls += 1
        result = await resolve_ecr_batch(
            [ref for _course, ref in batch.values()], endpoint_url=self.settings.aws_endpoint_url
        )
        metrics.REGISTRY_REQUESTS.labels(registry="ecr").inc(result.calls)
        for key, (course, ref) in batch.items():
            digest = result.digests.get(ref)
            if digest is not None:
                resolution = self._resolved(key, course, digest, pinned(ref.name, digest))
                metrics.REGISTRY_CALLS.labels(registry="ecr", result="ok").inc()
            else:
                error = result.errors[ref]
                resolution = Resolution(course.generation, False, error.reason, error.message)
                metrics.REGISTRY_CALLS.labels(registry="ecr", result=error.reason).inc()
            await self._record(key, course, resolution, started)

    # -- recording ---------------------------------------------------------------
    def _resolved(self, key: Key, course: CourseRecord, digest: str, pinned_ref: str) -> Resolution:
        return Resolution(
            course.generation, True, "Resolved", "", digest, pinned_ref, self._resolved_at(key, pinned_ref)
        )

    def due_in(self, resolution: Resolution) -> float:
        """Seconds until this course's tag is looked at again (desired.recheck)."""
        unchanged = seconds_since(resolution.at, datetime.now(UTC)) if resolution.ok else None
        return recheck_interval(
            unchanged,
            shortest=self.settings.resolve_interval,
            longest=self.settings.resolve_interval_max,
        )

    async def _record(self, key: Key, course: CourseRecord, resolution: Resolution, started: float) -> None:
        metrics.RECONCILE_SECONDS.labels(kind="CourseImage").observe(time.monotonic() - started)
        metrics.RECONCILES.labels(
            kind="CourseImage", result="ok" if resolution.ok else resolution.reason
        ).inc()
        self.next_due[key] = time.monotonic() + self.due_in(resolution)
        current = self.index.courses.get(key)
        if current is None or current.generation != course.generation:
            return  # the spec moved on while we resolved; the newer generation is queued
        first = key not in self.index.resolutions
        self.index.resolutions[key] = resolution
        if resolution.ok and resolution.pinned != current.resolved_image:
            if current.resolved_image:
                raw = self.index.raw_courses.get(key)
                if raw:
                    await self.kube.event(
                        raw,
                        reason="DigestChanged",
                        message=f"{course.spec.image} moved from {current.resolved_image.split('@')[1]} "
                        f"to {resolution.digest}",
                    )
            self.index.courses[key] = replace(current, resolved_image=resolution.pinned)
            self.index.wake_hubs_for_namespace(key[0])
        elif first:
            # A new course's hubs are woken here, not by its watch event (handlers): its first
            # round then sees the resolution, and a failure still reaches the hubs' view of it.
            self.index.wake_hubs_for_namespace(key[0])
        self.index.course_changed(key)

    def _known_digest(self, key: Key, course: CourseRecord) -> str | None:
        """The digest the tag named last time (for If-None-Match), if any."""
        prev = self.index.resolutions.get(key)
        if prev is not None and prev.ok and prev.digest:
            return prev.digest
        if course.resolved_image and "@" in course.resolved_image:
            return course.resolved_image.split("@", 1)[1]
        return None

    def _resolved_at(self, key: Key, pinned_ref: str) -> str:
        """When this digest was first resolved: an unchanged digest keeps its time, so a periodic
        re-resolve that finds nothing new writes nothing (also after a restart, from status)."""
        prev = self.index.resolutions.get(key)
        if prev is not None and prev.ok and prev.pinned == pinned_ref and prev.at:
            return prev.at
        status = (self.index.raw_courses.get(key) or {}).get("status") or {}
        if status.get("resolvedImage") == pinned_ref and status.get("resolvedAt"):
            return status["resolvedAt"]
        return now_rfc3339()

    async def _docker_config(self, course: CourseRecord) -> dict | None:
        ref = course.spec.image_pull_secret_ref
        if ref is None:
            return None
        try:
            secret = await self.kube.get(SECRETS, ref.name, course.namespace)
        except NotFound:
            raise SecretProblem(
                f"spec.imagePullSecretRef: Secret {ref.name} not found in {course.namespace}"
            ) from None
        raw = (secret.get("data") or {}).get(".dockerconfigjson")
        if not raw:
            raise SecretProblem(
                f"spec.imagePullSecretRef: Secret {ref.name} has no key .dockerconfigjson "
                f"(type kubernetes.io/dockerconfigjson)"
            )
        try:
            return json.loads(base64.b64decode(raw))
        except ValueError:
            raise SecretProblem(
                f"spec.imagePullSecretRef: Secret {ref.name} key .dockerconfigjson is not JSON"
            ) from None
