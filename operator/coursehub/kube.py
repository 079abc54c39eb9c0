"""A small async Kubernetes REST client: get, list, server-side apply, status patch, delete, events.

kubernetes_asyncio loads the credentials (kubeconfig or in-cluster); the requests go through
one aiohttp session so that every write is counted (metrics, benchmarks) and server-side
apply is first-class: one field manager owns what the operator writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections import Counter
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
SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


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


class Kube:
    """One per operator process."""

    def __init__(
        self,
        host: str,
        ssl_context: ssl.SSLContext | bool,
        headers: dict[str, str],
        token_file: Path | None = None,
    ):
        self.host = host.rstrip("/")
        self._ssl = ssl_context
        self._headers = headers
        self._token_file = token_file
        self._session: aiohttp.ClientSession | None = None
        self.writes: Counter[str] = Counter()  # "VERB Kind" -> count, for benchmarks
        self.reads: Counter[str] = Counter()

    @classmethod
    async def from_environment(cls) -> Kube:
        cfg = k8s_client.Configuration()
        token_file = None
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
            token_file = SA_TOKEN
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=cfg)
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
        return cls(cfg.host, ctx, headers, token_file)

    async def close(self) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    def _auth_headers(self) -> dict[str, str]:
        if self._token_file and self._token_file.exists():
            # Projected service-account tokens rotate; read the current one.
            return {**self._headers, "Authorization": f"Bearer {self._token_file.read_text().strip()}"}
        return self._headers

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
        headers = {**self._auth_headers(), "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        counter = self.reads if method == "GET" else self.writes
        counter[f"{method} {kind}"] += 1
        metrics.API_REQUESTS.labels(method=method, kind=kind or "other").inc()
        async with self._session.request(
            method, self.host + path, data=data, params=params, headers=headers, ssl=self._ssl
        ) as resp:
            text = await resp.text()
            payload = json.loads(text) if text and text.startswith("{") else {}
            if resp.status >= 400:
                msg = payload.get("message") or text[:500]
                transient = resp.status >= 500 or resp.status == 429  # 429: e.g. storage still initialising
                exc = {404: NotFound, 409: Conflict}.get(resp.status, ServerError if transient else KubeError)
                raise exc(resp.status, msg, payload)
            return payload

    # -- verbs ---------------------------------------------------------------
    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict:
        return await self.request("GET", res.path(namespace, name), kind=res.kind)

    async def get_or_none(self, res: Resource, name: str, namespace: str | None = None) -> dict | None:
        try:
            return await self.get(res, name, namespace)
        except NotFound:
            return None

    async def list(
        self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list:
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

    async def json_patch(self, res: Resource, name: str, namespace: str | None, ops: list) -> dict:
        return await self.request(
            "PATCH",
            res.path(namespace, name),
            body=ops,
            params={"fieldManager": FIELD_MANAGER},
            content_type="application/json-patch+json",
            kind=res.kind,
        )

    async def delete(self, res: Resource, name: str, namespace: str | None = None) -> None:
        try:
            await self.request(
                "DELETE", res.path(namespace, name), body={"propagationPolicy": "Background"}, kind=res.kind
            )
        except NotFound:
            pass

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
