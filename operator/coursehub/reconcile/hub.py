"""JupyterHubDeployment I/O: one long-lived reconciler per hub, the one writer of its status.

It wakes on any change that may concern the hub and runs a round at once; changes that
arrive while a round runs wait for a short quiet window (desired.hub_round.round_delay), so
a lone change is written at once and a burst becomes a handful of writes (and an existing puller
waits for the burst's end: desired.puller.held_pullers). A round: observe (every read),
decide (desired.hub_round.plan_round, pure), write (each step on its own, applying only
what differs from the live objects), record the courses' publications for the course
status writer, and write the hub's status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field

from .. import aio, backoff, metrics
from ..desired import allowlist as allowlist_mod
from ..desired import puller as puller_mod
from ..desired.courses import HubRecord, namespace_owner
from ..desired.hub_round import (
    Ident,
    Observed,
    Plan,
    ReleaseResult,
    Step,
    burst_pull_deadline,
    changes_still_coming,
    fingerprint,
    fold_failures,
    newly_pulling,
    plan_round,
    required_secret_names,
    round_delay,
    secret_versions,
    skipped_steps,
)
from ..helm import ReleaseFailed
from ..kube import (
    BY_KIND,
    CONFIG_MAPS,
    DAEMON_SETS,
    HUBS,
    NAMESPACES,
    SECRETS,
    TRANSIENT_API_ERRORS,
    Kube,
    KubeError,
    owner_reference,
)
from ..settings import Settings
from ..state import Index, Key
from . import status_io
from .finalizers import add_finalizer, remove_finalizer
from .puller_cache import PullerCache

log = logging.getLogger(__name__)

FINALIZER = "coursehub.dev/helm-release"
# How long course statuses wait for a newly started hub reconciler's first publication.
FIRST_ROUND_GRACE = 30.0
APPLIED_HASH = "coursehub.dev/applied-hash"
# Kinds of the objects a hub owns besides its Helm release: looked up once per process (by
# label) so that objects the spec no longer wants are removed after a restart too.
OWNED_KINDS = (
    "ConfigMap",
    "DaemonSet",
    "Deployment",
    "Service",
    "Role",
    "RoleBinding",
    "ServiceAccount",
    "NetworkPolicy",
)


@dataclass
class HubMemory:
    """What one hub's reconciler remembers between rounds (rebuilt after a restart)."""

    # the hub's pullers as last seen: the watch, our applies, a LIST every Settings.puller_relist
    pullers: PullerCache
    applied: dict[Ident, str] = field(default_factory=dict)  # (kind, name) -> hash applied
    owned: set[Ident] | None = None  # objects of this hub known to exist; None: not looked up yet
    deployed_fingerprint: str | None = None  # values+chart known to be deployed
    release: tuple[str, object, float] | None = None  # (fingerprint, ReleaseOutcome | ReleaseFailed, when)
    shard_images: dict[str, dict[str, str]] = field(default_factory=dict)  # shard name -> slug -> image
    pulling: bool = False
    puller_held_since: float | None = None  # when a round first held a puller back (None: none is)
    # puller -> (nodes, images known pulled there): keeps pulled courses PrePulled while a
    # puller rolls out again to add others (desired.puller.known_pulled)
    pulled_on: dict[str, tuple[int, frozenset[str]]] = field(default_factory=dict)
    rounds: int = 0
    # name -> resourceVersion of the referenced Secrets the last round read; None: none read
    secret_versions: dict[str, str | None] | None = None


