"""Pure: a JupyterHubDeployment spec -> the z2jh 4.4.0 Helm values.

Nothing here reads the cluster. Secrets are referenced (secretKeyRef) and never appear in
the values; the only trace of them is a stamp of the Secrets' identity and version (never
of their content, see desired/secrets.py), which lands in a hub pod annotation so that a
rotated database URL or shared password restarts the hub once.

Courses never go through these values: z2jh restarts the hub on every values change, so
the course allowlist lives in a ConfigMap the hub reads at spawn time (see CONTRACTS.md).

Related modules: values_schema (the chart's schema, defaults and refusal messages),
policy (what an author may ask), manifest (`coursehub render`), hub_rbac (the allowlist
Role).
"""

from __future__ import annotations

import copy
import re
from decimal import Decimal
from typing import Any

from ..api.jupyterhubdeployment import Culling, JupyterHubDeploymentSpec, Singleuser
from ..hub import extra_config_snippets, hub_config_overrides
from .gateway import SIGN_OUT_PATH, check_gateway
from .hub_rbac import DEFAULT_ALLOWLIST_CONFIGMAP, MANAGED_BY, hub_allowlist_rbac, hub_service_account
from .policy import check_tmp_gate, check_values_policy
from .values_schema import Z2JH_VERSION, InvalidValues, helm_coalesce, validate_values, z2jh_defaults

__all__ = [
    "DEFAULT_ALLOWLIST_CONFIGMAP",
    "MANAGED_BY",
    "SECRETS_ANNOTATION",
    "Z2JH_VERSION",
    "InvalidValues",
    "deep_merge",
    "helm_coalesce",
    "hub_allowlist_rbac",
    "hub_service_account",
    "render_values",
    "validate_values",
    "z2jh_defaults",
]

ALLOWLIST_ENV = "COURSEHUB_ALLOWLIST_CONFIGMAP"
DATABASE_URL_ENV = "DATABASE_URL"
SHARED_PASSWORD_ENV = "COURSEHUB_SHARED_PASSWORD"
# On the hub pod: a stamp of the database and shared-password Secrets' versions.
SECRETS_ANNOTATION = "coursehub.dev/secrets-version"

DEFAULT_MEMORY_LIMIT = "4G"
DEFAULT_MEMORY_GUARANTEE = "2G"
DEFAULT_CPU_GUARANTEE = 0.25

# z2jh runs extraConfig entries in sorted key order; the database snippet (coursehub.hub)
# runs after this one.
AUTH_SNIPPET_KEY = "coursehub-05-auth"

_SHARED_PASSWORD_SNIPPET = f"""\
# coursehub: the shared password comes from a Secret via ${SHARED_PASSWORD_ENV} (never from Helm values).
import os
c.SharedPasswordAuthenticator.user_password = os.environ["{SHARED_PASSWORD_ENV}"]
"""


# --- quantities (only to keep a defaulted guarantee below an explicit limit) ----------

_MEMORY_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def memory_bytes(quantity: str) -> Decimal:
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGTPE]i?)?", quantity)
    if not m:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return Decimal(m.group(1)) * _MEMORY_UNITS[m.group(2) or ""]


