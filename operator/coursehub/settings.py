"""Operator settings, from COURSEHUB_* environment variables (the Helm chart sets them).

One model (pydantic-settings) is the single source: it parses and validates the environment,
names the variable in every error, and docs/reference.md's settings table is generated from it.
The operator loads it once at startup (`current()`), and passes that instance around.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .desired.leader_endpoint import address_type
from .desired.policy import ChartPolicy
from .desired.puller import PULLER_IMAGES_MAX

__all__ = ["ENV_PREFIX", "Settings", "SettingsError", "current", "env_name", "load"]

ENV_PREFIX = "COURSEHUB_"

# A Go duration as `helm --timeout` takes it: 300s, 5m, 1h30m.
_GO_DURATION = r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+"


class Settings(BaseSettings):
    """Every knob of `coursehub run`. Field names are what the code reads; variables are
    `COURSEHUB_` + the field name in capitals unless the field says otherwise."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        # Tests and callers build Settings(debounce=0) by field name; the environment uses variables.
        validate_by_name=True,
        validate_by_alias=True,
        extra="ignore",
    )

    resolve_interval: float = Field(
        300,
        gt=0,
        description=(
            "Seconds between re-resolutions of a CourseImage's tag (a new build under the same tag) "
            "whose digest just moved, or whose resolution failed: the shortest interval. It grows "
            "with the time the digest stays unchanged, up to COURSEHUB_RESOLVE_INTERVAL_MAX after a day."
        ),
    )
    resolve_interval_max: float = Field(
        3600,
        gt=0,
        description=(
            "Seconds between re-resolutions of a tag whose digest has not moved for a day or more: "
            "the longest interval (the interval grows linearly from COURSEHUB_RESOLVE_INTERVAL "
            "to this over the first day; a value below COURSEHUB_RESOLVE_INTERVAL means that one)."
        ),
    )
    # 0.3 s: six times the gap between the objects of `kubectl apply -f courses/` (one GET and
    # one write each, ~50 ms), and what the e2e suite has always run with; every burst ends
    # this much after its last change.
    debounce: float = Field(
        0.3,
        ge=0,
        validation_alias=ENV_PREFIX + "DEBOUNCE_SECONDS",
        description=(
            "A change that finds a hub at rest is written at once; changes that arrive while a hub "
            "round runs wait until none came for this many seconds, so a burst becomes a handful "
            "of writes (0: never wait)."
        ),
    )
    debounce_max: float = Field(
        3,
        ge=0,
        validation_alias=ENV_PREFIX + "DEBOUNCE_MAX_SECONDS",
        description=(
            "Longest a hub defers its writes while changes keep coming during its rounds, in seconds."
        ),
    )
    puller_hold_max: float = Field(
        10,
        ge=0,
        validation_alias=ENV_PREFIX + "PULLER_HOLD_SECONDS",
        description=(
            "While changes keep coming (a burst), an existing pre-puller keeps its images and is "
            "rewritten once the burst is over, but never held longer than this, in seconds: each "
            "rewrite rolls a pod with every course image onto every node (0: never hold)."
        ),
    )
    puller_images_max: int = Field(
        PULLER_IMAGES_MAX,
        ge=1,
        validation_alias=ENV_PREFIX + "PULLER_IMAGES_MAX",
        description=(
            "Course images per pre-puller DaemonSet: a hub with more courses gets more DaemonSets "
            "(coursehub-puller, coursehub-puller-1, ...). Smaller ones roll out sooner and a course "
            "change rolls only its own; each is one more pod on every learner node. etcd refuses an "
            "object over 1.5 MiB, a pod of roughly 2,000 images."
        ),
    )
    resync_interval: float = Field(
        600,
        gt=0,
        validation_alias=ENV_PREFIX + "RESYNC_SECONDS",
        description=(
            "Seconds between full reconciles of every hub (drift repair, independent of events) "
            "and ECR drift checks."
        ),
    )
    secret_poll: float = Field(
        60,
        gt=0,
        validation_alias=ENV_PREFIX + "SECRET_POLL_SECONDS",
        description=(
            "Seconds between checks of the Secrets each hub references (the operator may only get "
            "Secrets, not watch them): one GET per referenced Secret, by name (1-3 per hub), and a "
            "round only when one's resourceVersion changed, so a rotation is noticed within this time."
        ),
    )
    rollout_poll: float = Field(
        2,
        gt=0,
        validation_alias=ENV_PREFIX + "ROLLOUT_POLL_SECONDS",
        description="While pre-pullers roll out, hubs look at them this often, in seconds.",
    )
    puller_relist: float = Field(
        60,
        gt=0,
        validation_alias=ENV_PREFIX + "PULLER_RELIST_SECONDS",
        description=(
            "Hubs see their pre-puller DaemonSets through the watch (at 1,000 courses a LIST is "
            "~1.3 MB); a round lists them again when that view is older than this, in seconds, "
            "or after a failed round: a watch that reconnected may have missed a deletion."
        ),
    )
    resolve_concurrency: int = Field(16, ge=1, description="Image resolutions running at once.")
    aws_endpoint_url: str | None = Field(
        None,
        description=(
            "ECR endpoint override (VPC endpoints; tests use moto). Unset or empty: AWS's own endpoint."
        ),
    )
    insecure_registries: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "Comma-separated registry hosts (host or host:port) spoken to over plain HTTP; none by "
            "default. Listing a host also lets it be on a private or loopback address "
            "(docs/registries.md)."
        ),
    )
    private_registries: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "Comma-separated registry or token hosts (host or host:port) that may resolve to loopback, "
            "link-local or private addresses (an in-cluster registry); every other host must resolve to "
            "public addresses only."
        ),
    )
    registry_token_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "Comma-separated registry=host pairs: hosts a registry's bearer-token realm may name besides "
            "the registry's own host, added to the defaults (docker.io=auth.docker.io, "
            "registry.gitlab.com=gitlab.com)."
        ),
    )
    resolve_deadline: float = Field(
        30,
        gt=0,
        validation_alias=ENV_PREFIX + "RESOLVE_DEADLINE_SECONDS",
        description="Longest one image resolution (token, manifest, redirects) may take, in seconds.",
    )
    registry_concurrency: int = Field(
        4, ge=1, description="Image resolutions talking to one registry host at once."
    )
    ecr_lifecycle: bool = Field(
        True, description="Keep ECR lifecycle policies from the courses' spec.retention."
    )
    ecr_create_repositories: bool = Field(
        False, description="Create missing ECR repositories (scan on push, AES256) before applying a policy."
    )
    ecr_untagged_days: int = Field(7, ge=1, description="Untagged ECR images expire after this many days.")
    helm_timeout: str = Field(
        "5m",
        json_schema_extra={"pattern": _GO_DURATION},
        description="Longest a helm install/upgrade of a hub may take (a Go duration: 300s, 5m).",
    )
    metrics_port: int = Field(
        8000, ge=0, le=65535, description="Port of the Prometheus metrics server (0: off)."
    )
    json_logs: bool = Field(False, description="One JSON object per log line, for log pipelines.")
    helm: str | None = Field(
        None,
        description="Path of the helm binary (the operator image sets /usr/local/bin/helm). "
        "Unset: `helm` on PATH.",
    )
    operator_image: str = Field(
        "ghcr.io/coursehub/coursehub-operator:0.1.0",
        min_length=1,
        description="The operator's own image (the chart passes it): pre-pullers copy their static no-op "
        "from it, so no course image's own programs run (docs/prepull.md).",
    )
    chart_repositories: Annotated[tuple[str, ...], NoDecode] = Field(
        ("https://hub.jupyter.org/helm-chart/",),
        description="Comma-separated Helm repository URLs hubs may install their chart from "
        "(spec.chart.repository); anything else is refused with InvalidChart.",
    )
    chart_names: Annotated[tuple[str, ...], NoDecode] = Field(
        ("jupyterhub",), description="Comma-separated chart names allowed from those repositories."
    )
    chart_oci: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated oci:// chart references (or prefixes) hubs may use; none by default.",
    )
    chart_paths: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated directories on the operator's filesystem whose charts hubs may use "
        "(spec.chart.path); none by default.",
    )
    tenant_service_account: str = Field(
        "coursehub-helm",
        description="The ServiceAccount the operator creates in each hub's namespace and that Helm "
        "impersonates for the hub (unless the hub sets spec.serviceAccountName).",
    )
    tenant_cluster_role: str = Field(
        "coursehub-tenant",
        description="The ClusterRole (installed by the chart) bound in each hub's namespace to that "
        "ServiceAccount: namespaced objects there, nothing else.",
    )

    # -- course builds (CourseImage spec.build; docs/builds.md) --
    build_image: str | None = Field(
        None,
        description="The buildah image build Jobs run (Debian's buildah, git, ssh: dev images.buildah()). "
        "Unset: builds are off and a CourseImage with spec.build says BuildsDisabled.",
    )
    build_concurrency: int = Field(2, ge=1, le=100, description="Build Jobs running at once, in all.")
    build_deadline: int = Field(
        1800,
        ge=60,
        validation_alias=ENV_PREFIX + "BUILD_DEADLINE_SECONDS",
        description="Longest one build Job may run (its activeDeadlineSeconds), in seconds.",
    )
    build_privileged: bool = Field(
        False,
        description="Run build pods privileged with overlay storage (faster) instead of unprivileged with "
        "seccomp Unconfined and vfs storage (docs/builds.md: the trade-off).",
    )
    build_node_selector: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated label=value pairs build pods must run on (nodes set aside for builds).",
    )
    git_private_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated git hosts (host or host:port) that may resolve to loopback, link-local "
        "or private addresses (an internal git server); every other repository host must be public.",
    )
    git_ca_file: str | None = Field(
        None,
        description="A PEM file of CA certificates trusted for git servers besides the system's (an internal "
        "git server with a private CA); build pods get the same certificates.",
    )
    webhook_port: int = Field(
        0, ge=0, le=65535, description="Port of the git push webhook server (POST /hooks/git; 0: off)."
    )
    webhook_secret_file: str | None = Field(
        None,
        description="File holding the webhook secret (GitHub's HMAC secret, GitLab's token), mounted from a "
        "Secret by the chart. Webhooks are refused without it.",
    )

    # -- leader election and shards (operator/coursehub/leadership.py, docs/scaling.md) --
    leader_election: bool = Field(
        False,
        description="Run only while holding a coordination.k8s.io Lease, so that replicas wait as standbys "
        "(the chart turns it on and runs 2 replicas).",
    )
    lease_name: str = Field(
        "coursehub-operator",
        min_length=1,
        description="The leader Lease's name (the chart: its full name, plus the shard's name).",
    )
    lease_namespace: str | None = Field(
        None,
        description="Namespace of the leader Lease and the shards' namespace claims. Unset: the pod's own.",
    )
    lease_duration: float = Field(
        8,
        gt=0,
        validation_alias=ENV_PREFIX + "LEASE_DURATION_SECONDS",
        description="A standby takes the Lease after it saw no renewal for this many seconds.",
    )
    lease_renew_deadline: float = Field(
        5,
        gt=0,
        validation_alias=ENV_PREFIX + "LEASE_RENEW_DEADLINE_SECONDS",
        description="A leader that could not renew its Lease (or a namespace claim) for this many seconds "
        "exits at once; below COURSEHUB_LEASE_DURATION_SECONDS, so it is gone before a standby takes over.",
    )
    lease_renew: float = Field(
        2,
        gt=0,
        validation_alias=ENV_PREFIX + "LEASE_RENEW_SECONDS",
        description="The leader renews its Lease (and its shard's namespace claims) this often, in seconds.",
    )
    lease_retry: float = Field(
        1,
        gt=0,
        validation_alias=ENV_PREFIX + "LEASE_RETRY_SECONDS",
        description="A standby reads the Lease this often, in seconds (one GET, nothing else).",
    )
    shard: str | None = Field(
        None,
        description="This operator's shard name: it claims each namespace it is started for (-n) and serves "
        "only those no other shard claims. Unset: no shard.",
    )
    identity: str | None = Field(
        None, description="This replica's name in the Lease. Unset: the host (pod) name and a random suffix."
    )
    webhook_service: str | None = Field(
        None,
        description="The webhook Service (without a selector, in the Lease namespace) whose EndpointSlice "
        "the leader writes with its own address (COURSEHUB_POD_IP) and COURSEHUB_WEBHOOK_PORT, so pushes "
        "reach the leader only; with leader election on. Unset: no slice is written.",
    )
    pod_ip: str | None = Field(
        None,
        description="This pod's IP (the chart: the downward API's status.podIP): the address the leader "
        "names in the webhook Service's EndpointSlice. Required with COURSEHUB_WEBHOOK_SERVICE.",
    )

    @field_validator("lease_namespace", "shard", "identity", "webhook_service", "pod_ip", mode="before")
    @classmethod
    def _empty_means_unset(cls, v: Any) -> Any:
        return v or None

    @model_validator(mode="after")
    def _leader_endpoint(self) -> Settings:
        if self.webhook_service and self.leader_election and self.webhook_port:
            if not self.pod_ip:
                raise ValueError(
                    f"COURSEHUB_POD_IP is unset: the leader names its own address in the EndpointSlice of "
                    f"COURSEHUB_WEBHOOK_SERVICE={self.webhook_service}; set it from the downward API "
                    "(env valueFrom.fieldRef.fieldPath: status.podIP), as the chart does"
                )
            address_type(self.pod_ip)  # a ValueError naming COURSEHUB_POD_IP and the fix
        return self

    @model_validator(mode="after")
    def _lease_timing(self) -> Settings:
        if not self.lease_renew < self.lease_renew_deadline < self.lease_duration:
            raise ValueError(
                "COURSEHUB_LEASE_RENEW_SECONDS < COURSEHUB_LEASE_RENEW_DEADLINE_SECONDS < "
                "COURSEHUB_LEASE_DURATION_SECONDS must hold (a leader renews, gives up, and is gone "
                f"before a standby takes over); got {self.lease_renew:g}, {self.lease_renew_deadline:g}, "
                f"{self.lease_duration:g}"
            )
        return self

    @property
    def status_hold_max(self) -> float:
        """Longest a course's status waits for more news to carry in the same write (a hub's due
        round, a first resolution, a burst's rollout): a hub defers a burst's writes at most
        debounce_max, plus a round's own time."""
        return self.debounce_max + 3.0

    def chart_policy(self) -> ChartPolicy:
        """Where hub charts may come from (desired/policy.py)."""
        return ChartPolicy(self.chart_repositories, self.chart_names, self.chart_oci, self.chart_paths)

    @field_validator(
        "aws_endpoint_url", "helm", "build_image", "webhook_secret_file", "git_ca_file", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        # The chart may render an empty value; that means "AWS", as an unset variable does.
        return v or None

    @field_validator("helm")
    @classmethod
    def _executable(cls, v: str | None) -> str | None:
        # Checked at startup, not at the first hub install minutes later.
        if v is not None and not (os.path.isfile(v) and os.access(v, os.X_OK)):
            raise ValueError(f"no executable file at {v!r}: point it at a helm binary or unset it")
        return v

    @field_validator("helm_timeout")
    @classmethod
    def _go_duration(cls, v: str) -> str:
        if not re.fullmatch(_GO_DURATION, v):
            raise ValueError(f"should be a Go duration such as 300s, 5m or 1h30m (helm --timeout), got {v!r}")
        return v

    @field_validator(
        "insecure_registries",
        "private_registries",
        "registry_token_hosts",
        "chart_repositories",
        "chart_names",
        "chart_oci",
        "chart_paths",
        "git_private_hosts",
        "build_node_selector",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(h.strip() for h in v.split(",") if h.strip())
        return v

    @field_validator("registry_token_hosts")
    @classmethod
    def _registry_equals_host(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from .registry.policy import token_host_pairs

        token_host_pairs(v)  # raises naming the bad entry
        return v


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


class SettingsError(ValueError):
    """Invalid settings; the message names each variable, its value problem and the fix."""


def load() -> Settings:
    """Settings from the process environment, or a SettingsError naming each bad variable,
    e.g. `COURSEHUB_RESOLVE_INTERVAL: Input should be a valid number`."""
    try:
        return Settings()
    except ValidationError as e:
        raise SettingsError(_describe(e)) from None


@functools.cache
def current() -> Settings:
    """The operator's settings, read from the environment once per process."""
    return load()


def _describe(error: ValidationError) -> str:
    # An error's location is the field name or its alias, in whatever case the source used.
    var_of = {key.lower(): env_name(f) for f in Settings.model_fields for key in (f, env_name(f))}
    lines = []
    for err in error.errors(include_url=False):
        loc = str(err["loc"][0]) if err["loc"] else ""
        var = var_of.get(loc.lower(), loc)
        shown = f" (got {err['input']!r})" if isinstance(err.get("input"), str) else ""
        lines.append(f"{var}: {err['msg']}{shown}")
    return "invalid operator settings:\n  " + "\n  ".join(lines) + "\nfix the environment variable(s) above"