class HubReconciler:
    def __init__(self, kube: Kube, index: Index, settings: Settings, key: Key, helm):
        self.kube = kube
        self.helm = helm  # coursehub.helm.HelmReleases
        self.index = index
        self.settings = settings
        self.key = key
        self.memory = HubMemory(pullers=PullerCache(max_age=settings.puller_relist))
        self.task: asyncio.Task | None = None
        self.poll_task: asyncio.Task | None = None
        self.release_task: asyncio.Task | None = None

    # -- the loop ----------------------------------------------------------
    def start(self) -> None:
        self.index.hubs_starting[self.key] = time.monotonic() + FIRST_ROUND_GRACE
        self.task = asyncio.create_task(self._loop(), name=f"hub {self.key[0]}/{self.key[1]}")
        self.poll_task = asyncio.create_task(
            self._poll_secrets(), name=f"hub {self.key[0]}/{self.key[1]} secrets"
        )

    async def stop(self) -> None:
        self.index.hubs_starting.pop(self.key, None)
        if self.release_task and not self.release_task.done():
            # Give a running helm a moment to finish; one cut short leaves the release pending,
            # which the next start repairs (HelmReleases._make_proceedable). Waiting longer
            # would outlast the pod's termination grace period anyway.
            await asyncio.wait([self.release_task], timeout=10)
            self.release_task.cancel()
        tasks = [t for t in (self.poll_task, self.task) if t]
        for task in tasks:
            task.cancel()
        if tasks:
            # asyncio.wait, not `await task` under suppress(CancelledError): a cancellation of
            # stop() itself (a handler cut short) must not be swallowed.
            await asyncio.wait(tasks)
        self.index.set_burst_pull(self.key, None)  # after the loop: a round in flight may set it

    async def _loop(self) -> None:
        wake = self.index.hub_wakeups.setdefault(self.key, asyncio.Event())
        # The first round waits until the watches replayed everything listed at start: a round
        # over a half-filled index would unpublish the courses not seen yet (state.Index.listed).
        await self.index.listed.wait()
        wake.set()  # first round right away
        attempt = 0
        busy = False  # changes arrived while the last round ran
        last_start = time.monotonic()
        while True:
            if self.memory.puller_held_since is not None:
                # A puller waits for the end of the burst: once no change came for the quiet
                # window, a round that is no burst writes it.
                timeout = self.settings.debounce
            elif self.memory.pulling:
                timeout = self.settings.rollout_poll
            else:
                timeout = self.settings.resync_interval
            woken = await aio.wait_event(wake, timeout)
            coming = False
            if woken:
                coming = await self._coalesce(
                    wake, busy, first_change=last_start if busy else time.monotonic()
                )
            burst = woken and busy and self.settings.debounce > 0
            # Cleared before the round: whatever sets it from here on arrived during the round.
            wake.clear()
            started = last_start = time.monotonic()
            self.index.hub_round_started(self.key)
            try:
                await self.reconcile(burst=burst, pullers_wait=burst and coming)
                attempt = 0
                busy = wake.is_set()
                metrics.RECONCILES.labels(kind="JupyterHubDeployment", result="ok").inc()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempt += 1
                busy = False
                self.memory.pullers.forget()  # what the round saw may be wrong: list again
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
                await aio.wait_event(wake, backoff.delay(attempt))
                wake.set()
            finally:
                self.index.hub_round_ended(self.key)
                metrics.RECONCILE_SECONDS.labels(kind="JupyterHubDeployment").observe(
                    time.monotonic() - started
                )

    async def _poll_secrets(self) -> None:
        """Notice a rotated (or newly created) referenced Secret without watching Secrets.

        The operator may `get` Secrets, never list or watch them (the chart's RBAC): every
        `secret_poll` seconds it GETs, by name, the Secrets this hub references, and wakes the
        hub only when a resourceVersion differs from what its last round read. Cost: one GET
        per referenced Secret (1-3 per hub) per interval, and no writes.
        """
        while True:
            await asyncio.sleep(self.settings.secret_poll)
            hub = self.index.hubs.get(self.key)
            seen = self.memory.secret_versions
            if hub is None or hub.deleting or seen is None:
                continue  # no round has read them yet (or this hub does not own its namespace)
            try:
                now = await self._read_secrets(hub)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the next poll or round tries again
                log.info("hub %s/%s: reading its Secrets failed (%s: %s)", *self.key, type(e).__name__, e)
                continue
            if secret_versions(now) != seen:
                self.index.wake_hub(self.key)

    async def _coalesce(self, wake: asyncio.Event, busy: bool, first_change: float) -> bool:
        """Wait as long as desired.hub_round.round_delay says: not at all for a change that found
        the hub at rest, a short quiet window for changes that came during the last round.
        Returns whether changes are still coming (the wait ended at its cap, not in a quiet
        window: desired.hub_round.changes_still_coming)."""

        # The quiet window counts from the last change itself, not from now: after a long round
        # (a 1,000-course burst) whose changes stopped early, the next round starts at once; so
        # does a round woken only by news (a puller rolled out: Index.wake_hub(change=False)).
        def latest_change() -> float:
            return min(self.index.hubs_changed.get(self.key, 0.0), time.monotonic())

        last_change = latest_change()
        while True:
            delay = round_delay(
                now=time.monotonic(),
                busy=busy,
                first_change=first_change,
                last_change=last_change,
                debounce=self.settings.debounce,
                debounce_max=self.settings.debounce_max,
            )
            if delay <= 0:
                break
            wake.clear()
            if not await aio.wait_event(wake, delay):
                break
            last_change = latest_change()
        return changes_still_coming(
            now=time.monotonic(), last_change=last_change, debounce=self.settings.debounce
        )

    # -- one round ---------------------------------------------------------
    async def reconcile(self, *, burst: bool = False, pullers_wait: bool = False) -> None:
        """One round; `burst`: changes came in during the previous one (its courses' statuses
        may wait for their pull); `pullers_wait`: and they still come (no quiet window passed),
        so pullers that would grow wait for the burst's end."""
        hub = self.index.hubs.get(self.key)
        raw = self.index.raw_hubs.get(self.key)
        if hub is None or raw is None or hub.deleting:
            return
        self.memory.rounds += 1
        started = time.monotonic()
        observed, live = await self.observe(hub, raw, burst=pullers_wait)
        plan = plan_round(observed)
        failures = await self.write(hub, raw, plan, live)
        conds, pubs = fold_failures(plan, failures)

        self.memory.deployed_fingerprint = plan.deployed_fingerprint
        self.memory.pulling = plan.pulling
        self.memory.pulled_on = plan.pulled_on
        if not plan.pullers_held:
            self.memory.puller_held_since = None
        elif self.memory.puller_held_since is None:
            self.memory.puller_held_since = started
        self.index.set_burst_pull(
            self.key,
            burst_pull_deadline(
                now=time.monotonic(),
                previous=self.index.burst_pulls.get(self.key),
                burst=burst,
                pullers_held=bool(plan.pullers_held),
                pulling=plan.pulling,
                new_pulling=newly_pulling(
                    {k: self.index.publications.get(k, {}).get(hub.ref) for k in pubs or {}}, pubs or {}
                ),
                puller_hold_max=self.settings.puller_hold_max,
                rollout_wait=self.settings.status_hold_max,
            ),
        )
        metrics.PREPULL_READY.labels(namespace=hub.namespace, hub=hub.name).set(0 if plan.pulling else 1)
        metrics.COURSES_PER_HUB.labels(namespace=hub.namespace, hub=hub.name).set(plan.courses)
        if pubs is not None:
            self.index.set_publications(hub.ref, pubs)
        if self.index.hubs_starting.pop(self.key, None) is not None:
            # Statuses held back for this first round (the writer skips unchanged ones).
            self.index.course_changed(*self.index.courses)
        self.index.hub_round_done(self.key, started)
        for type_, reason, message in plan.events:
            await self.kube.event(raw, reason=reason, message=message, type_=type_)

        fields: dict = {
            "observedGeneration": hub.generation,
            "url": f"https://{hub.spec.domain}/",
            "courses": plan.courses,
        }
        if plan.release:
            fields["release"] = plan.release
        stored = await status_io.write_status(self.kube, raw, fields, conds, hub.generation)
        if stored is not None and self.key in self.index.raw_hubs:
            self.index.raw_hubs[self.key] = {**self.index.raw_hubs[self.key], "status": stored}

    # -- observe -------------------------------------------------------------
    async def observe(
        self, hub: HubRecord, raw: dict, *, burst: bool = False
    ) -> tuple[Observed, dict[Ident, dict | None]]:
        """Every read of the round; returns what was read and the live objects seen (by ident)."""
        idx = self.index
        base = dict(
            hub=hub,
            hubs=tuple(idx.hubs.values()),
            courses=tuple(idx.courses.values()),
            namespace_labels=idx.namespace_labels,
            status=raw.get("status") or {},
        )
        if namespace_owner(idx.hubs.values(), hub.namespace).key != hub.key:
            return Observed(**base), {}  # type: ignore[arg-type]
        mem = self.memory
        ns = hub.namespace
        live: dict[Ident, dict | None] = {}
        if mem.owned is None:
            # Once per process: the list answers also serve as this round's live objects, and
            # the DaemonSets among them as the pullers' first LIST.
            mark = mem.pullers.list_begins()
            discovered = await self._discover_owned(hub)
            mem.owned = set(discovered)
            live.update(discovered)
            mem.pullers.listed(
                (
                    o
                    for (kind, name), o in discovered.items()
                    if kind == "DaemonSet" and puller_mod.chunk_of(name)
                ),
                mark,
                time.monotonic(),
            )

        # The round's reads go out together: under a burst's status writes each answer waits its
        # turn at the API server (~0.1 s), and one after another they made a round's observation
        # 0.4-0.5 s of the time between a puller's rollout and its courses turning Ready.
        index_cm, listed_pullers, secrets = await asyncio.gather(
            self.kube.get_or_none(CONFIG_MAPS, allowlist_mod.ALLOWLIST_CONFIGMAP, ns),
            self._live_pullers(hub),
            self._read_secrets(hub),
        )
        live[("ConfigMap", allowlist_mod.ALLOWLIST_CONFIGMAP)] = index_cm
        shards = allowlist_mod.index_shards(index_cm)
        for name in shards:
            # Content-addressed: a shard read once is known for good.
            if name not in mem.shard_images:
                cm = live.get(("ConfigMap", name)) or await self.kube.get_or_none(CONFIG_MAPS, name, ns)
                if cm is None:
                    continue
                mem.shard_images[name] = allowlist_mod.shard_images(cm)
            mem.owned.add(("ConfigMap", name))
        live_allowlist = allowlist_mod.previously_published(index_cm) if not shards else {}
        for name in shards:
            live_allowlist.update(mem.shard_images.get(name, {}))

        # Every chunk of both kinds in one list (a hub with many courses has several each).
        pullers: dict[str, dict | None] = {puller_mod.GENERAL: None, puller_mod.GPU: None}
        pullers.update(
            {
                ident[1]: None
                for ident in mem.owned
                if ident[0] == "DaemonSet" and puller_mod.chunk_of(ident[1])
            }
        )
        for found in listed_pullers:
            if puller_mod.chunk_of(found["metadata"]["name"]):
                pullers[found["metadata"]["name"]] = found
        for name, ds in pullers.items():
            live[("DaemonSet", name)] = ds
        for ident, obj in live.items():
            if obj is None:
                mem.owned.discard(ident)
                # Deleted behind our back (kubectl delete): the same manifest is applied again.
                mem.applied.pop(ident, None)
            else:
                mem.owned.add(ident)
        mem.secret_versions = secret_versions(secrets)

        release = None
        if mem.release is not None:
            want, outcome, when = mem.release
            age = time.monotonic() - when
            if isinstance(outcome, ReleaseFailed):
                release = ReleaseResult(want, False, outcome.reason, outcome.message, age=age)
            else:
                release = ReleaseResult(
                    want,
                    True,
                    revision=outcome.revision,  # type: ignore[attr-defined]
                    chart_version=outcome.chart_version,  # type: ignore[attr-defined]
                    changed=outcome.changed,  # type: ignore[attr-defined]
                    age=age,
                )
        observed = Observed(
            **base,  # type: ignore[arg-type]
            live_allowlist=live_allowlist,
            live_index=index_cm,
            live_pullers=pullers,
            pulled_before=dict(mem.pulled_on),
            burst=burst,
            puller_held_for=None
            if mem.puller_held_since is None
            else time.monotonic() - mem.puller_held_since,
            puller_hold_max=self.settings.puller_hold_max,
            puller_images_max=self.settings.puller_images_max,
            secrets=secrets,
            owned=frozenset(mem.owned),
            deployed_fingerprint=mem.deployed_fingerprint,
            release=release,
            release_running=self.release_task is not None and not self.release_task.done(),
            operator_image=self.settings.operator_image,
            chart_policy=self.settings.chart_policy(),
            tenant_service_account=self.settings.tenant_service_account,
            tenant_cluster_role=self.settings.tenant_cluster_role,
        )
        return observed, live

    async def _live_pullers(self, hub: HubRecord) -> list[dict]:
        """The hub's puller DaemonSets: from the watch, or a LIST when that view is too old."""
        cache = self.memory.pullers
        if cache.needs_list(time.monotonic()):
            mark = cache.list_begins()
            listed = await self.kube.list(
                DAEMON_SETS, hub.namespace, label_selector=puller_mod.puller_selector(hub)
            )
            cache.listed(listed, mark, time.monotonic())
        return list(cache.bodies.values())

    def note_puller(self, event_type: str | None, body: dict) -> None:
        """A watch event about one of this hub's pullers (handlers.puller_event)."""
        if event_type == "DELETED":
            self.memory.pullers.note_deleted(body)
        else:
            self.memory.pullers.note(body, from_watch=True)

    async def _read_secrets(self, hub: HubRecord) -> dict[str, dict | None]:
        """The Secrets the hub references, by name (never listed: the chart's RBAC)."""
        names = required_secret_names(hub)
        found = await asyncio.gather(*(self.kube.get_or_none(SECRETS, name, hub.namespace) for name in names))
        return dict(zip(names, found, strict=True))

    async def _discover_owned(self, hub: HubRecord) -> dict[Ident, dict]:
        selector = f"app.kubernetes.io/managed-by=coursehub,coursehub.dev/hub={hub.name}"
        found: dict[Ident, dict] = {}
        for kind in OWNED_KINDS:
            try:
                items = await self.kube.list(BY_KIND[kind], hub.namespace, label_selector=selector)
            except KubeError as e:
                if e.status == 404:  # not served here: nothing of ours to prune
                    continue
                if e.status == 403:
                    # The chart grants list on every owned kind; a narrower grant must not stop
                    # the hub, but unwanted objects of this kind then stay until deleted by hand.
                    log.warning(
                        "hub %s/%s: may not list %s in %s, so %s objects it no longer wants are not "
                        "pruned: grant list on them (charts/coursehub-operator namespacedRules)",
                        *self.key,
                        BY_KIND[kind].plural,
                        hub.namespace,
                        kind,
                    )
                    continue
                raise
            found.update({(kind, i["metadata"]["name"]): i for i in items})
        return found

    # -- write ---------------------------------------------------------------
    async def write(
        self, hub: HubRecord, raw: dict, plan: Plan, live: dict[Ident, dict | None]
    ) -> dict[str, str]:
        """Run the plan's steps in order, each on its own; returns step -> error for the failed ones."""
        failures: dict[str, str] = {}
        for step in plan.steps:
            if step.name in skipped_steps(failures):
                continue
            try:
                await self._run_step(hub, raw, step, live)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures[step.name] = f"{type(e).__name__}: {e}"
                log.warning(
                    "hub %s/%s: writing the %s objects failed (%s: %s)",
                    *self.key,
                    step.name,
                    type(e).__name__,
                    e,
                    exc_info=not isinstance(e, (*TRANSIENT_API_ERRORS, KubeError)),
                )
        if plan.run_release is not None and "release" not in skipped_steps(failures):
            want, chart, values, user = plan.run_release
            # Helm runs beside the reconciler (an install waits for the hub's pods); the task
            # wakes the hub when it is done.
            self.release_task = asyncio.create_task(self._run_release(want, hub, chart, values, user))
        return failures

    async def _run_step(self, hub: HubRecord, raw: dict, step: Step, live: dict[Ident, dict | None]) -> None:
        mem = self.memory
        assert mem.owned is not None
        for manifest in step.apply:
            ident = (manifest["kind"], manifest["metadata"]["name"])
            if manifest.get("immutable") and ident in mem.owned:
                continue  # content-addressed (allowlist shards): the name says the content
            known = live.get(ident, None if ident not in mem.owned else "unknown")
            await self._apply(raw, manifest, live=known)
            mem.owned.add(ident)
        for kind, name in step.delete:
            await self.kube.delete(BY_KIND[kind], name, hub.namespace)
            if kind == "DaemonSet":
                mem.pullers.dropped(name)
            mem.owned.discard((kind, name))
            mem.applied.pop((kind, name), None)
            mem.shard_images.pop(name, None)

    async def _apply(self, owner_raw: dict, manifest: dict, *, live: dict | str | None = "unknown") -> None:
        """Server-side apply when the desired manifest differs from what was last applied.

        The hash of the desired manifest rides on the object as an annotation, so after an
        operator restart one read (not a write) tells whether anything changed.
        """
        manifest = json.loads(json.dumps(manifest))
        manifest["metadata"]["ownerReferences"] = [owner_reference(owner_raw)]
        digest = fingerprint(manifest)
        ident = (manifest["kind"], manifest["metadata"]["name"])
        if self.memory.applied.get(ident) == digest:
            return
        if live == "unknown":
            live = await self.kube.get_or_none(
                BY_KIND[manifest["kind"]], manifest["metadata"]["name"], manifest["metadata"]["namespace"]
            )
        if isinstance(live, dict) and (live["metadata"].get("annotations") or {}).get(APPLIED_HASH) == digest:
            self.memory.applied[ident] = digest
            return
        manifest["metadata"].setdefault("annotations", {})[APPLIED_HASH] = digest
        answer = await self.kube.apply(manifest)
        self.memory.applied[ident] = digest
        if ident[0] == "DaemonSet" and puller_mod.chunk_of(ident[1]):
            self.memory.pullers.note(answer, from_watch=False)

    # -- release -------------------------------------------------------------
    async def _run_release(self, want: str, hub: HubRecord, chart, values: dict, user: str) -> None:
        try:
            # Read-only when the deployed release already matches (also right after a restart);
            # a spec that just failed is reported again without another upgrade attempt.
            result: object = await self.helm.ensure_release(
                hub.name, hub.namespace, chart, values, as_user=user
            )
        except ReleaseFailed as e:
            result = e
        except Exception as e:  # helm missing, cluster unreachable...
            result = ReleaseFailed("ReleaseFailed", f"{type(e).__name__}: {e}")
        self.memory.release = (want, result, time.monotonic())
        self.index.wake_hub(self.key, change=False)


