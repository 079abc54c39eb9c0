"""Pure: what a JupyterHubDeployment author may ask of the operator (issue 12, items 3 and 5).

Anyone who may create a JupyterHubDeployment drives Helm. These checks run at render time
(`coursehub render`) and in every hub round, before Helm, so a refused spec never reaches
the cluster and the release that runs stays as it was:

- the chart must come from an allowed repository, chart name or directory (`InvalidChart`);
- spec.values may not pick the hub's image, run privileged or host-namespace pods, mount
  host paths, or (behind an SSO gate) expose the proxy another way (`InvalidValues`);
- tmp authentication needs a gate or an explicit allowUngated: the CRD's CEL rule says so,
  but a hub stored under an older CRD, or one that selects tmp through spec.values, never
  met that rule.

Helm impersonating the hub's tenant ServiceAccount (desired/tenancy.py) is the backstop:
what slips past these checks still cannot leave the namespace.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..api.jupyterhubdeployment import ChartSource, JupyterHubDeploymentSpec
from .values_schema import InvalidValues

OFFICIAL_REPOSITORY = "https://hub.jupyter.org/helm-chart/"
OFFICIAL_CHART = "jupyterhub"


class InvalidChart(ValueError):
    """spec.chart names a source the operator's chart policy does not allow."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class ChartPolicy:
    """Where hub charts may come from (operator settings, not the hub author's).

    `repositories`: Helm repository URLs; `names`: chart names allowed from them;
    `oci`: allowed oci:// reference prefixes (chart name included, e.g.
    oci://registry.example.edu/charts/jupyterhub); `paths`: chart directories on the
    operator's filesystem (a chart under one of them is allowed).
    """

    repositories: tuple[str, ...] = (OFFICIAL_REPOSITORY,)
    names: tuple[str, ...] = (OFFICIAL_CHART,)
    oci: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    @classmethod
    def from_strings(
        cls, repositories: str | None, names: str | None, oci: str | None = None, paths: str | None = None
    ) -> ChartPolicy:
        """From comma-separated settings; an unset setting keeps its default."""

        def split(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
            if text is None:
                return default
            return tuple(p.strip() for p in text.split(",") if p.strip())

        d = cls()
        return cls(
            split(repositories, d.repositories),
            split(names, d.names),
            split(oci, d.oci),
            split(paths, d.paths),
        )

    def describe(self) -> str:
        parts = []
        if self.repositories and self.names:
            parts.append(f"charts {', '.join(self.names)} from {', '.join(self.repositories)}")
        if self.oci:
            parts.append(f"OCI references under {', '.join(self.oci)}")
        if self.paths:
            parts.append(f"chart directories under {', '.join(self.paths)}")
        return "; ".join(parts) or "no chart at all"


def _norm_repo(url: str) -> str:
    return url.rstrip("/") + "/"


def _under(path: str, root: str) -> bool:
    # Lexical: '..' segments are refused outright, so no path can climb out of a root.
    p, r = PurePosixPath(path), PurePosixPath(root)
    return ".." not in p.parts and (p == r or r in p.parents)


def check_chart(chart: ChartSource, policy: ChartPolicy) -> None:
    """Raise InvalidChart unless the policy allows this chart source."""
    hint = (
        f"the operator allows {policy.describe()}; ask its administrator to allow another source "
        "(chart value operator.charts, COURSEHUB_CHART_* settings)"
    )
    if chart.path:
        if not any(_under(chart.path, root) for root in policy.paths):
            raise InvalidChart("spec.chart.path", f"spec.chart.path {chart.path} is not allowed: {hint}")
        return
    name = chart.name or ""
    if name.startswith("oci://"):
        ref = name.rstrip("/")
        if not any(ref == p.rstrip("/") or ref.startswith(p.rstrip("/") + "/") for p in policy.oci):
            raise InvalidChart("spec.chart.name", f"spec.chart.name {name} is not allowed: {hint}")
        return
    if chart.repository is None:
        raise InvalidChart(
            "spec.chart.repository",
            f"spec.chart.repository is required with chart name {name} (helm would look it up in "
            f"repositories configured by hand): {hint}",
        )
    if _norm_repo(chart.repository) not in {_norm_repo(r) for r in policy.repositories}:
        raise InvalidChart(
            "spec.chart.repository", f"spec.chart.repository {chart.repository} is not allowed: {hint}"
        )
    if name not in policy.names:
        raise InvalidChart("spec.chart.name", f"spec.chart.name {name} is not allowed: {hint}")


# --- spec.values ----------------------------------------------------------------------

# Keys that turn a pod into a way onto the node, wherever they appear in z2jh's many pod
# hooks (extraPodSpec, extraPodConfig, extraContainers, initContainers, extraVolumes...).
_HOST_KEYS = {
    "privileged": "runs a privileged container",
    "hostPath": "mounts a path of the node",
    "hostNetwork": "puts a pod in the node's network namespace",
    "hostPID": "puts a pod in the node's process namespace",
    "hostIPC": "puts a pod in the node's IPC namespace",
}

# Ways around the SSO gate: the proxy reachable other than through the gateway.
_GATED_KEYS = (
    ("proxy", "service"),
    ("proxy", "https"),
    ("proxy", "traefik"),
    ("proxy", "chp", "networkPolicy"),
    ("ingress",),
    ("httpRoute",),
)


def _walk(obj: Any, path: tuple) -> Iterator[tuple[tuple, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*path, k), v
            yield from _walk(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, (*path, i))


def _dotted(path: tuple) -> str:
    out = "spec.values"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _get(obj: Any, path: tuple) -> tuple[bool, Any]:
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return False, None
        obj = obj[p]
    return True, obj


def _truthy(v: Any) -> bool:
    # A host path given as an object or string, or a flag set to true.
    return v not in (None, False, {}, "", [])


def check_values_policy(spec: JupyterHubDeploymentSpec) -> None:
    """Raise InvalidValues naming the first key of spec.values the operator refuses."""
    values = spec.values or {}
    found, _ = _get(values, ("hub", "image"))
    if found:
        raise InvalidValues(
            "spec.values.hub.image",
            "spec.values.hub.image is not allowed: the hub runs coursehub's course spawner, so its image "
            "comes from the chart version in spec.chart; remove the key",
        )
    for path, v in _walk(values, ()):
        key = path[-1]
        if isinstance(key, str) and key in _HOST_KEYS and _truthy(v):
            where = _dotted(path)
            raise InvalidValues(
                where, f"{where} is not allowed: it {_HOST_KEYS[key]}, which a hub never needs; remove it"
            )
    if spec.gateway and spec.gateway.oidc:
        for path in _GATED_KEYS:
            found, _ = _get(values, path)
            if found:
                where = _dotted(path)
                raise InvalidValues(
                    where,
                    f"{where} is not allowed while spec.gateway.oidc is set: learners must reach the hub "
                    "only through the SSO gate, which the operator exposes itself; remove the key",
                )


def effective_auth_mode(spec: JupyterHubDeploymentSpec) -> str:
    """'tmp' when the hub ends up with tmpauthenticator, by spec.auth or through spec.values."""
    mode = spec.auth.mode if spec.auth else "tmp"
    found, cls = _get(spec.values or {}, ("hub", "config", "JupyterHub", "authenticator_class"))
    if found and isinstance(cls, str):
        lowered = cls.lower()
        if lowered == "tmp" or "tmpauthenticator" in lowered:
            return "tmp"
        return "custom"
    return mode


def check_tmp_gate(spec: JupyterHubDeploymentSpec) -> None:
    """Raise InvalidValues when tmp auth (however chosen) has neither a gate nor allowUngated."""
    if effective_auth_mode(spec) != "tmp":
        return
    if spec.gateway and spec.gateway.oidc:
        return
    if spec.auth and spec.auth.allow_ungated:
        return
    chosen_by_values = (spec.auth.mode if spec.auth else "tmp") != "tmp"
    path = "spec.values.hub.config.JupyterHub.authenticator_class" if chosen_by_values else "spec.auth.mode"
    raise InvalidValues(
        path,
        f"{path} selects tmp authentication, which gives every visitor a server: put an SSO gate in front "
        "(spec.gateway.oidc) or set spec.auth.allowUngated: true on purpose",
    )


def check_spec(spec: JupyterHubDeploymentSpec, policy: ChartPolicy) -> None:
    """Every author-facing rule above, in the order a fix is most useful."""
    check_chart(spec.chart, policy)
    check_tmp_gate(spec)
    check_values_policy(spec)
