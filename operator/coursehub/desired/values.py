"""Pure: a JupyterHubDeployment spec -> the z2jh 4.4.0 Helm values, and their validation.

Nothing here reads the cluster. Secrets are referenced (secretKeyRef) and never appear in
the values; the only trace of a Secret's content is the hash the caller passes in, which
lands in a hub pod annotation so that a rotated database credential restarts the hub once.

Courses never go through these values: z2jh restarts the hub on every values change, so
the course allowlist lives in a ConfigMap the hub reads at spawn time (see CONTRACTS.md).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import ValidationError

from ..api.jupyterhubdeployment import Culling, JupyterHubDeploymentSpec, Singleuser

Z2JH_DIR = Path(__file__).parent / "z2jh"
Z2JH_VERSION = "4.4.0"

DEFAULT_ALLOWLIST_CONFIGMAP = "coursehub-allowlist"
ALLOWLIST_ENV = "COURSEHUB_ALLOWLIST_CONFIGMAP"
DATABASE_URL_ENV = "DATABASE_URL"
SHARED_PASSWORD_ENV = "COURSEHUB_SHARED_PASSWORD"
DATABASE_HASH_ANNOTATION = "coursehub.dev/database-secret-hash"
# z2jh names the hub's ServiceAccount "hub" unless hub.serviceAccount.name says otherwise.
DEFAULT_HUB_SERVICE_ACCOUNT = "hub"

DEFAULT_MEMORY_LIMIT = "4G"
DEFAULT_MEMORY_GUARANTEE = "2G"
DEFAULT_CPU_GUARANTEE = 0.25

# z2jh runs extraConfig entries in sorted key order. The database key is the one the hub
# module uses for the same snippet, so the two can never both run.
DATABASE_SNIPPET_KEY = "coursehub-10-database"
AUTH_SNIPPET_KEY = "coursehub-05-auth"

MANAGED_BY = {"app.kubernetes.io/managed-by": "coursehub"}

# The database snippet: the URL reaches the hub only as an environment variable filled
# from the Secret by the kubelet, so it is never in values, ConfigMaps or Helm history.
_DATABASE_SNIPPET = f"""\
# coursehub: the database URL comes from a Secret via ${DATABASE_URL_ENV} (never from Helm values).
import os
c.JupyterHub.db_url = os.environ["{DATABASE_URL_ENV}"]
"""

_SHARED_PASSWORD_SNIPPET = f"""\
# coursehub: the shared password comes from a Secret via ${SHARED_PASSWORD_ENV} (never from Helm values).
import os
c.SharedPasswordAuthenticator.user_password = os.environ["{SHARED_PASSWORD_ENV}"]
"""


class InvalidValues(ValueError):
    """The values would be refused by the z2jh chart; `path` names the offending key."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


# --- the z2jh schema and defaults, shipped inside the package -------------------------


@functools.cache
def z2jh_schema() -> dict:
    return json.loads((Z2JH_DIR / "values.schema.json").read_text())


@functools.cache
def _z2jh_defaults_json() -> str:
    return (Z2JH_DIR / "values.defaults.json").read_text()


def z2jh_defaults() -> dict:
    """A fresh copy of the chart's default values (callers may mutate it)."""
    return json.loads(_z2jh_defaults_json())


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(z2jh_schema())


# --- the extension point for the in-hub module ---------------------------------------


def hub_extra_config(*, allowlist_configmap: str = DEFAULT_ALLOWLIST_CONFIGMAP) -> dict[str, str]:
    """The hub-side module's extraConfig snippets (spawner integration), keyed for hub.extraConfig.

    The module lives in coursehub.hub; if it is absent (a trimmed build) the rest of the
    values stay renderable without it.
    """
    try:
        from ..hub import extra_config_snippets
    except ImportError:
        return {}
    return dict(extra_config_snippets(allowlist_configmap=allowlist_configmap))


def hub_config_overrides() -> dict:
    """Entries the hub module needs in hub.config ({} when it needs none or is absent)."""
    try:
        from ..hub import hub_config_overrides as overrides
    except ImportError:
        return {}
    return copy.deepcopy(overrides())


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


def helm_coalesce(defaults: dict, values: dict) -> dict:
    """What the chart's templates (and its schema check) see: values over defaults, nulls removed."""
    out = dict(defaults)
    for k, v in values.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = helm_coalesce(out[k], v)
        elif isinstance(v, dict):
            out[k] = helm_coalesce({}, v)
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
    database_secret_hash: str | None = None,
    allowlist_configmap: str = DEFAULT_ALLOWLIST_CONFIGMAP,
) -> dict:
    """The exact values for the hub's z2jh release (user-supplied values only, not the defaults).

    Deterministic: equal inputs give equal (key-sorted) dicts, so an unchanged spec never
    looks like a change to the release comparison.
    """
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
        extra_config[DATABASE_SNIPPET_KEY] = _DATABASE_SNIPPET
        if database_secret_hash:
            annotations[DATABASE_HASH_ANNOTATION] = database_secret_hash
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

    extra_config.update(hub_extra_config(allowlist_configmap=allowlist_configmap))
    hub_config = deep_merge(hub_config, hub_config_overrides())

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
        # The gate is the only way in: keep the hub's proxy off the load balancer.
        values["proxy"] = {"service": {"type": "ClusterIP"}}

    if spec.values:
        user = copy.deepcopy(spec.values)
        user_hub = user.get("hub")
        if isinstance(user_hub, dict) and "extraEnv" in user_hub:
            user_hub["extraEnv"] = _env_as_dict(user_hub["extraEnv"])
        values = deep_merge(values, user)
    return _sorted(values)


