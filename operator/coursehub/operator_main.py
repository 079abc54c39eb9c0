"""Start the operator: kopf with our handlers, metrics, liveness, logging."""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf

from . import metrics
from .settings import SettingsError
from .settings import current as current_settings


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


def build_registry(watch_namespaces: bool) -> kopf.OperatorRegistry:
    """kopf's registry with our handlers; they share one Runtime through kopf's `memo`."""
    from .handlers import Runtime, register
    from .kube import Kube

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_):
        # Kopf stores nothing on our objects: we use only event handlers.
        settings.persistence.finalizer = "coursehub.dev/kopf-unused"
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
        memo.runtime = Runtime(await Kube.from_environment(), current_settings())
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
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    clusterwide = all_namespaces or not namespaces
    registry = build_registry(watch_namespaces=clusterwide)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=clusterwide,
            namespaces=[] if clusterwide else namespaces,
            standalone=True,
            liveness_endpoint=liveness or None,
            memo=kopf.Memo(),
        )
    )
    return 0
