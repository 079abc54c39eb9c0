"""Resolve every CourseImage's spec.image to a digest: on change, and again every interval.

Results go into the index (one Resolution per course); the course status writer reports
them. Any failure of one course becomes that course's ImageResolved condition; the workers
never stop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import replace

from .. import metrics
from ..api.common import now_rfc3339
from ..desired.courses import CourseRecord
from ..desired.status import Resolution
from ..kube import SECRETS, TRANSIENT_API_ERRORS, Kube, NotFound
from ..registry import ResolveError, resolve_image
from ..registry.reference import parse_ecr_host, parse_reference
from ..settings import Settings
from ..state import Index, Key

log = logging.getLogger(__name__)
API_RETRY_SECONDS = 2.0


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

    def schedule(self, key: Key) -> None:
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
                # The API server is away (restart, outage): say so in one line and try again
                # soon, not only at the next resolve interval.
                log.warning(
                    "resolving %s/%s: the Kubernetes API failed (%s: %s), retrying", *key, type(e).__name__, e
                )
                metrics.RECONCILE_ERRORS.labels(kind="CourseImage", reason=type(e).__name__).inc()
                asyncio.get_running_loop().call_later(API_RETRY_SECONDS, self.schedule, key)
            except Exception as e:  # never let one course stop the others: it says what happened
                log.exception("resolving %s/%s failed unexpectedly", *key)
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

    async def resolve_one(self, key: Key) -> None:
        course = self.index.courses.get(key)
        if course is None or course.deleting:
            return
        started = time.monotonic()
        ref = course.spec.image
        registry_kind = "oci"
        try:
            registry_kind = "ecr" if parse_ecr_host(parse_reference(ref).registry) else "oci"
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
        except ValueError as e:  # the reference grammar refused spec.image
            resolution = Resolution(course.generation, False, "InvalidImageReference", f"spec.image: {e}")
        except SecretProblem as e:
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
            self.index.courses[key] = replace(current, resolved_image=resolution.pinned)
            self.index.wake_hubs_for_namespace(key[0])
        self.index.course_changed(key)

    def _resolved_at(self, key: Key, pinned: str) -> str:
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
