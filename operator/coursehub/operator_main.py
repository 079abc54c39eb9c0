"""Start the operator: kopf with our handlers, metrics, liveness, logging."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import urllib.parse
from typing import TYPE_CHECKING

import kopf

from . import metrics
from .settings import SettingsError
from .settings import current as current_settings

if TYPE_CHECKING:
    from .leadership import Elector


def _name_as_logger_field(record: logging.LogRecord) -> bool:
    # python-json-logger emits a record's non-standard attributes as fields ("name" is standard).
    record.logger = record.name
    return True


def configure_logging(json_logs: bool) -> None:
    # kopf's own setup: one stderr handler on the root logger. JSON puts the object reference
    # under "object" for log pipelines; text prefixes it as [namespace/name].
    kopf.configure(log_format=kopf.LogFormat.JSON if json_logs else kopf.LogFormat.FULL, log_prefix=None)
    if json_logs:
        # kopf's JSON has message, severity, timestamp and object; add which logger spoke.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_name_as_logger_field)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # pyhelm3 logs every command, and a WARNING for the expected "release not found" before an
    # install; our own log lines and conditions report what matters.
    logging.getLogger("pyhelm3").setLevel(logging.ERROR)
    # kopf says "Handler ... succeeded" for every watch event: noise at our volume.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's change detection, turned off: every handler here is an event handler
    (kopf.on.event), which never reads a diff, yet kopf's default storage deep-copies the whole
    body to build one on every event: ~15% of the operator's CPU in a 1,000-course burst
    (py-spy). `test_operator_main` checks that no handler needs one."""

    def build(self, *, body: kopf.Body, extra_fields: object = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_kopf(settings: kopf.OperatorSettings, *, listed_namespaces: bool) -> None:
    """kopf's settings for our handlers; `listed_namespaces`: run with -n NS, not cluster-wide."""
    # Kopf stores nothing on our objects: we use only event handlers.
    settings.persistence.finalizer = "coursehub.dev/kopf-unused"
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    # A watch that goes silent (API server restarted, a proxy dropped it) is re-opened.
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30
    # kopf retries a refused request with growing pauses (1, 1, 2, 3, 5, 8, 13, 21 s by default),
    # so after an API server restart a watch could stay away for 20 s more; a short, flat
    # schedule reconnects within seconds, and the watch loop itself never gives up.
    settings.networking.error_backoffs = [0.5, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    # A watch opened while a restarted API server is still starting can stay silent (seen
    # in the fault tests): re-open any watch that has been quiet for 15 s. An idle watch
    # costs one cheap re-open per resource then, never a write.
    settings.watching.inactivity_timeout = 15
    # kopf keeps a worker (a task, a queue and the object's last body) per object that had an
    # event in the last `idle_timeout` seconds (5 by default): in a 10,000-course burst that
    # is thousands at once. Our handlers only update the index, so a worker that exits
    # sooner loses nothing; a later event starts a new one.
    settings.queueing.idle_timeout = 1.0
    if listed_namespaces:
        # Watch exactly the listed namespaces. kopf's namespace scanning drops a namespace
        # whose deletion has begun but whose conditions are not (yet) True, never takes it
        # back, and never adds one that is terminating when it starts: a hub there would
        # keep its finalizer, and the namespace, for ever (docs/install.md). The cost: CRDs
        # installed after start are noticed at the next start.
        settings.scanning.disabled = True


def build_registry(watch_namespaces: bool, namespaces: tuple[str, ...] = ()) -> kopf.OperatorRegistry:
    """kopf's registry with our handlers; they share one Runtime through kopf's `memo`."""
    from .handlers import Runtime, register
    from .kube import Kube

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
        configure_kopf(settings, listed_namespaces=bool(namespaces))
        memo.runtime = Runtime(await Kube.from_environment(), current_settings(), namespaces)
        memo.runtime.start()

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        # kopf's own loaders: in-cluster service account first, then KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_):
        if getattr(memo, "runtime", None) is not None:
            await memo.runtime.stop()

    register(registry, watch_namespaces=watch_namespaces)
    return registry


def run(*, namespaces: list[str], all_namespaces: bool, liveness: str | None) -> int:
    try:
        # Read once per process; every later current_settings() returns this instance.
        settings = current_settings()
    except SettingsError as e:
        print(f"coursehub run: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.json_logs)
    if settings.shard and (all_namespaces or not namespaces):
        print(
            f"coursehub run: COURSEHUB_SHARD={settings.shard} needs the shard's namespaces (-n NS ...), "
            "not every namespace: a shard claims each of its namespaces",
            file=sys.stderr,
        )
        return 2
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    tune_gc()
    clusterwide = all_namespaces or not namespaces
    if not settings.leader_election:
        _run_kopf(namespaces=[] if clusterwide else namespaces, clusterwide=clusterwide, liveness=liveness)
        return 0
    return _run_elected(settings, namespaces=namespaces, clusterwide=clusterwide, liveness=liveness)


# Allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Fewer, cheaper garbage collections in bursts.

    The index and kopf's per-object state are long-lived objects created by the thousand in a
    burst; with CPython's defaults bench_scale's 1,000-course burst ran 12 full collections of
    ~0.1 s each (1.2 s of a 12 s burst), each one walking every module, class and schema
    imported at start. Those live as long as the process: freezing them takes them out of
    every collection. Most garbage here has no cycles and is freed by reference counting
    anyway, so collecting less often costs little memory.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def _run_kopf(
    *,
    namespaces: list[str],
    clusterwide: bool,
    liveness: str | None,
    elector: Elector | None = None,
) -> bool:
    """Run kopf until a signal stops it, or (with an elector) until the served namespaces
    change; True in the latter case."""
    served = () if clusterwide else tuple(namespaces)
    registry = build_registry(watch_namespaces=clusterwide, namespaces=served)

    async def main() -> bool:
        # An asyncio flag: kopf waits for a threading.Event in an executor thread, which would
        # keep asyncio.run from returning after a signal.
        stop = asyncio.Event()
        changed = False
        if elector is not None:
            loop = asyncio.get_running_loop()

            def on_change() -> None:  # called from the election thread
                nonlocal changed
                changed = True
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(stop.set)

            elector.on_change = on_change
            if elector.served is not None and elector.served != frozenset(namespaces):
                on_change()  # changed before the callback was in place
        try:
            await kopf.operator(
                registry=registry,
                clusterwide=clusterwide,
                namespaces=namespaces,
                standalone=True,
                liveness_endpoint=liveness or None,
                memo=kopf.Memo(),
                stop_flag=stop if elector is not None else None,
            )
        finally:
            if elector is not None:
                elector.on_change = None
        return changed

    return asyncio.run(main())


def _health_address(liveness: str | None) -> tuple[str, int] | None:
    if not liveness:
        return None
    url = urllib.parse.urlsplit(liveness)
    return url.hostname or "0.0.0.0", url.port or 80


def _run_elected(settings, *, namespaces: list[str], clusterwide: bool, liveness: str | None) -> int:
    """Wait for the Lease; run kopf only while leading (again when the served namespaces change).

    kopf's peering only pauses lower-priority peers, and a paused peer still watches everything;
    a Lease is what Kubernetes' own controllers use, with a clear rule for who may write when
    (docs/scaling.md). While waiting this process reads the Lease and nothing else.
    """
    from .leadership import ElectionConfig, Elector, LeaderEndpoint, default_identity, lease_namespace

    try:
        lease_ns = lease_namespace(settings.lease_namespace)
    except ValueError as e:
        print(f"coursehub run: {e}", file=sys.stderr)
        return 2
    config = ElectionConfig(
        name=settings.lease_name,
        namespace=lease_ns,
        identity=settings.identity or default_identity(),
        duration=settings.lease_duration,
        renew=settings.lease_renew,
        renew_deadline=settings.lease_renew_deadline,
        retry=settings.lease_retry,
        shard=settings.shard,
        namespaces=tuple(namespaces) if settings.shard else (),
        # Pushes go to the leader only: its Service has no selector, the leader writes its slice.
        endpoint=LeaderEndpoint(settings.webhook_service, settings.pod_ip, settings.webhook_port)
        if settings.webhook_service and settings.pod_ip and settings.webhook_port
        else None,
    )
    # The health endpoint is ours (a standby runs no kopf): it answers for leader and standby.
    elector = Elector(config, health=_health_address(liveness)).start()
    logging.getLogger(__name__).info(
        "waiting for Lease %s/%s as %s", config.namespace, config.name, config.identity
    )
    while True:
        elector.serving.wait()
        served = elector.served
        if served is not None and not served:
            # Every namespace of the shard is claimed by another shard too: nothing to run.
            changed = threading.Event()
            elector.on_change = changed.set
            changed.wait(timeout=settings.lease_renew)  # (a change just before is seen on the next turn)
            elector.on_change = None
            continue
        if served is None:
            run_ns, wide = ([] if clusterwide else namespaces), clusterwide
        else:
            run_ns, wide = sorted(served), False
        if not _run_kopf(namespaces=run_ns, clusterwide=wide, liveness=None, elector=elector):
            break  # a signal stopped kopf: this process is done
        logging.getLogger(__name__).info("the served namespaces changed: restarting the handlers")
    # Every reconciler has stopped: hand the Lease over now rather than after it expires.
    elector.release()
    return 0