# --- validation ----------------------------------------------------------------------


def _join(prefix: str, parts) -> str:
    path = prefix
    for p in parts:
        path = f"{path}[{p}]" if isinstance(p, int) else (f"{path}.{p}" if path else str(p))
    return path


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def _extra_properties(error: jsonschema.ValidationError) -> list[str]:
    props = set(error.schema.get("properties", {}))
    patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
    inst = error.instance if isinstance(error.instance, dict) else {}
    return sorted(k for k in inst if k not in props and not any(p.search(k) for p in patterns))


def _describe(error: jsonschema.ValidationError, prefix: str) -> tuple[str, str]:
    where = list(error.absolute_path)
    suffix = f"by the z2jh {Z2JH_VERSION} schema"
    if error.validator == "additionalProperties":
        extras = _extra_properties(error) or ["?"]
        path = _join(prefix, where + [extras[0]])
        return path, f"{path}: additional property '{extras[0]}' is not allowed {suffix}"
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        path = _join(prefix, where + missing[:1])
        return path, f"{path}: is required {suffix}"
    path = _join(prefix, where)
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return (
            path,
            f"{path}: {_short(error.instance)} is not of type {' or '.join(types)} (required {suffix})",
        )
    if error.validator == "enum":
        return path, (
            f"{path}: {_short(error.instance)} is not one of "
            f"{', '.join(_short(v) for v in error.validator_value)} (required {suffix})"
        )
    return path, f"{path}: {error.message} (refused {suffix})"


def validate_values(values: dict, *, prefix: str = "spec.values") -> None:
    """Raise InvalidValues if the chart would refuse these values (merged over its defaults).

    `prefix` is put before the key path in messages: the operator's own keys are tested
    to validate, so any refusal comes from spec.values.
    """
    merged = helm_coalesce(z2jh_defaults(), values)
    errors = sorted(
        _validator().iter_errors(merged), key=lambda e: ([str(p) for p in e.absolute_path], e.validator)
    )
    if not errors:
        return
    path, message = _describe(errors[0], prefix)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    raise InvalidValues(path, message)


# --- `coursehub render` --------------------------------------------------------------


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"spec.{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def render_values_from_manifest(manifest: dict) -> dict:
    """Parse a JupyterHubDeployment manifest, render its values and validate them.

    Raises ValueError (InvalidValues for schema refusals) with a message naming the field.
    No Secret is read, so the database hash annotation is absent from this output.
    """
    if not isinstance(manifest, dict) or manifest.get("kind") != "JupyterHubDeployment":
        raise ValueError("not a JupyterHubDeployment manifest")
    meta = manifest.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ValueError("metadata.name is required")
    namespace = meta.get("namespace") or "default"
    spec_raw = manifest.get("spec")
    if not isinstance(spec_raw, dict):
        raise ValueError("spec is required")
    try:
        spec = JupyterHubDeploymentSpec.model_validate(spec_raw)
    except ValidationError as e:
        raise ValueError(_pydantic_message(e)) from None
    values = render_values(name, namespace, spec)
    validate_values(values)
    return values


# --- hub RBAC for the allowlist (applied by the operator, outside the release) --------


def hub_service_account(values: dict) -> str:
    """The ServiceAccount the z2jh hub runs as, given the rendered values."""
    sa = (values.get("hub") or {}).get("serviceAccount") or {}
    return sa.get("name") or DEFAULT_HUB_SERVICE_ACCOUNT


def hub_allowlist_rbac(
    name: str,
    namespace: str,
    configmap: str = DEFAULT_ALLOWLIST_CONFIGMAP,
    *,
    service_account: str = DEFAULT_HUB_SERVICE_ACCOUNT,
) -> list[dict]:
    """A Role that lets the hub read exactly the allowlist ConfigMap, and its RoleBinding.

    Outside the z2jh release because the release must not change when courses do, and
    because z2jh's own hub Role has no place for it.
    """
    labels = {**MANAGED_BY, "coursehub.dev/hub": name}
    role_name = "coursehub-hub-allowlist"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": role_name, "namespace": namespace, "labels": dict(labels)},
            # list/watch with resourceNames work for a metadata.name field selector, which
            # is how the hub module watches the one ConfigMap.
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [configmap],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": role_name, "namespace": namespace, "labels": dict(labels)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]
