"""Two replicas, one active; shards by namespace.

Leader election: every replica of a shard competes for one coordination.k8s.io Lease (as
client-go's leaderelection does). Only the holder runs kopf and the reconcilers; a standby
reads the Lease every `lease_retry` seconds and does nothing else. The holder renews every
`lease_renew` seconds; if it cannot renew for `lease_renew_deadline` seconds, or reads that
someone else holds the Lease, it kills its helm children and exits at once (no cleanup that
could write): a standby takes the Lease only after it saw no renewal for `lease_duration`
seconds by its own clock, which is longer than the deadline, so two leaders never write.

Shards: a shard's leader claims each of its namespaces with a Lease named
`coursehub-namespace-<namespace>` (in the lease namespace), holder = the shard's name and an
annotation listing every shard that wants the namespace with its last claim time. A shard
serves a namespace only while no other shard's claim is fresh (changed within
`lease_duration`, by this process's clock); when two shards want one namespace neither serves
it, both say so (log, a Warning Event and Ready=False, reason ShardConflict, on each hub
there) and the objects already there stay as they are.

The decisions are pure (`leader_step`, `claim_step`, `overlapping_namespaces`); `Elector`
does the I/O in a thread of its own, so a busy operator loop never delays a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import aio, metrics
from .api.common import now_rfc3339
from .conditions import find as find_condition
from .desired.leader_endpoint import leader_endpoint_slice, slice_write
from .kube import HUBS, Conflict, Kube, KubeError, Resource

log = logging.getLogger(__name__)

LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
CLAIMS_ANNOTATION = "coursehub.dev/claims"
CLAIM_PREFIX = "coursehub-namespace-"
# Claim renewals in flight at once: 50 namespaces one after another took over 5 s under load.
CLAIM_CONCURRENCY = 8
SHARD_CONFLICT = "ShardConflict"
# The exit code of a leader that lost its Lease (or could not renew it in time).
EXIT_LOST_LEASE = 3
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def micro_time(wall: float) -> str:
    """A metav1.MicroTime (what Lease spec times are)."""
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_identity() -> str:
    # The pod name, plus a random part: a restarted container must not pass for its predecessor.
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def lease_namespace(configured: str | None, sa_file: Path = SA_NAMESPACE) -> str:
    """The namespace holding the Leases: the setting, else the pod's own namespace."""
    if configured:
        return configured
    if sa_file.exists():
        return sa_file.read_text().strip()
    raise ValueError(
        "COURSEHUB_LEASE_NAMESPACE is not set and this is not a pod (no service account namespace "
        "file): set it to the namespace that holds the operator's Leases"
    )


