"""Pure: which Secret keys a hub needs, whether they are there, and a content hash.

The operator only references Secrets (External Secrets or Vault keep them); it reads them
to check that the keys exist and to stamp their versions (never their content) on the pods
that read them, and never logs, copies or stores their content.

Conditions: `DatabaseReady` covers the database URL. `GatewayReady` covers everything
that stands between a learner and the hub: the OIDC gate's client id, client secret and
cookie secret, and, in sharedPassword mode, the shared password (a missing password
locks everyone out just as a missing gate secret does).
"""

from __future__ import annotations

import hashlib

from ..api.jupyterhubdeployment import JupyterHubDeploymentSpec

DATABASE_READY = "DatabaseReady"
GATEWAY_READY = "GatewayReady"

# The keys oauth2-proxy reads from the gateway Secret (see desired/gateway.py).
OIDC_KEYS = ("client_id", "client_secret", "cookie_secret")
# spec.gateway.tls: the keys of a kubernetes.io/tls Secret, which the gate mounts.
TLS_KEYS = ("tls.crt", "tls.key")

REASON_FOUND = "SecretsFound"
REASON_NOT_REQUIRED = "NoSecretRequired"
REASON_NOT_FOUND = "SecretNotFound"
REASON_KEY_MISSING = "SecretKeyMissing"


def required_secret_keys(spec: JupyterHubDeploymentSpec) -> dict[str, list[tuple[str, str]]]:
    """Condition type -> the (Secret name, key) pairs it needs. Both types are always present."""
    required: dict[str, list[tuple[str, str]]] = {DATABASE_READY: [], GATEWAY_READY: []}
    db = spec.database
    if db.type == "postgres" and db.url_secret_ref is not None:
        required[DATABASE_READY].append((db.url_secret_ref.name, db.url_secret_ref.key))
    if spec.gateway and spec.gateway.oidc:
        name = spec.gateway.oidc.secret_ref.name
        required[GATEWAY_READY].extend((name, k) for k in OIDC_KEYS)
        if spec.gateway.tls:
            tls = spec.gateway.tls.secret_ref.name
            required[GATEWAY_READY].extend((tls, k) for k in TLS_KEYS)
    if spec.auth and spec.auth.mode == "sharedPassword" and spec.auth.shared_password:
        ref = spec.auth.shared_password.secret_ref
        required[GATEWAY_READY].append((ref.name, ref.key))
    return required


def secret_names(required: dict[str, list[tuple[str, str]]]) -> list[str]:
    """The Secrets to read (sorted, once each)."""
    return sorted({name for pairs in required.values() for name, _ in pairs})


def check_secrets(
    required: dict[str, list[tuple[str, str]]],
    secrets: dict[str, dict[str, bytes] | None],
) -> dict[str, tuple[bool, str, str]]:
    """Condition type -> (ok, reason, message) given the Secrets' data (None: not found).

    A Secret absent from `secrets` counts as not found. An empty value counts as missing:
    an empty DATABASE_URL or client secret is never usable. Messages name Secret and key,
    never a value.
    """
    out: dict[str, tuple[bool, str, str]] = {}
    for cond, pairs in required.items():
        if not pairs:
            out[cond] = (True, REASON_NOT_REQUIRED, "No Secret is needed.")
            continue
        problems: list[tuple[str, str]] = []
        reported_missing: set[str] = set()
        for name, key in pairs:
            data = secrets.get(name)
            if data is None:
                if name not in reported_missing:
                    reported_missing.add(name)
                    problems.append((REASON_NOT_FOUND, f"Secret {name} not found"))
            elif key not in data:
                problems.append((REASON_KEY_MISSING, f"Secret {name} has no key {key}"))
            elif not data[key]:
                problems.append((REASON_KEY_MISSING, f"Secret {name} key {key} is empty"))
        if problems:
            # The first problem's reason leads; the message lists them all.
            out[cond] = (False, problems[0][0], "; ".join(m for _, m in problems))
        else:
            listed = ", ".join(f"{n}/{k}" for n, k in pairs)
            out[cond] = (True, REASON_FOUND, f"Secret keys present: {listed}")
    return out


def hub_secret_names(spec: JupyterHubDeploymentSpec) -> list[str]:
    """The Secrets the hub pod reads at start (database URL, shared password)."""
    names = set()
    db = spec.database
    if db.type == "postgres" and db.url_secret_ref is not None:
        names.add(db.url_secret_ref.name)
    if spec.auth and spec.auth.mode == "sharedPassword" and spec.auth.shared_password:
        names.add(spec.auth.shared_password.secret_ref.name)
    return sorted(names)


def gateway_secret_names(spec: JupyterHubDeploymentSpec) -> list[str]:
    """The Secrets the gate's pods read at start."""
    if spec.gateway and spec.gateway.oidc:
        # oauth2-proxy reads its certificate only at start too: a renewal rolls the gate.
        tls = [spec.gateway.tls.secret_ref.name] if spec.gateway.tls else []
        return [spec.gateway.oidc.secret_ref.name, *tls]
    return []


def version_stamp(names: list[str], secrets: dict[str, dict | None]) -> str | None:
    """A stamp of these Secrets' identity and version, for a pod annotation that rolls the pod
    when one of them is replaced or changed (once per change: the stamp moves only then).

    `secrets` maps a name to the Secret object as the API returns it (None: not found).
    Only uid and resourceVersion go in, never the content: a hash of a low-entropy value
    such as a database password would let anyone who can read the pod's annotations guess
    it offline. None when there is nothing to stamp.
    """
    parts = []
    for name in sorted(names):
        meta = (secrets.get(name) or {}).get("metadata") or {}
        if meta:
            parts.append(f"{name}\0{meta.get('uid', '')}\0{meta.get('resourceVersion', '')}")
    if not parts:
        return None
    return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]
