"""A small async Kubernetes REST client: get, list, server-side apply, status patch, delete, events.

Credentials come from the pod's ServiceAccount or a kubeconfig (kubernetes_asyncio runs its
exec plugin) and are loaded again when the API server answers 401. The requests go through one
aiohttp session so that every request is counted (metrics, benchmarks) and server-side apply is
first-class: one field manager owns what the operator writes.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import ssl
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from . import metrics
from .api.common import now_rfc3339

log = logging.getLogger(__name__)

FIELD_MANAGER = "coursehub"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeError(Exception):
    def __init__(self, status: int, message: str, body: dict | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.body = body or {}


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class ServerError(KubeError):
    """5xx or 429: the API server (or etcd behind it) is unwell or busy; worth retrying."""


# Failures that say nothing about our request, only that the API server is away right now.
TRANSIENT_API_ERRORS = (aiohttp.ClientConnectionError, asyncio.TimeoutError, ServerError)


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


COURSE_IMAGES = Resource("coursehub.dev", "v1alpha1", "courseimages", "CourseImage")
HUBS = Resource("coursehub.dev", "v1alpha1", "jupyterhubdeployments", "JupyterHubDeployment")
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICES = Resource("", "v1", "services", "Service")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
EVENTS = Resource("", "v1", "events", "Event")
PODS = Resource("", "v1", "pods", "Pod")
DAEMON_SETS = Resource("apps", "v1", "daemonsets", "DaemonSet")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")

BY_KIND = {
    r.kind: r
    for r in (
        COURSE_IMAGES,
        HUBS,
        CONFIG_MAPS,
        SECRETS,
        SERVICES,
        NAMESPACES,
        EVENTS,
        PODS,
        DAEMON_SETS,
        DEPLOYMENTS,
        ROLES,
        ROLE_BINDINGS,
        SERVICE_ACCOUNTS,
        NETWORK_POLICIES,
    )
}


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to prove who we are; loaded again on a 401."""

    host: str
    ssl: ssl.SSLContext | bool
    headers: dict[str, str]


CredentialSource = Callable[[], Awaitable[Credentials]]


def service_account_credentials(
    sa_dir: Path = SA_DIR, environ: Mapping[str, str] = os.environ
) -> Credentials | None:
    """In-cluster credentials: the pod's ServiceAccount token and CA, or None outside a cluster.

    The kubelet rotates the projected token (hourly by default); the file is read again on a 401.
    """
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = sa_dir / "token"
    if not (host and port and token.exists()):
        return None
    ctx = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
    url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return Credentials(url, ctx, {"Authorization": f"Bearer {token.read_text().strip()}"})


async def kubeconfig_credentials(config_file: str | Path | None = None) -> Credentials:
    """Credentials from a kubeconfig ($KUBECONFIG or ~/.kube/config unless given).

    Each call reads the file again and runs its exec plugin again (an EKS token lives ~15 minutes).
    """
    cfg = k8s_client.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(config_file) if config_file else None, client_configuration=cfg
    )
    if not cfg.host:
        raise k8s_config.ConfigException("the kubeconfig's current context names no server")
    ctx: ssl.SSLContext | bool
    if cfg.verify_ssl:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    headers = {}
    auth = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if auth:
        headers["Authorization"] = auth if auth.lower().startswith("bearer") else f"Bearer {auth}"
    return Credentials(cfg.host, ctx, headers)


async def environment_credentials(
    sa_dir: Path = SA_DIR, environ: Mapping[str, str] = os.environ
) -> Credentials:
    """In-cluster ServiceAccount first, else the kubeconfig (kopf's login does the same)."""
    return service_account_credentials(sa_dir, environ) or await kubeconfig_credentials()