# -- pure: sharding -------------------------------------------------------------
def overlapping_namespaces(shards: dict[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    """namespace -> the shards (sorted) that list it, for every namespace listed more than once."""
    owners: dict[str, set[str]] = {}
    for shard, namespaces in shards.items():
        for ns in namespaces:
            owners.setdefault(ns, set()).add(shard)
    return {ns: tuple(sorted(s)) for ns, s in sorted(owners.items()) if len(s) > 1}


def conflict_message(namespace: str, shards: Iterable[str]) -> str:
    names = sorted(set(shards))
    listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
    return (
        f"namespace {namespace} is claimed by shards {listed}: no shard serves it until it is listed "
        "in one shard only (chart value shards[].namespaces); its objects stay as they are"
    )


# -- pure: the leader Lease ----------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """A Lease record as this process last read it, and since when (its own monotonic clock)."""

    record: tuple
    since: float


@dataclass(frozen=True)
class LeaderStep:
    action: str  # create | take | renew | wait
    body: dict | None  # the Lease to POST (create) or PUT (take, renew)
    seen: Seen | None
    holder: str  # who leads, as far as this read tells


def _lease_body(name: str, namespace: str, spec: dict, meta: dict | None = None) -> dict:
    metadata = {"name": name, "namespace": namespace}
    if meta:
        metadata.update(meta)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}


def leader_step(
    lease: dict | None,
    *,
    identity: str,
    name: str,
    namespace: str,
    duration: float,
    now: float,
    wall: float,
    seen: Seen | None,
) -> LeaderStep:
    """What to do with the leader Lease just read (None: it does not exist).

    Expiry is judged by when *this* process saw the record change (`now`, monotonic), never by
    the renewTime written by another machine's clock, as client-go does.
    """
    stamp = micro_time(wall)
    seconds = max(1, round(duration))
    spec: dict[str, Any]
    if lease is None:
        spec = {
            "holderIdentity": identity,
            "leaseDurationSeconds": seconds,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0,
        }
        return LeaderStep("create", _lease_body(name, namespace, spec), None, identity)
    spec = dict(lease.get("spec") or {})
    holder = str(spec.get("holderIdentity") or "")
    keep = {"resourceVersion": lease["metadata"]["resourceVersion"]}
    if holder == identity:
        spec.update(renewTime=stamp, leaseDurationSeconds=seconds)
        return LeaderStep("renew", _lease_body(name, namespace, spec, keep), seen, identity)
    record = (holder, spec.get("renewTime"), spec.get("leaseTransitions", 0))
    if seen is None or seen.record != record:
        seen = Seen(record, now)
    held_for = float(spec.get("leaseDurationSeconds") or duration)
    if holder and now - seen.since < held_for:
        return LeaderStep("wait", None, seen, holder)
    # Released (no holder) or not renewed for a whole lease duration: take it.
    spec.update(
        holderIdentity=identity,
        leaseDurationSeconds=seconds,
        acquireTime=stamp,
        renewTime=stamp,
        leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1,
    )
    return LeaderStep("take", _lease_body(name, namespace, spec, keep), seen, identity)


def released(lease: dict, identity: str, wall: float) -> dict | None:
    """The Lease given up by `identity` on a clean stop (a standby takes it at once), or None
    when someone else holds it now."""
    spec = dict(lease.get("spec") or {})
    if spec.get("holderIdentity") != identity:
        return None
    spec.update(holderIdentity="", renewTime=micro_time(wall), leaseDurationSeconds=1)
    meta = lease["metadata"]
    return _lease_body(meta["name"], meta["namespace"], spec, {"resourceVersion": meta["resourceVersion"]})


# -- pure: namespace claims ------------------------------------------------------------
@dataclass(frozen=True)
class ClaimStep:
    create: bool  # POST (the Lease did not exist) or PUT
    body: dict
    serve: bool  # this shard may serve the namespace
    others: tuple[str, ...]  # other shards that want it now (sorted)
    seen: dict[str, tuple[str, float]]  # other shard -> (its claim stamp, when first read so)


def claim_step(
    lease: dict | None,
    *,
    shard: str,
    namespace: str,
    lease_ns: str,
    duration: float,
    now: float,
    wall: float,
    seen: dict[str, tuple[str, float]],
) -> ClaimStep:
    """Renew `shard`'s claim on `namespace` and decide whether it may serve it.

    Another shard's claim is fresh while its stamp keeps changing (judged by this process's
    clock); stale claims (a shard removed, or reconfigured without this namespace) are dropped.
    """
    stamp = micro_time(wall)
    meta = dict((lease or {}).get("metadata") or {})
    try:
        claims = json.loads((meta.get("annotations") or {}).get(CLAIMS_ANNOTATION) or "{}")
    except ValueError:
        claims = {}
    if not isinstance(claims, dict):
        claims = {}
    new_seen: dict[str, tuple[str, float]] = {}
    for other, other_stamp in claims.items():
        if other == shard:
            continue
        prev = seen.get(other)
        since = prev[1] if prev and prev[0] == other_stamp else now
        if now - since < duration:
            new_seen[other] = (str(other_stamp), since)
    others = tuple(sorted(new_seen))
    kept = {o: claims[o] for o in others}
    kept[shard] = stamp
    spec = dict((lease or {}).get("spec") or {})
    holder = spec.get("holderIdentity") or ""
    serve = not others
    if serve:
        if holder != shard:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
            spec["acquireTime"] = stamp
        holder = shard
    elif holder not in others:
        holder = ""  # contested: nobody serves it
    spec.update(holderIdentity=holder, renewTime=stamp, leaseDurationSeconds=max(1, round(duration)))
    spec.setdefault("leaseTransitions", 0)
    out_meta = {
        "annotations": {
            **(meta.get("annotations") or {}),
            CLAIMS_ANNOTATION: json.dumps(kept, sort_keys=True),
        },
        "labels": {"app.kubernetes.io/managed-by": "coursehub", "coursehub.dev/namespace-claim": "true"},
    }
    if lease is not None:
        out_meta["resourceVersion"] = meta["resourceVersion"]
    body = _lease_body(CLAIM_PREFIX + namespace, lease_ns, spec, out_meta)
    return ClaimStep(lease is None, body, serve, others, new_seen)


def conflict_status(status: dict | None, message: str) -> dict | None:
    """The hub status with Ready=False (ShardConflict, `message`) and every other field kept,
    or None when it already says exactly that."""
    status = dict(status or {})
    conds = [dict(c) for c in status.get("conditions") or []]
    ready = find_condition(conds, "Ready") or {}
    if (ready.get("status"), ready.get("reason"), ready.get("message")) == ("False", SHARD_CONFLICT, message):
        return None
    kept = ready.get("status") == "False" and ready.get("lastTransitionTime")
    entry = {
        "type": "Ready",
        "status": "False",
        "reason": SHARD_CONFLICT,
        "message": message,
        "lastTransitionTime": kept or now_rfc3339(),
    }
    if "observedGeneration" in ready:
        entry["observedGeneration"] = ready["observedGeneration"]
    status["conditions"] = [entry] + [c for c in conds if c.get("type") != "Ready"]
    return status


# -- I/O ------------------------------------------------------------------------------
def die(message: str, code: int = EXIT_LOST_LEASE) -> None:
    """Stop writing at once: kill our child processes (a running helm) and exit without any
    cleanup (cleanup handlers could write)."""
    log.critical("%s: exiting now so that no write of this process follows", message)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(code)


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            for child in (task / "children").read_text().split():
                out.append(int(child))
                out.extend(_descendants(int(child)))
    return out


@dataclass(frozen=True)
class LeaderEndpoint:
    """The webhook Service (no selector) whose EndpointSlice the leader points at itself."""

    service: str
    address: str  # this pod's IP (COURSEHUB_POD_IP)
    port: int  # the webhook port


@dataclass
class ElectionConfig:
    name: str  # the leader Lease
    namespace: str  # where every Lease lives
    identity: str
    duration: float
    renew: float
    renew_deadline: float
    retry: float
    shard: str | None = None
    namespaces: tuple[str, ...] = ()  # the shard's namespaces (claimed when shard is set)
    endpoint: LeaderEndpoint | None = None  # written by the leader only (desired/leader_endpoint.py)

    # Namespace claims say which shard serves a namespace; they change only when shards are
    # reconfigured, so they are renewed once per lease duration (one PUT per namespace), another
    # shard's claim is stale after three, and a leader that could not renew a served
    # namespace's claim for two exits (before any other shard may take the namespace).
    @property
    def claim_period(self) -> float:
        return self.duration

    @property
    def claim_stale(self) -> float:
        return 3 * self.duration

    @property
    def claim_deadline(self) -> float:
        return 2 * self.duration

    # The leader's EndpointSlice is written when it starts leading; after that it is read again
    # this often (a GET, no write unless someone changed or deleted it), never on every renewal.
    @property
    def endpoint_check(self) -> float:
        return 3 * self.duration


@dataclass
class _ClaimState:
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)
    others: tuple[str, ...] = ()
    lease: dict | None = None  # the claim as this process last wrote it


