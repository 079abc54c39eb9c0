"""kopf wiring: watch events feed the index; long-lived tasks do the work.

Only `on.event` handlers are used, so kopf keeps no state on our objects (no annotations,
no kopf finalizer): the operator writes status and its own finalizers, nothing else. The
Runtime lives in kopf's `memo` (set by the startup handler in operator_main).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import kopf
from pydantic import ValidationError

from .. import aio, backoff
from ..api.courseimage import CourseImageSpec
from ..api.jupyterhubdeployment import JupyterHubDeploymentSpec
from ..desired import puller as puller_mod
from ..desired.courses import CourseRecord, HubRecord, namespace_owner
from ..desired.tenancy import helm_user
from ..kube import COURSE_IMAGES, HUBS, NAMESPACES, TRANSIENT_API_ERRORS, Kube
from ..reconcile import course_status
from ..reconcile import hub as hub_io
from ..reconcile.build import BuildController
from ..reconcile.hub import HubReconciler
from ..reconcile.resolver import Resolver
from ..reconcile.retention import EcrRetention
from ..reconcile.webhook import WebhookServer
from ..registry.reference import is_digest_of
from ..settings import Settings
from ..state import Index

log = logging.getLogger(__name__)
GROUP, VERSION = "coursehub.dev", "v1alpha1"
# How long hub rounds wait at most for the watch to deliver what the API server listed at start
# (an object deleted between that list and the watch's own never arrives).
START_SYNC_TIMEOUT = 60.0


class Runtime:
    """Everything the handlers share, created at operator start-up."""

    def __init__(self, kube: Kube, settings: Settings, namespaces: tuple[str, ...] = ()):
        self.kube = kube
        self.settings = settings
        self.namespaces = namespaces  # () = every namespace
        self.index = Index()
        self.resolver = Resolver(kube, self.index, settings)
        self.status_writer = course_status.CourseStatusWriter(
            kube, self.index, hold_max=settings.status_hold_max
        )
        self.retention = EcrRetention(self.index, settings)
        # Course builds (spec.build): a good build makes the resolver look at the moved tag now.
        self.builds = BuildController(kube, self.index, settings, on_built=self.resolver.schedule)
        self.webhook: WebhookServer | None = None
        from ..helm import HelmReleases

        self.helm = HelmReleases(executable=settings.helm, timeout=settings.helm_timeout)
        self.reconcilers: dict[tuple[str, str], HubReconciler] = {}
        self.deleting: dict[tuple[str, str], asyncio.Task] = {}
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._list_at_start(), name="start-up list"))
        self.tasks.append(asyncio.create_task(self.status_writer.run(), name="course-status"))
        self.tasks.append(asyncio.create_task(self.resolver.run(), name="resolver"))
        self.tasks.append(asyncio.create_task(self.retention.run(), name="ecr-retention"))
        self.tasks.append(asyncio.create_task(self.builds.run(), name="builds"))
        if self.settings.webhook_port:
            self.tasks.append(asyncio.create_task(self._serve_webhooks(), name="webhooks"))

    async def _list_at_start(self) -> None:
        """List both kinds once (metadata only) and tell the index what the watches will replay;
        hub rounds start once it has all been seen (state.Index.listed)."""
        idx, attempt = self.index, 0
        deadline = asyncio.get_running_loop().time() + START_SYNC_TIMEOUT
        while True:
            try:
                listed: set[tuple[str, str, str]] = set()
                for res in (COURSE_IMAGES, HUBS):
                    for ns in self.namespaces or (None,):
                        listed.update((res.kind, *key) for key in await self.kube.list_names(res, ns))
                if not self.namespaces:  # every namespace: their labels select courses too
                    listed.update(("Namespace", *key) for key in await self.kube.list_names(NAMESPACES))
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempt += 1
                log.warning("listing at start failed (%s: %s), retrying", type(e).__name__, e)
                await backoff.sleep(attempt)
        idx.expect_at_start(listed)
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            await aio.within(idx.listed.wait(), max(remaining, 1.0))
        except TimeoutError:
            missing = sorted(idx.unseen_at_start or ())
            log.warning(
                "%d objects listed at start never came through the watch (deleted since?), e.g. %s: "
                "hub rounds start anyway",
                len(missing),
                missing[:3],
            )
            idx.mark_listed()

    async def _serve_webhooks(self) -> None:
        path = self.settings.webhook_secret_file
        secret = open(path, "rb").read().strip() if path else b""  # noqa: SIM115 (read once at start)
        if not secret:
            log.warning(
                "webhooks: no secret (COURSEHUB_WEBHOOK_SECRET_FILE): only repositories with a "
                "spec.build.git.webhookSecretRef of their own take pushes"
            )
        self.webhook = WebhookServer(
            secret,
            self.builds.on_push,
            self.settings.webhook_port,
            own_secrets=self.builds.webhook_secrets.for_repositories,
            identity=self.settings.identity or socket.gethostname(),
        )
        await self.webhook.start()

    async def stop(self) -> None:
        for r in self.reconcilers.values():
            await r.stop()
        if self.webhook is not None:
            await self.webhook.stop()
        for t in [*self.tasks, *self.deleting.values()]:
            t.cancel()
        await asyncio.gather(*self.tasks, *self.deleting.values(), return_exceptions=True)
        await self.kube.close()

    def spawn_deletion(self, key, make) -> None:
        """Run `make()` (a deletion coroutine) until it succeeds: no later event may come to
        retry it, and a failed finalizer removal would leave the object hanging for good."""
        if key in self.deleting and not self.deleting[key].done():
            return

        async def until_done():
            attempt = 0
            while True:
                try:
                    return await make()
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    attempt += 1
                    log.warning(
                        "finishing the deletion of %s/%s failed (%s: %s), retrying",
                        *key,
                        type(e).__name__,
                        e,
                        exc_info=attempt == 1 and not isinstance(e, TRANSIENT_API_ERRORS),
                    )
                    await backoff.sleep(attempt)

        task = asyncio.create_task(until_done(), name=f"delete {key}")
        self.deleting[key] = task
        task.add_done_callback(
            lambda t: self.deleting.pop(key, None) if self.deleting.get(key) is t else None
        )


def _meta(body) -> tuple[str, str, dict]:
    m = body["metadata"]
    return m["namespace"], m["name"], m


def course_record(body: dict, previous: CourseRecord | None) -> CourseRecord | None:
    ns, name, m = _meta(body)
    try:
        spec = CourseImageSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as e:  # the CRD refuses these; an older CRD version might not have
        log.error("CourseImage %s/%s has an invalid spec: %s", ns, name, e)
        return None
    status = body.get("status") or {}
    # The last good digest survives restarts in status and spec edits in memory: learners keep
    # getting it until a new one resolves.
    resolved = previous.resolved_image if previous else status_image(spec.image, status.get("resolvedImage"))
    return CourseRecord(
        namespace=ns,
        name=name,
        uid=m["uid"],
        created=m.get("creationTimestamp", ""),
        generation=m.get("generation", 1),
        labels=tuple(sorted((m.get("labels") or {}).items())),
        spec=spec,
        resolved_image=resolved,
        deleting=bool(m.get("deletionTimestamp")),
    )


def status_image(image: str, resolved: object) -> str | None:
    """status.resolvedImage, reused after a restart only when it is a digest of spec.image's own
    repository: status is writable apart from spec, and must not pick what learners run."""
    if not isinstance(resolved, str):
        return None
    if not is_digest_of(image, resolved):
        log.warning("ignoring status.resolvedImage %r: it is not a digest of %s", resolved, image)
        return None
    return resolved


def hub_record(body: dict) -> HubRecord | None:
    ns, name, m = _meta(body)
    try:
        spec = JupyterHubDeploymentSpec.model_validate(dict(body.get("spec") or {}))
    except ValidationError as e:
        log.error("JupyterHubDeployment %s/%s has an invalid spec: %s", ns, name, e)
        return None
    return HubRecord(
        namespace=ns,
        name=name,
        uid=m["uid"],
        created=m.get("creationTimestamp", ""),
        generation=m.get("generation", 1),
        spec=spec,
        deleting=bool(m.get("deletionTimestamp")),
    )


def register(registry: kopf.OperatorRegistry, *, watch_namespaces: bool) -> None:
    @kopf.on.event(GROUP, VERSION, "courseimages", registry=registry)
    async def course_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
        r: Runtime = memo.runtime
        ns, name, m = _meta(body)
        key = (ns, name)
        idx = r.index
        try:
            await _course_event(r, type, body, ns, name, m)
        finally:
            idx.saw("CourseImage", key)

    async def _course_event(r: Runtime, type: str, body: kopf.Body, ns: str, name: str, m: dict) -> None:
        key = (ns, name)
        idx = r.index
        if type == "DELETED":
            idx.courses.pop(key, None)
            idx.raw_courses.pop(key, None)
            idx.resolutions.pop(key, None)
            idx.retention.pop(key, None)
            r.builds.sync(key)
            idx.wake_hubs_for_namespace(ns)
            return
        prev = idx.courses.get(key)
        record = course_record(dict(body), prev)
        if record is None:
            return
        idx.raw_courses[key] = _plain(body)
        idx.courses[key] = record
        if record.deleting:
            r.spawn_deletion(
                key, lambda: course_status.finish_deletion(r.kube, idx, key, idx.raw_courses.get(key))
            )
            return
        if course_status.FINALIZER not in (m.get("finalizers") or []):
            await course_status.ensure_finalizer(r.kube, idx.raw_courses[key])
        r.builds.sync(key)  # spec.build and the rebuild annotation
        if prev is None or prev.generation != record.generation or key not in idx.resolutions:
            r.resolver.schedule(key)
        if prev is None and record.resolved_image is None:
            pass  # nothing to publish yet: its first resolution wakes the hubs (reconcile.resolver)
        elif prev is None or prev.spec != record.spec or prev.labels != record.labels:
            idx.wake_hubs_for_namespace(ns)

    @kopf.on.event(GROUP, VERSION, "jupyterhubdeployments", registry=registry)
    async def hub_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
        r: Runtime = memo.runtime
        ns, name, m = _meta(body)
        try:
            await _hub_event(r, type, body, ns, name, m)
        finally:
            r.index.saw("JupyterHubDeployment", (ns, name))

    async def _hub_event(r: Runtime, type: str, body: kopf.Body, ns: str, name: str, m: dict) -> None:
        key = (ns, name)
        idx = r.index
        if type == "DELETED":
            rec = r.reconcilers.pop(key, None)
            if rec:
                await rec.stop()
            idx.hubs.pop(key, None)
            idx.raw_hubs.pop(key, None)
            idx.wake_all_hubs()  # a hub waiting on NamespaceTaken may take over
            return
        record = hub_record(dict(body))
        if record is None:
            return
        prev = idx.hubs.get(key)
        idx.raw_hubs[key] = _plain(body)
        idx.hubs[key] = record
        if record.deleting:
            rec = r.reconcilers.pop(key, None)
            if rec:
                await rec.stop()
            owns = namespace_owner(idx.hubs.values(), ns).key == key
            user = helm_user(record, r.settings.tenant_service_account)
            r.spawn_deletion(
                key,
                lambda: hub_io.finish_deletion(r.kube, idx, key, idx.raw_hubs.get(key), owns, r.helm, user),
            )
            return
        if hub_io.FINALIZER not in (m.get("finalizers") or []):
            await hub_io.ensure_finalizer(r.kube, idx.raw_hubs[key])
        if key not in r.reconcilers:
            rec = HubReconciler(r.kube, idx, r.settings, key, r.helm)
            r.reconcilers[key] = rec
            rec.start()
        elif prev is None or prev.generation != record.generation:
            idx.wake_hub(key)

    @kopf.on.event(
        "apps", "v1", "daemonsets", labels={"app.kubernetes.io/managed-by": "coursehub"}, registry=registry
    )
    async def puller_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: object) -> None:
        """A pre-puller that finished its rollout wakes its hub at once, so its courses turn
        PrePulled now instead of at the hub's next look (Settings.rollout_poll); one deleted
        by someone else (the hub still counts it as its own) wakes it to write it again."""
        r: Runtime = memo.runtime
        ns, name, m = _meta(body)
        hub = (m.get("labels") or {}).get("coursehub.dev/hub")
        rec = r.reconcilers.get((ns, hub)) if hub else None
        if rec is None or puller_mod.chunk_of(name) is None:
            return
        plain = _plain(body)
        rec.note_puller(type, plain)
        deleted_by_someone_else = type == "DELETED" and ("DaemonSet", name) in (rec.memory.owned or ())
        rolled_out = type != "DELETED" and rec.memory.pulling and puller_mod.rolled_out(plain)
        if deleted_by_someone_else or rolled_out:
            r.index.wake_hub(rec.key, change=deleted_by_someone_else)

    if watch_namespaces:

        @kopf.on.event("", "v1", "namespaces", registry=registry)
        async def namespace_event(type, body, memo, **_):
            idx = memo.runtime.index
            name = body["metadata"]["name"]
            idx.saw("Namespace", ("", name))
            labels = dict(body["metadata"].get("labels") or {})
            if type == "DELETED":
                idx.namespace_labels.pop(name, None)
            elif idx.namespace_labels.get(name) == labels:
                return
            else:
                idx.namespace_labels[name] = labels
            for key, hub in idx.hubs.items():
                if hub.spec.courses and hub.spec.courses.namespaces == "Selector":
                    idx.wake_hub(key)


def _plain(body) -> dict:
    """A plain-dict copy of a kopf body (it is a live view that changes under us), without
    metadata.managedFields: nothing here reads them, and they are most of a small object's
    size (kept for 1,000s of courses). Not copied first and dropped after, and not by
    copy.deepcopy: a JSON body has no shared or cyclic parts, and deepcopy's bookkeeping was
    ~3% of the operator's CPU in a 1,000-course burst."""
    plain = {k: _json_copy(v) for k, v in body.items() if k != "metadata"}
    meta = body.get("metadata")
    if meta is not None:
        plain["metadata"] = {k: _json_copy(v) for k, v in meta.items() if k != "managedFields"}
    return plain


def _json_copy(value):
    if isinstance(value, dict):
        return {k: _json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_copy(v) for v in value]
    return value  # str, int, float, bool, None: immutable


__all__ = ["Runtime", "course_record", "hub_record", "register", "status_image"]
