"""JupyterHubDeployment I/O: one long-lived reconciler per hub.

It wakes on any change that may concern the hub, waits a short debounce window so that a
burst of course changes becomes one write, computes the whole desired state with the pure
functions in coursehub.desired, and applies only what differs from the live objects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

from .. import backoff, conditions, metrics
from ..api.common import API_VERSION
from ..conditions import Cond
from ..desired import allowlist as allowlist_mod
from ..desired import puller as puller_mod
from ..desired.courses import HubRecord, namespace_owner, select_courses
from ..desired.gateway import gateway_objects
from ..desired.secrets import check_secrets, required_secret_keys, secret_hash
from ..desired.status import Publication, hub_ready
from ..desired.values import InvalidValues, hub_allowlist_rbac, render_values, validate_values
from ..helm import DETERMINISTIC_REASONS, ReleaseFailed
from ..kube import (
    BY_KIND,
    CONFIG_MAPS,
    DAEMON_SETS,
    HUBS,
    SECRETS,
    TRANSIENT_API_ERRORS,
    Kube,
    KubeError,
    NotFound,
    owner_reference,
)
from ..settings import Settings
from ..state import Index
from . import courses as course_io

log = logging.getLogger(__name__)

FINALIZER = "coursehub.dev/helm-release"
# How long course statuses wait for a newly started hub reconciler's first publication.
FIRST_ROUND_GRACE = 30.0
APPLIED_HASH = "coursehub.dev/applied-hash"


def manifest_hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class HubRuntime:
    """What one hub's reconciler remembers between rounds (rebuilt after a restart)."""

    applied: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> hash applied
    release_hash: str | None = None  # values+chart hash known to be deployed
    release_done: tuple | None = None  # (hash, ReleaseOutcome | ReleaseFailed, when)
    db_secret_hash: str | None = None
    pulling: bool = False
    rounds: int = 0


