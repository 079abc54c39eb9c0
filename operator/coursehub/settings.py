"""Operator settings, from environment variables (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    # How often every CourseImage's tag is resolved again (a new build under the same tag).
    resolve_interval: float = field(default_factory=lambda: _float("COURSEHUB_RESOLVE_INTERVAL", 300))
    # Quiet time a hub waits after a change before writing, so a burst becomes one write.
    debounce: float = field(default_factory=lambda: _float("COURSEHUB_DEBOUNCE_SECONDS", 0.5))
    # Longest a hub defers its writes while changes keep coming.
    debounce_max: float = field(default_factory=lambda: _float("COURSEHUB_DEBOUNCE_MAX_SECONDS", 3))
    # Periodic full reconcile of every hub (drift repair), independent of events.
    resync_interval: float = field(default_factory=lambda: _float("COURSEHUB_RESYNC_SECONDS", 600))
    # While pullers roll out, hubs look at them this often.
    rollout_poll: float = field(default_factory=lambda: _float("COURSEHUB_ROLLOUT_POLL_SECONDS", 2))
    resolve_concurrency: int = field(
        default_factory=lambda: int(os.environ.get("COURSEHUB_RESOLVE_CONCURRENCY", 16))
    )
    aws_endpoint_url: str | None = field(
        default_factory=lambda: os.environ.get("COURSEHUB_AWS_ENDPOINT_URL") or None
    )
    insecure_registries: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            h for h in os.environ.get("COURSEHUB_INSECURE_REGISTRIES", "").split(",") if h
        )
    )
    ecr_lifecycle: bool = field(default_factory=lambda: _bool("COURSEHUB_ECR_LIFECYCLE", True))
    ecr_create_repositories: bool = field(
        default_factory=lambda: _bool("COURSEHUB_ECR_CREATE_REPOSITORIES", False)
    )
    ecr_untagged_days: int = field(
        default_factory=lambda: int(os.environ.get("COURSEHUB_ECR_UNTAGGED_DAYS", 7))
    )
    helm_timeout: str = field(default_factory=lambda: os.environ.get("COURSEHUB_HELM_TIMEOUT", "5m"))
    metrics_port: int = field(default_factory=lambda: int(os.environ.get("COURSEHUB_METRICS_PORT", 8000)))
    json_logs: bool = field(default_factory=lambda: _bool("COURSEHUB_JSON_LOGS", False))