# -- finalizer ----------------------------------------------------------------
async def ensure_finalizer(kube: Kube, raw: dict) -> None:
    await add_finalizer(kube, HUBS, raw, FINALIZER)


async def namespace_terminating(kube: Kube, namespace: str) -> bool:
    """The hub's namespace is being deleted (or is gone).

    Then the namespace takes the release with it: Helm's release Secrets and every object the
    release made, which are all in that namespace (the tenant identity Helm impersonates may
    create nothing else: policy.check_chart, Forbidden). An uninstall would only be refused,
    since the namespace's deletion removes the tenant RoleBinding too, and the hub's finalizer
    would hold the namespace for ever. Unknown (no right to read namespaces): not terminating.
    """
    try:
        ns = await kube.get_or_none(NAMESPACES, namespace)
    except KubeError as e:
        if e.status == 403:
            return False
        raise
    return ns is None or bool(ns["metadata"].get("deletionTimestamp"))


async def finish_deletion(
    kube: Kube, index: Index, key: Key, raw: dict | None, owns_release: bool, helm, as_user: str | None
) -> None:
    """Uninstall the release (the database is never touched; not when the namespace itself is
    being deleted: namespace_terminating), forget the hub's courses, let it go.

    `as_user`: the identity Helm impersonates for this hub (its RoleBinding stays until the
    hub is gone, so the uninstall has the same rights as the install).
    """
    if raw is None:  # already gone
        return
    if owns_release and not await namespace_terminating(kube, key[0]):
        await helm.uninstall_release(key[1], key[0], as_user=as_user)
    # Owned objects (allowlist, pullers, gateway, RBAC) go with the garbage collector.
    index.set_publications(f"{key[0]}/{key[1]}", {})
    await remove_finalizer(kube, HUBS, raw, FINALIZER)