class Kube:
    """One per operator process.

    A 401 means our credentials went stale (an exec plugin's token expired, a ServiceAccount
    token rotated): the credential source runs again once and the request is retried once.
    """

    def __init__(
        self,
        host: str,
        ssl_context: ssl.SSLContext | bool,
        headers: dict[str, str],
        *,
        reload: CredentialSource | None = None,
    ):
        self.host = host.rstrip("/")
        self._ssl = ssl_context
        self._headers = headers
        self._reload = reload
        # Bumped per reload, so that a burst of requests failing together reloads only once.
        self._generation = 0
        self._reload_lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self.writes: Counter[str] = Counter()  # "VERB Kind" -> count, for benchmarks
        self.reads: Counter[str] = Counter()
        self.credential_reloads = 0

    @classmethod
    async def from_environment(cls, source: CredentialSource = environment_credentials) -> Kube:
        creds = await source()
        return cls(creds.host, creds.ssl, creds.headers, reload=source)

    async def close(self) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    async def _reload_credentials(self, failed_generation: int) -> None:
        async with self._reload_lock:
            if self._generation != failed_generation or self._reload is None:
                return  # another request has reloaded them meanwhile
            creds = await self._reload()
            self.host, self._ssl, self._headers = creds.host.rstrip("/"), creds.ssl, creds.headers
            self._generation += 1
            self.credential_reloads += 1
            metrics.CREDENTIAL_RELOADS.inc()
            log.info("the API server answered 401: credentials loaded again")

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict | None = None,
        content_type: str = "application/json",
        kind: str = "",
    ) -> dict:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
            self._session = aiohttp.ClientSession(timeout=timeout)
        data = json.dumps(body) if body is not None else None
        counter = self.reads if method == "GET" else self.writes
        for retry in (False, True):
            generation = self._generation
            headers = {**self._headers, "Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            counter[f"{method} {kind}"] += 1
            metrics.API_REQUESTS.labels(method=method, kind=kind or "other").inc()
            async with self._session.request(
                method, self.host + path, data=data, params=params, headers=headers, ssl=self._ssl
            ) as resp:
                status, text = resp.status, await resp.text()
            if status == 401 and not retry and self._reload is not None:
                try:
                    await self._reload_credentials(generation)
                except Exception as e:
                    raise KubeError(401, f"unauthorized, and loading credentials again failed: {e}") from e
                continue
            break
        payload = json.loads(text) if text and text.startswith("{") else {}
        if status >= 400:
            msg = payload.get("message") or text[:500]
            transient = status >= 500 or status == 429  # 429: e.g. storage still initialising
            exc = {404: NotFound, 409: Conflict}.get(status, ServerError if transient else KubeError)
            raise exc(status, msg, payload)
        return payload

    # -- verbs ---------------------------------------------------------------
    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict:
        return await self.request("GET", res.path(namespace, name), kind=res.kind)

    async def get_text(self, path: str, params: dict | None = None, limit: int = 256 * 1024) -> str:
        """A plain-text GET (pod logs), at most `limit` bytes of it (the end is what is kept)."""
        if self._session is None:
            await self.request("GET", "/version")  # opens the session with the current credentials
        assert self._session is not None
        self.reads["GET text"] += 1
        async with self._session.get(
            self.host + path, params=params, headers=self._headers, ssl=self._ssl
        ) as resp:
            text = await resp.text(errors="replace")
            if resp.status >= 400:
                raise KubeError(resp.status, text[:300])
        return text[-limit:]

    async def get_or_none(self, res: Resource, name: str, namespace: str | None = None) -> dict | None:
        try:
            return await self.get(res, name, namespace)
        except NotFound:
            return None

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> builtins.list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        return (await self.request("GET", res.path(namespace), params=params, kind=res.kind)).get("items", [])

    async def apply(self, obj: dict, *, subresource: str | None = None, force: bool = True) -> dict:
        """Server-side apply under the operator's one field manager."""
        res = BY_KIND[obj["kind"]]
        meta = obj["metadata"]
        return await self.request(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"], subresource),
            body=obj,
            params={"fieldManager": FIELD_MANAGER, "force": "true" if force else "false"},
            content_type="application/apply-patch+yaml",
            kind=res.kind + (f"/{subresource}" if subresource else ""),
        )

    async def merge_patch(
        self, res: Resource, name: str, namespace: str | None, patch: dict, *, subresource: str | None = None
    ) -> dict:
        return await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            body=patch,
            params={"fieldManager": FIELD_MANAGER},
            content_type="application/merge-patch+json",
            kind=res.kind + (f"/{subresource}" if subresource else ""),
        )

    async def json_patch(
        self, res: Resource, name: str, namespace: str | None, ops: builtins.list[dict]
    ) -> dict:
        return await self.request(
            "PATCH",
            res.path(namespace, name),
            body=ops,
            params={"fieldManager": FIELD_MANAGER},
            content_type="application/json-patch+json",
            kind=res.kind,
        )

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        with contextlib.suppress(NotFound):
            await self.request(
                "DELETE", res.path(namespace, name), body={"propagationPolicy": "Background"}, kind=res.kind
            )

    async def event(self, obj: dict, *, reason: str, message: str, type_: str = "Normal") -> None:
        """A core/v1 Event on `obj`, so `kubectl describe` and `kubectl get events` show it."""
        meta = obj["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": "coursehub"},
            "reportingComponent": "coursehub.dev/operator",
            "reportingInstance": "coursehub",
            "firstTimestamp": now_rfc3339(),
            "lastTimestamp": now_rfc3339(),
            "count": 1,
        }
        try:
            await self.request("POST", EVENTS.path(meta["namespace"]), body=body, kind="Event")
        except KubeError as e:  # an Event is best effort; never fail a reconcile over it
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e)


def owner_reference(owner: dict, *, controller: bool = True) -> dict:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }
