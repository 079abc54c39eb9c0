"""Pure: which Secret keys a hub needs, whether they are there, and a content hash.

The operator only references Secrets (External Secrets or Vault keep them); it reads them
to check that the keys exist and to hash the database credential, and never logs, copies
or stores their content.

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


def _as_bytes(v: bytes | str | None) -> bytes:
    if v is None:
        return b""
    return v if isinstance(v, bytes) else v.encode()


def secret_hash(data: dict[str, bytes | str]) -> str:
    """sha256 over the sorted keys and values, length-prefixed so no two contents collide.

    Values may be bytes (decoded Secret data) or str (base64 text as the API returns it);
    pass the same form every time.
    """
    h = hashlib.sha256()
    for k in sorted(data):
        kb, vb = k.encode(), _as_bytes(data[k])
        h.update(len(kb).to_bytes(8, "big") + kb + len(vb).to_bytes(8, "big") + vb)
    return h.hexdigest()


def database_secret_hash(
    spec: JupyterHubDeploymentSpec, secrets: dict[str, dict[str, bytes] | None]
) -> str | None:
    """The hash for render_values(database_secret_hash=...): only the referenced key counts,
    so a change to an unrelated key of the same Secret does not restart the hub."""
    db = spec.database
    if db.type != "postgres" or db.url_secret_ref is None:
        return None
    data = secrets.get(db.url_secret_ref.name)
    if not data or db.url_secret_ref.key not in data:
        return None
    return secret_hash({db.url_secret_ref.key: data[db.url_secret_ref.key]})