# --- merging -------------------------------------------------------------------------


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`: dicts merge key by key, anything else (lists, null) replaces.

    This is how Helm layers user values over defaults; a null is kept so that Helm drops
    the default underneath it.
    """
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _env_as_dict(env: Any) -> Any:
    """z2jh takes extraEnv as a list of EnvVars or a name-keyed dict; use the dict so entries merge."""
    if not isinstance(env, list):
        return env
    out: dict[str, Any] = {}
    for item in env:
        if not isinstance(item, dict) or "name" not in item:
            return env  # not an EnvVar list we understand: leave it for the schema to judge
        rest = {k: v for k, v in item.items() if k != "name"}
        out[item["name"]] = rest["value"] if set(rest) == {"value"} else rest
    return out


def _sorted(obj: Any) -> Any:
    """Recursively key-sorted, so equal inputs give byte-identical YAML/JSON."""
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(v) for v in obj]
    return obj


# --- rendering -----------------------------------------------------------------------


def _singleuser(spec: JupyterHubDeploymentSpec) -> dict:
    su = spec.singleuser
    mem = su.memory if su and su.memory else None
    cpu = su.cpu if su and su.cpu else None

    mem_limit = mem.limit if mem and mem.limit else DEFAULT_MEMORY_LIMIT
    mem_guarantee = mem.guarantee if mem and mem.guarantee else DEFAULT_MEMORY_GUARANTEE
    # A defaulted guarantee must not exceed an explicit, smaller limit (the pod would be invalid).
    if not (mem and mem.guarantee) and memory_bytes(mem_guarantee) > memory_bytes(mem_limit):
        mem_guarantee = mem_limit
    memory = {"limit": mem_limit, "guarantee": mem_guarantee}

    cpu_out: dict[str, float] = {}
    cpu_guarantee = cpu.guarantee if cpu and cpu.guarantee is not None else DEFAULT_CPU_GUARANTEE
    if cpu and cpu.limit is not None:
        cpu_out["limit"] = cpu.limit
        if cpu.guarantee is None:
            cpu_guarantee = min(cpu_guarantee, cpu.limit)
    cpu_out["guarantee"] = cpu_guarantee

    # GPU placement is per course: the hub module adds the node selector, toleration and
    # GPU resource from the allowlist. The defaults here carry none of it, so non-GPU
    # servers never tolerate the GPU taint.
    return {
        "cmd": "jupyterhub-singleuser",
        "startTimeout": (su or Singleuser()).start_timeout_seconds,
        "storage": {"type": "none"},
        "memory": memory,
        "cpu": cpu_out,
    }


def render_values(
    name: str,
    namespace: str,
    spec: JupyterHubDeploymentSpec,
    *,
    secrets_version: str | None = None,
    allowlist_configmap: str = DEFAULT_ALLOWLIST_CONFIGMAP,
) -> dict:
    """The exact values for the hub's z2jh release (user-supplied values only, not the defaults).

    Deterministic: equal inputs give equal (key-sorted) dicts, so an unchanged spec never
    looks like a change to the release comparison. `secrets_version` (desired/secrets.py)
    goes into a hub pod annotation: the hub reads its Secrets only at start.

    Raises InvalidValues for what the operator refuses (policy.py), naming the key.
    """
    check_tmp_gate(spec)
    check_values_policy(spec)
    check_gateway(spec)
    extra_env: dict[str, Any] = {ALLOWLIST_ENV: allowlist_configmap}
    extra_config: dict[str, str] = {}
    hub_config: dict[str, dict] = {}
    annotations: dict[str, str] = {}

    db = spec.database
    if db.type == "postgres":
        if db.url_secret_ref is None:
            raise ValueError("spec.database.urlSecretRef is required for database type postgres")
        hub_db: dict[str, Any] = {"type": "postgres"}
        extra_env[DATABASE_URL_ENV] = {
            "valueFrom": {"secretKeyRef": {"name": db.url_secret_ref.name, "key": db.url_secret_ref.key}}
        }
    else:
        hub_db = {"type": "sqlite-memory"}

    auth_mode = spec.auth.mode if spec.auth else "tmp"
    if auth_mode == "tmp":
        # tmpauthenticator 1.x lets nobody in on JupyterHub 5 unless allow_all is set.
        hub_config["JupyterHub"] = {"authenticator_class": "tmp"}
        hub_config["Authenticator"] = {"allow_all": True}
    elif auth_mode == "sharedPassword":
        sp = spec.auth.shared_password if spec.auth else None
        if sp is None:
            raise ValueError("spec.auth.sharedPassword.secretRef is required for auth mode sharedPassword")
        hub_config["JupyterHub"] = {"authenticator_class": "shared-password"}
        hub_config["Authenticator"] = {"allow_all": True}
        extra_env[SHARED_PASSWORD_ENV] = {
            "valueFrom": {"secretKeyRef": {"name": sp.secret_ref.name, "key": sp.secret_ref.key}}
        }
        extra_config[AUTH_SNIPPET_KEY] = _SHARED_PASSWORD_SNIPPET
    # "custom": the authenticator comes from spec.values.

    if spec.gateway and spec.gateway.oidc and auth_mode != "custom":
        # The hub's "Log out" ends the gate's cookie and the Keycloak session too (the gate's
        # sign-out calls Keycloak's end-session endpoint); otherwise the next launch signs the
        # browser straight back in. Absolute path on the same domain: the gate owns /oauth2/.
        hub_config.setdefault("Authenticator", {})["logout_redirect_url"] = SIGN_OUT_PATH
    if secrets_version:
        annotations[SECRETS_ANNOTATION] = secrets_version
    # The hub module's snippets, the database one included (its only home).
    extra_config.update(extra_config_snippets(allowlist_configmap=allowlist_configmap))
    hub_config = deep_merge(hub_config, copy.deepcopy(hub_config_overrides()))

    hub: dict[str, Any] = {
        "db": hub_db,
        "extraEnv": extra_env,
        "extraConfig": extra_config,
    }
    if hub_config:
        hub["config"] = hub_config
    if annotations:
        hub["annotations"] = annotations

    c = spec.culling or Culling()  # the model's defaults are the seed values (300/900/14400, users)
    if c.enabled:
        cull = {
            "enabled": True,
            "every": c.every_seconds,
            "timeout": c.timeout_seconds,
            "maxAge": c.max_age_seconds,
            "users": c.users,
        }
    else:
        cull = {"enabled": False}

    values: dict[str, Any] = {
        "hub": hub,
        "cull": cull,
        "singleuser": _singleuser(spec),
        # coursehub pre-pulls course images itself, outside the release: z2jh's hook
        # puller would block every upgrade, and its continuous puller needs values changes.
        "prePuller": {"hook": {"enabled": False}, "continuous": {"enabled": False}},
        # z2jh's user scheduler and pod priority create cluster-scoped objects (ClusterRole,
        # PriorityClass); the operator installs with namespace-scoped rights only.
        "scheduling": {"userScheduler": {"enabled": False}, "podPriority": {"enabled": False}},
    }
    if spec.gateway and spec.gateway.oidc:
        # The gate is the only way in: keep the hub's proxy off the load balancer, and stop
        # z2jh's proxy NetworkPolicy from admitting every pod on the http port (policies add
        # up, so the gateway's own policy, desired/gateway.py, would not close it alone).
        values["proxy"] = {
            "service": {"type": "ClusterIP"},
            "chp": {"networkPolicy": {"allowedIngressPorts": [], "interNamespaceAccessLabels": "ignore"}},
        }

    if spec.values:
        user = copy.deepcopy(spec.values)
        user_hub = user.get("hub")
        if isinstance(user_hub, dict) and "extraEnv" in user_hub:
            user_hub["extraEnv"] = _env_as_dict(user_hub["extraEnv"])
        values = deep_merge(values, user)
    return _sorted(values)