class Elector:
    """Runs the election (and the shard's namespace claims) in a thread of its own.

    `serving` is set while this process leads and knows what it serves; `served` is then the
    namespaces it may serve (None: no shard, everything it was started for). `on_change` is
    called (from the election thread) when `served` changes.
    """

    def __init__(
        self,
        config: ElectionConfig,
        kube_factory: Callable[[], object] | None = None,
        health: tuple[str, int] | None = None,
    ):
        self.config = config
        self._kube_factory = kube_factory or Kube.from_environment
        self._health = health
        self.serving = threading.Event()
        self.served: frozenset[str] | None = None
        self.on_change: Callable[[], None] | None = None
        self.leading = False
        self._seen: Seen | None = None
        self._claims: dict[str, _ClaimState] = {}
        self._last_renewed = 0.0
        self._claimed_at: dict[str, float] = {}  # served namespace -> when its claim was last renewed
        self._next_claims = 0.0
        self._endpoint_task: asyncio.Task | None = None
        self._claims_task: asyncio.Task | None = None
        self._endpoint_next = 0.0  # when the leader's EndpointSlice is next read (0: at once)
        self._last_tick = time.monotonic()
        self._stop = threading.Event()
        self._released = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name="leader-election", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._labels = {"shard": config.shard or ""}
        metrics.LEADER.labels(**self._labels).set(0)

    # -- thread control ---------------------------------------------------------
    def start(self) -> Elector:
        self._thread.start()
        return self

    def release(self, timeout: float = 5.0) -> None:
        """After a clean stop (no more writes from this process): hand the Lease over now."""
        self._stop.set()
        self._released.wait(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive() and time.monotonic() - self._last_tick < max(
            3 * self.config.duration, 30
        )

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            # The election is gone: a leader must not go on without it, and a standby would
            # wait for ever (its health port may be taken, its credentials unreadable).
            die(f"leader election stopped ({type(e).__name__}: {e})")
        finally:
            self._released.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        kube = await self._kube_factory()  # type: ignore[misc]
        runner = await self._serve_health() if self._health else None
        try:
            while not self._stop.is_set():
                self._last_tick = time.monotonic()
                try:
                    await aio.within(self._round(kube), self.config.renew_deadline)
                except (KubeError, OSError, TimeoutError) as e:
                    log.warning("leader election: %s: %s", type(e).__name__, e)
                now = time.monotonic()
                if self.leading and now - self._last_renewed > self.config.renew_deadline:
                    die(
                        f"could not renew Lease {self.config.namespace}/{self.config.name} for "
                        f"{self.config.renew_deadline:g} s (COURSEHUB_LEASE_RENEW_DEADLINE_SECONDS)"
                    )
                for ns in sorted(self.served or ()):
                    if self.leading and now - self._claimed_at.get(ns, now) > self.config.claim_deadline:
                        die(f"could not renew its claim on {ns} for {self.config.claim_deadline:g} s")
                pause = self.config.renew if self.leading else self.config.retry
                if self.leading:  # never sleep past the renew deadline
                    pause = min(pause, self._last_renewed + self.config.renew_deadline - time.monotonic())
                await asyncio.sleep(max(0.05, pause))
            if self.leading:
                await self._release(kube)
        finally:
            if runner is not None:
                await runner.cleanup()
            await kube.close()

    # -- one round --------------------------------------------------------------
    async def _round(self, kube) -> None:
        c = self.config
        started = time.monotonic()
        lease = await kube.get_or_none(LEASES, c.name, c.namespace)
        step = leader_step(
            lease,
            identity=c.identity,
            name=c.name,
            namespace=c.namespace,
            duration=c.duration,
            now=time.monotonic(),
            wall=time.time(),
            seen=self._seen,
        )
        self._seen = step.seen
        if step.action == "wait":
            if self.leading:
                die(f"Lease {c.namespace}/{c.name} is held by {step.holder} now")
            return
        try:
            if step.action == "create":
                await kube.request("POST", LEASES.path(c.namespace), body=step.body, kind="Lease")
            else:
                await kube.request("PUT", LEASES.path(c.namespace, c.name), body=step.body, kind="Lease")
        except Conflict:
            return  # someone wrote it meanwhile: read again next round
        if not self.leading:
            log.info(
                "leading now (Lease %s/%s, identity %s%s)",
                c.namespace,
                c.name,
                c.identity,
                f", shard {c.shard}" if c.shard else "",
            )
            self.leading = True
            metrics.LEADER.labels(**self._labels).set(1)
        self._last_renewed = started
        self._point_endpoint(kube)
        if c.shard:
            self._start_claims(kube)
        self._serve_when_known()

    def _serve_when_known(self) -> None:
        if (
            self.leading
            and not self.serving.is_set()
            and (self.config.shard is None or self.served is not None)
        ):
            self.serving.set()

    def _start_claims(self, kube) -> None:
        """Leader of a shard, after a renewal: renew the namespace claims when due, in a task of
        its own. Inside the renewal round they delayed the Lease: a 10,000-course burst slowed
        50 claim PUTs past the renew deadline and the leader exited (bench_shards); a claim has
        its own deadline (claim_deadline, checked by the loop)."""
        last = self._claims_task
        if last is not None and last.done() and not last.cancelled() and last.exception() is not None:
            e = last.exception()
            # What the round would have done when the claims ran inside it: stop, saying why.
            die(f"renewing the namespace claims failed ({type(e).__name__}: {e})")
        if time.monotonic() < self._next_claims:
            return
        if self._claims_task is None or self._claims_task.done():
            self._claims_task = asyncio.create_task(self._claim_all(kube), name="namespace-claims")

    def _point_endpoint(self, kube) -> None:
        """Leader only, after a renewal: make the webhook Service's EndpointSlice name this pod
        when it is due, in a task of its own so that it never delays a renewal."""
        if self.config.endpoint is None or time.monotonic() < self._endpoint_next:
            return
        if self._endpoint_task is None or self._endpoint_task.done():
            self._endpoint_task = asyncio.create_task(self._write_endpoint(kube), name="leader-endpoint")

    async def _write_endpoint(self, kube) -> None:
        c, ep = self.config, self.config.endpoint
        assert ep is not None
        desired = leader_endpoint_slice(
            service=ep.service, namespace=c.namespace, address=ep.address, port=ep.port, identity=c.identity
        )
        name = desired["metadata"]["name"]
        try:
            current = await kube.get_or_none(ENDPOINT_SLICES, name, c.namespace)
            step = slice_write(current, desired)
            if step is not None:
                verb, body = step
                if verb == "create":
                    await kube.request(
                        "POST", ENDPOINT_SLICES.path(c.namespace), body=body, kind="EndpointSlice"
                    )
                else:
                    # With the resourceVersion read: a late write of a former leader gets a 409.
                    await kube.request(
                        "PUT", ENDPOINT_SLICES.path(c.namespace, name), body=body, kind="EndpointSlice"
                    )
                log.info(
                    "webhook Service %s/%s routes to this leader (%s:%d, EndpointSlice %s)",
                    c.namespace,
                    ep.service,
                    ep.address,
                    ep.port,
                    name,
                )
            self._endpoint_next = time.monotonic() + c.endpoint_check
        except (KubeError, OSError, TimeoutError, ValueError) as e:
            # Webhooks miss this leader until a later round succeeds (polling still notices
            # commits): the next renewal retries, unless a person must act first (a refusal by
            # RBAC, a slice of the other address family), then it is tried less often.
            needs_person = isinstance(e, ValueError) or (isinstance(e, KubeError) and e.status == 403)
            log.warning(
                "pointing EndpointSlice %s/%s at this leader: %s: %s", c.namespace, name, type(e).__name__, e
            )
            self._endpoint_next = time.monotonic() + (c.endpoint_check if needs_person else c.renew)

    async def _claim_all(self, kube) -> None:
        """Every `claim_period`: renew each claim of the shard and decide what it serves.

        A claim is PUT with the resourceVersion this process last wrote (one request per
        namespace); only a 409 (another shard wrote it) costs a read.
        """
        c = self.config
        assert c.shard is not None
        if time.monotonic() < self._next_claims:
            return
        self._next_claims = time.monotonic() + c.claim_period
        gate = asyncio.Semaphore(CLAIM_CONCURRENCY)

        async def claim_one(ns: str) -> bool:
            async with gate:
                return await self._claim(kube, ns)

        results = await asyncio.gather(*(claim_one(ns) for ns in c.namespaces))
        new = frozenset(ns for ns, serve in zip(c.namespaces, results, strict=True) if serve)
        if new != self.served:
            old, self.served = self.served, new
            log.info("shard %s serves %s", c.shard, ", ".join(sorted(new)) or "no namespace")
            if old is not None and self.on_change is not None:
                self.on_change()
        self._serve_when_known()

    async def _claim(self, kube, ns: str) -> bool:
        """Renew this shard's claim on `ns`; whether the shard serves it now."""
        c = self.config
        assert c.shard is not None
        started = time.monotonic()
        state = self._claims.setdefault(ns, _ClaimState())
        was_served = self.served is not None and ns in self.served
        step = None
        try:
            for _attempt in range(2):
                lease = state.lease or await kube.get_or_none(LEASES, CLAIM_PREFIX + ns, c.namespace)
                step = claim_step(
                    lease,
                    shard=c.shard,
                    namespace=ns,
                    lease_ns=c.namespace,
                    duration=c.claim_stale,
                    now=time.monotonic(),
                    wall=time.time(),
                    seen=state.seen,
                )
                try:
                    if step.create:
                        state.lease = await kube.request(
                            "POST", LEASES.path(c.namespace), body=step.body, kind="Lease"
                        )
                    else:
                        state.lease = await kube.request(
                            "PUT",
                            LEASES.path(c.namespace, CLAIM_PREFIX + ns),
                            body=step.body,
                            kind="Lease",
                        )
                    break
                except Conflict:
                    state.lease, step = None, None  # another shard wrote it: read it, once more
        except (KubeError, OSError, TimeoutError) as e:
            log.warning("claiming namespace %s: %s: %s", ns, type(e).__name__, e)
            state.lease, step = None, None
        if step is None:
            return was_served  # until its claim deadline passes (then the process exits)
        state.seen = step.seen
        if step.serve:
            self._claimed_at[ns] = started
        if step.others != state.others:
            state.others = step.others
            if step.others:
                log.error("shard %s: %s", c.shard, conflict_message(ns, (c.shard, *step.others)))
        if step.others:
            await self._report_conflict(kube, ns, conflict_message(ns, (c.shard, *step.others)))
        return step.serve

    async def _report_conflict(self, kube, namespace: str, message: str) -> None:
        """Ready=False (ShardConflict) and one Warning Event on each hub of the namespace."""
        try:
            hubs = await kube.list(HUBS, namespace)
        except KubeError as e:
            log.warning("listing the hubs of %s to report the shard conflict: %s", namespace, e)
            return
        for hub in hubs:
            status = conflict_status(hub.get("status"), message)
            if status is None:
                continue  # already says so (perhaps written by the other shard)
            body = {
                "apiVersion": hub["apiVersion"],
                "kind": hub["kind"],
                "metadata": {"name": hub["metadata"]["name"], "namespace": namespace},
                "status": status,
            }
            try:
                await kube.apply(body, subresource="status")
            except KubeError as e:
                log.warning("writing the shard conflict on %s/%s: %s", namespace, hub["metadata"]["name"], e)
                continue
            await kube.event(hub, reason=SHARD_CONFLICT, message=message, type_="Warning")

    async def _release(self, kube) -> None:
        c = self.config
        with contextlib.suppress(Exception):
            lease = await kube.get_or_none(LEASES, c.name, c.namespace)
            body = released(lease, c.identity, time.time()) if lease else None
            if body is not None:
                await kube.request("PUT", LEASES.path(c.namespace, c.name), body=body, kind="Lease")
                log.info("released Lease %s/%s", c.namespace, c.name)
        self.leading = False
        metrics.LEADER.labels(**self._labels).set(0)

    # -- health ------------------------------------------------------------------
    async def _serve_health(self):
        from aiohttp import web

        async def healthz(_request):
            ok = self.alive()
            role = "leader" if self.leading else "standby"
            return web.Response(status=200 if ok else 503, text=f"{role}\n" if ok else "election stalled\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        assert self._health is not None
        host, port = self._health
        await web.TCPSite(runner, host, port).start()
        return runner


__all__ = [
    "CLAIMS_ANNOTATION",
    "CLAIM_PREFIX",
    "ENDPOINT_SLICES",
    "EXIT_LOST_LEASE",
    "LEASES",
    "SHARD_CONFLICT",
    "ClaimStep",
    "ElectionConfig",
    "Elector",
    "LeaderEndpoint",
    "LeaderStep",
    "Seen",
    "claim_step",
    "conflict_message",
    "conflict_status",
    "default_identity",
    "die",
    "leader_step",
    "lease_namespace",
    "micro_time",
    "overlapping_namespaces",
    "released",
]