class HubReconciler:
    def __init__(self, kube: Kube, index: Index, settings: Settings, key: tuple[str, str], helm):
        self.kube = kube
        self.helm = helm  # coursehub.helm.HelmReleases
        self.index = index
        self.settings = settings
        self.key = key
        self.rt = HubRuntime()
        self.task: asyncio.Task | None = None
        self.release_task: asyncio.Task | None = None

    # -- the loop ----------------------------------------------------------
    def start(self) -> None:
        self.index.hubs_starting[self.key] = time.monotonic() + FIRST_ROUND_GRACE
        self.task = asyncio.create_task(self._loop(), name=f"hub {self.key[0]}/{self.key[1]}")

    async def stop(self) -> None:
        self.index.hubs_starting.pop(self.key, None)
        if self.release_task and not self.release_task.done():
            # Give a running helm a moment to finish; one cut short leaves the release pending,
            # which the next start repairs (HelmReleases._make_proceedable). Waiting longer
            # would outlast the pod's termination grace period anyway.
            await asyncio.wait([self.release_task], timeout=10)
            self.release_task.cancel()
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    async def _loop(self) -> None:
        wake = self.index.hub_wakeups.setdefault(self.key, asyncio.Event())
        wake.set()  # first round right away
        attempt = 0
        while True:
            timeout = self.settings.rollout_poll if self.rt.pulling else self.settings.resync_interval
            try:
                await asyncio.wait_for(wake.wait(), timeout=timeout)
            except TimeoutError:
                pass
            await self._debounce(wake)
            started = time.monotonic()
            try:
                await self.reconcile()
                attempt = 0
                metrics.RECONCILES.labels(kind="JupyterHubDeployment", result="ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempt += 1
                reason = type(e).__name__
                metrics.RECONCILE_ERRORS.labels(kind="JupyterHubDeployment", reason=reason).inc()
                # An API outage is expected weather: one line, no traceback.
                log.warning(
                    "hub %s/%s: reconcile failed (%s: %s), retrying",
                    *self.key,
                    reason,
                    e,
                    exc_info=attempt == 1 and not isinstance(e, TRANSIENT_API_ERRORS),
                )
                # A watch event means the API server answers again: retry then, not after the backoff.
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), timeout=backoff.delay(attempt))
                except TimeoutError:
                    pass
                wake.set()
            finally:
                metrics.RECONCILE_SECONDS.labels(kind="JupyterHubDeployment").observe(
                    time.monotonic() - started
                )

    async def _debounce(self, wake: asyncio.Event) -> None:
        """Wait until changes stop arriving for `debounce` seconds (at most `debounce_max`)."""
        deadline = time.monotonic() + self.settings.debounce_max
        while True:
            wake.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(self.settings.debounce, remaining))
            except TimeoutError:
                return

    # -- one round ---------------------------------------------------------
    async def reconcile(self) -> None:
        hub = self.index.hubs.get(self.key)
        raw = self.index.raw_hubs.get(self.key)
        if hub is None or raw is None or hub.deleting:
            return
        self.rt.rounds += 1
        conds: list[Cond] = []

        owner = namespace_owner(self.index.hubs.values(), hub.namespace)
        if owner.key != hub.key:
            await self._set_publications(hub, {})
            conds = [
                Cond(
                    "ReleaseDeployed",
                    False,
                    "NamespaceTaken",
                    f"JupyterHubDeployment {owner.name} already owns namespace {hub.namespace}; z2jh's object "
                    f"names are not release-prefixed, so only one hub fits a namespace: move this one to its "
                    f"own namespace",
                )
            ]
            await self._write_status(hub, raw, conds, courses=0, release=None)
            return

        # Courses first: publishing must never wait for Helm.
        published_count, courses_cond = await self._publish_courses(hub, raw)
        secrets_conds, db_hash, secrets_ok = await self._check_secrets(hub)
        conds += secrets_conds
        await self._apply_gateway(hub, raw, secrets_ok)
        release_cond, release = await self._ensure_release(hub, raw, db_hash, secrets_ok)
        conds += [release_cond, courses_cond]
        await self._write_status(hub, raw, conds, courses=published_count, release=release)

    # -- courses -----------------------------------------------------------
    async def _publish_courses(self, hub: HubRecord, raw: dict) -> tuple[int, Cond]:
        selection = select_courses(hub, list(self.index.courses.values()), self.index.namespace_labels)
        pullers = puller_mod.desired_pullers(hub, selection.winners)
        live_pullers = {
            name: await self.kube.get_or_none(DAEMON_SETS, name, hub.namespace) for name in pullers
        }
        pulled = puller_mod.pulled_images(pullers, live_pullers)
        live_cm = await self._live_allowlist(hub)
        previous = allowlist_mod.previously_published(live_cm)
        publish_after_pull = bool(hub.spec.pre_pull and hub.spec.pre_pull.publish_after_pull)
        published = allowlist_mod.published_images(
            selection.winners, publish_after_pull=publish_after_pull, pulled=pulled, previous=previous
        )
        doc = allowlist_mod.allowlist_document(hub, selection.winners, published)
        await self._apply(raw, allowlist_mod.allowlist_configmap(hub, doc), live=live_cm)
        for name, manifest in pullers.items():
            if manifest is None:
                if live_pullers.get(name) is not None:
                    await self.kube.delete(DAEMON_SETS, name, hub.namespace)
                    self.rt.applied.pop(("DaemonSet", name), None)
            else:
                await self._apply(raw, manifest, live=live_pullers.get(name))
        # Pullers just written are not rolled out yet: look again soon.
        fresh = {
            name: await self.kube.get_or_none(DAEMON_SETS, name, hub.namespace) if m else None
            for name, m in pullers.items()
        }
        pulled = puller_mod.pulled_images(pullers, fresh)
        wanted = set().union(*(set((m and puller_mod.images_of(m)) or ()) for m in pullers.values()))
        self.rt.pulling = bool(wanted - pulled)
        if publish_after_pull and any(
            selection.winners[s].resolved_image not in published.values()
            for s in selection.winners
            if selection.winners[s].resolved_image
        ):
            self.rt.pulling = True
        metrics.PREPULL_READY.labels(namespace=hub.namespace, hub=hub.name).set(0 if self.rt.pulling else 1)
        metrics.COURSES_PER_HUB.labels(namespace=hub.namespace, hub=hub.name).set(len(published))

        prepull_enabled = hub.spec.pre_pull.enabled if hub.spec.pre_pull else True
        pubs: dict[tuple[str, str], Publication] = {}
        for slug, course in selection.winners.items():
            image = published.get(slug)
            if image is None and course.resolved_image is None:
                state, msg = "NotResolved", "waiting for the image to resolve"
            elif image is None or image != course.resolved_image:
                state, msg = "WaitingForPull", "publishAfterPull: offered once every node has pulled it"
                if image:
                    state, msg = "Published", "offering the previous digest until the new one is pulled"
            else:
                state, msg = "Published", "published"
            pre = (
                "PrePullDisabled"
                if not prepull_enabled
                else ("PrePulled" if course.resolved_image in pulled else "Pulling")
            )
            pubs[course.key] = Publication(
                hub.ref,
                hub.spec.domain,
                state,
                msg,
                image,
                pre,
                "the pre-puller DaemonSet is rolling out" if pre == "Pulling" else "",
            )
        for loser_key, winner in selection.duplicates.items():
            slug = self.index.courses[loser_key].slug
            pubs[loser_key] = Publication(
                hub.ref,
                hub.spec.domain,
                "DuplicateCourse",
                f"course '{slug}' is already published by the older CourseImage "
                f"{winner.namespace}/{winner.name}; rename spec.course or delete one",
            )
        await self._set_publications(hub, pubs)
        dups = len(selection.duplicates)
        msg = f"{len(published)} courses published"
        if dups:
            msg += f"; {dups} CourseImages claim a slug already taken (DuplicateCourse)"
        return len(published), Cond("CoursesPublished", True, "Published", msg)

    async def _set_publications(self, hub: HubRecord, pubs: dict[tuple[str, str], Publication]) -> None:
        """Record how this hub treats each course, and refresh the statuses that changed."""
        changed = []
        for key in set(self.index.publications) | set(pubs):
            per_hub = self.index.publications.setdefault(key, {})
            new = pubs.get(key)
            if per_hub.get(hub.ref) != new:
                if new is None:
                    per_hub.pop(hub.ref, None)
                else:
                    per_hub[hub.ref] = new
                changed.append(key)
            if not per_hub:
                self.index.publications.pop(key, None)
        if self.index.hubs_starting.pop(self.key, None) is not None:
            # Statuses held back for this first round (write_status skips unchanged ones).
            changed = sorted(set(changed) | set(self.index.courses))
        await asyncio.gather(*(course_io.write_status(self.kube, self.index, k) for k in changed))

    async def _live_allowlist(self, hub: HubRecord) -> dict | None:
        return await self.kube.get_or_none(CONFIG_MAPS, allowlist_mod.ALLOWLIST_CONFIGMAP, hub.namespace)

    # -- apply ---------------------------------------------------------------
    async def _apply(self, owner_raw: dict, manifest: dict, *, live: dict | None = "unknown") -> None:
        """Server-side apply when the desired manifest differs from what was last applied.

        The hash of the desired manifest rides on the object as an annotation, so after an
        operator restart one read (not a write) tells whether anything changed.
        """
        manifest = json.loads(json.dumps(manifest))
        manifest["metadata"]["ownerReferences"] = [owner_reference(owner_raw)]
        digest = manifest_hash(manifest)
        ident = (manifest["kind"], manifest["metadata"]["name"])
        if self.rt.applied.get(ident) == digest:
            return
        if live == "unknown":
            live = await self.kube.get_or_none(
                BY_KIND[manifest["kind"]], manifest["metadata"]["name"], manifest["metadata"]["namespace"]
            )
        if live is not None and (live["metadata"].get("annotations") or {}).get(APPLIED_HASH) == digest:
            self.rt.applied[ident] = digest
            return
        manifest["metadata"].setdefault("annotations", {})[APPLIED_HASH] = digest
        await self.kube.apply(manifest)
        self.rt.applied[ident] = digest

    # -- secrets, gateway, release ---------------------------------------------
    async def _check_secrets(self, hub: HubRecord) -> tuple[list[Cond], str | None, bool]:
        required = required_secret_keys(hub.spec)
        names = {name for pairs in required.values() for name, _ in pairs}
        secrets: dict[str, dict | None] = {}
        for name in sorted(names):
            obj = await self.kube.get_or_none(SECRETS, name, hub.namespace)
            secrets[name] = (
                None if obj is None else {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            )
        results = check_secrets(required, secrets)
        conds = []
        ok = True
        for ctype in ("DatabaseReady", "GatewayReady"):
            good, reason, message = results.get(ctype, (True, "NotRequired", "nothing to check"))
            conds.append(Cond(ctype, good, reason, message))
            ok = ok and good
        db_hash = None
        db = hub.spec.database
        if db.url_secret_ref and secrets.get(db.url_secret_ref.name):
            # Only the referenced key matters: rotating it restarts the hub once.
            db_hash = secret_hash(
                {db.url_secret_ref.key: secrets[db.url_secret_ref.name].get(db.url_secret_ref.key, b"")}
            )
        return conds, db_hash, ok

    async def _apply_gateway(self, hub: HubRecord, raw: dict, secrets_ok: bool) -> None:
        objs = gateway_objects(hub.name, hub.namespace, hub.spec, hub.spec.domain) if hub.spec.gateway else []
        if not secrets_ok:
            return  # the secret check already explains it; keep what runs
        for obj in objs:
            await self._apply(raw, obj)
        # Gateway objects that the spec no longer wants are removed.
        wanted = {(o["kind"], o["metadata"]["name"]) for o in objs}
        for ident in [i for i in self.rt.applied if i[1].startswith("coursehub-gateway") and i not in wanted]:
            await self.kube.delete(BY_KIND[ident[0]], ident[1], hub.namespace)
            self.rt.applied.pop(ident, None)

    async def _ensure_release(
        self, hub: HubRecord, raw: dict, db_hash: str | None, secrets_ok: bool
    ) -> tuple[Cond, dict | None]:
        status_release = (raw.get("status") or {}).get("release") or None
        try:
            values = render_values(
                hub.name,
                hub.namespace,
                hub.spec,
                database_secret_hash=db_hash,
                allowlist_configmap=allowlist_mod.ALLOWLIST_CONFIGMAP,
            )
            validate_values(values)
        except InvalidValues as e:
            await self._event_once(raw, "InvalidValues", f"{e.path}: {e.message}")
            return Cond(
                "ReleaseDeployed",
                False,
                "InvalidValues",
                f"{e.path}: {e.message}; the release was not touched",
            ), status_release
        if not secrets_ok:
            return Cond(
                "ReleaseDeployed",
                False,
                "WaitingForSecrets",
                "the referenced Secrets are missing or incomplete (see DatabaseReady/GatewayReady); the "
                "release was not touched",
            ), status_release
        for obj in hub_allowlist_rbac(hub.name, hub.namespace, allowlist_mod.ALLOWLIST_CONFIGMAP):
            await self._apply(raw, obj)
        chart = hub.spec.chart
        want = manifest_hash({"values": values, "chart": chart.to_wire()})
        if self.rt.release_hash == want and status_release:
            # Deployed by this process already: no Helm call at all.
            return Cond(
                "ReleaseDeployed",
                True,
                "Deployed",
                f"revision {status_release.get('revision')} of chart {status_release.get('chartVersion')}",
            ), status_release
        done = self.rt.release_done
        if (
            done is not None
            and done[0] == want
            and isinstance(done[1], ReleaseFailed)
            and done[1].reason not in DETERMINISTIC_REASONS
            and time.monotonic() - done[2] > 30
        ):
            done = None  # a transient failure (cluster unreachable, timeout): try again
        if done is not None and done[0] == want:
            outcome = done[1]
            if isinstance(outcome, ReleaseFailed):
                await self._event_once(raw, outcome.reason, outcome.message, warning=True)
                return Cond(
                    "ReleaseDeployed",
                    False,
                    outcome.reason,
                    f"{outcome.message}; the previous release stays in place",
                ), status_release
            self.rt.release_hash = want
            release = {
                "name": hub.name,
                "revision": outcome.revision,
                "chartVersion": outcome.chart_version,
                "valuesHash": want,
            }
            if outcome.changed:
                await self.kube.event(
                    raw,
                    reason="ReleaseUpgraded",
                    message=f"helm release {hub.name} is at revision {outcome.revision} "
                    f"(chart {outcome.chart_version})",
                )
            return Cond(
                "ReleaseDeployed",
                True,
                "Deployed",
                f"revision {outcome.revision} of chart {outcome.chart_version}",
            ), release
        if self.release_task is None or self.release_task.done():
            # Helm runs beside the reconciler (an install waits for the hub's pods), so course
            # publication never waits for it; the task wakes the hub when it is done.
            self.release_task = asyncio.create_task(self._run_release(want, hub, chart, values))
        if status_release and status_release.get("valuesHash") == want:
            # This exact chart and values were deployed before (e.g. by the process before a
            # restart): keep saying so while helm checks it, read-only, instead of flapping.
            return Cond(
                "ReleaseDeployed",
                True,
                "Deployed",
                f"revision {status_release.get('revision')} of chart {status_release.get('chartVersion')}",
            ), status_release
        return Cond(
            "ReleaseDeployed", False, "Progressing", f"helm is installing or upgrading release {hub.name}"
        ), status_release

    async def _run_release(self, want: str, hub: HubRecord, chart, values: dict) -> None:
        try:
            # Read-only when the deployed release already matches (also right after a restart);
            # a spec that just failed is reported again without another upgrade attempt.
            result = await self.helm.ensure_release(hub.name, hub.namespace, chart, values)
        except ReleaseFailed as e:
            result = e
        except Exception as e:  # helm missing, cluster unreachable...
            result = ReleaseFailed("ReleaseFailed", f"{type(e).__name__}: {e}")
        self.rt.release_done = (want, result, time.monotonic())
        self.index.wake_hub(self.key)

    async def _event_once(self, raw: dict, reason: str, message: str, warning: bool = True) -> None:
        old = conditions.find((raw.get("status") or {}).get("conditions"), "ReleaseDeployed")
        if old and old.get("reason") == reason and old.get("message", "").startswith(message[:80]):
            return
        await self.kube.event(raw, reason=reason, message=message, type_="Warning" if warning else "Normal")

    # -- status --------------------------------------------------------------
    async def _write_status(
        self, hub: HubRecord, raw: dict, conds: list[Cond], *, courses: int, release: dict | None
    ) -> None:
        all_conds = [hub_ready(conds), *conds]
        old = raw.get("status") or {}
        merged = conditions.merge(old.get("conditions"), all_conds, hub.generation)
        merged = [c for c in merged if c["type"] in {x.type for x in all_conds}]
        status = {
            "observedGeneration": hub.generation,
            "url": f"https://{hub.spec.domain}/",
            "courses": courses,
            "conditions": merged,
        }
        if release:
            status["release"] = release
        same = {k: v for k, v in old.items() if k != "conditions"} == {
            k: v for k, v in status.items() if k != "conditions"
        } and conditions.same_ignoring_time(old.get("conditions"), merged)
        if same:
            return
        body = {
            "apiVersion": API_VERSION,
            "kind": "JupyterHubDeployment",
            "metadata": {"name": hub.name, "namespace": hub.namespace},
            "status": status,
        }
        try:
            updated = await self.kube.apply(body, subresource="status")
        except NotFound:
            return
        self.index.raw_hubs[self.key] = {**raw, "status": updated.get("status", status)}
        await course_io._transition_events(self.kube, raw, old.get("conditions"), merged)


# -- finalizer ----------------------------------------------------------------
async def ensure_finalizer(kube: Kube, raw: dict) -> None:
    await course_io.add_finalizer(kube, HUBS, raw, FINALIZER)


async def finish_deletion(
    kube: Kube, index: Index, key: tuple[str, str], raw: dict | None, owns_release: bool, helm
) -> None:
    """Uninstall the release (the database is never touched), forget the hub's courses, let it go."""
    if raw is None:  # already gone
        return
    if owns_release:
        await helm.uninstall_release(key[1], key[0])
    # Owned objects (allowlist, pullers, gateway, RBAC) go with the garbage collector.
    changed = []
    for course_key, per_hub in list(index.publications.items()):
        if per_hub.pop(f"{key[0]}/{key[1]}", None) is not None:
            changed.append(course_key)
        if not per_hub:
            index.publications.pop(course_key, None)
    await asyncio.gather(*(course_io.write_status(kube, index, k) for k in changed))
    finalizers = raw["metadata"].get("finalizers") or []
    if FINALIZER in finalizers:
        idx = finalizers.index(FINALIZER)
        try:
            await kube.json_patch(
                HUBS,
                key[1],
                key[0],
                [
                    {"op": "test", "path": f"/metadata/finalizers/{idx}", "value": FINALIZER},
                    {"op": "remove", "path": f"/metadata/finalizers/{idx}"},
                ],
            )
        except NotFound:
            pass
        except KubeError as e:
            if e.status not in (409, 422):
                raise
