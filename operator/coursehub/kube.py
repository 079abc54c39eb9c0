"""A small async Kubernetes REST client: get, list, server-side apply, status patch, delete, events.

Credentials come from the pod's ServiceAccount or a kubeconfig (read by our own small loader,
which runs exec plugins) and are loaded again when the API server answers 401. The requests go through one
aiohttp session so that every request is counted (metrics, benchmarks) and server-side apply is
first-class: one field manager owns what the operator writes.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
import logging
import os
import shutil
import ssl
import tempfile
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

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


class KubeconfigError(Exception):
    """A kubeconfig we cannot use; the message names the field and what to do."""


EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
# Fields we do not implement: better refused by name than silently ignored (wrong server, no auth).
UNSUPPORTED_CLUSTER_FIELDS = ("proxy-url", "tls-server-name")
UNSUPPORTED_USER_FIELDS = ("auth-provider", "username", "password", "as", "as-groups", "as-uid")


def _kubeconfig_paths(config_file: str | Path | None, environ: Mapping[str, str]) -> list[Path]:
    if config_file:
        return [Path(config_file)]
    listed = [Path(p) for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return listed or [Path(environ.get("HOME", str(Path.home()))) / ".kube" / "config"]


def _named(docs: list[tuple[Path, dict]], section: str, name: str, where: str) -> tuple[Path, dict]:
    """The first entry called `name` in `section` across the files (kubectl's merge: first wins)."""
    key = section[:-1]  # clusters -> cluster
    for path, doc in docs:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                body = entry.get(key)
                if not isinstance(body, dict):
                    raise KubeconfigError(f"kubeconfig {path}: {section}[name={name}].{key} is missing")
                return path, body
    raise KubeconfigError(
        f"kubeconfig {', '.join(str(p) for p, _ in docs)}: {where} names {name!r}, "
        f"but no entry of {section} has that name"
    )


def _b64(value: str, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError) as e:
        raise KubeconfigError(f"{field} is not valid base64: {e}") from e


def _relative(base: Path, value: str) -> Path:
    """kubectl resolves relative file paths against the kubeconfig's own directory."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base.parent / p


def _load_client_cert(ctx: ssl.SSLContext, cert: bytes | Path, key: bytes | Path) -> None:
    """ssl loads a key pair only from files: in-memory data goes to a private (0700) directory
    that is removed as soon as the pair is loaded."""
    if isinstance(cert, Path) and isinstance(key, Path):
        ctx.load_cert_chain(str(cert), str(key))
        return
    with tempfile.TemporaryDirectory(prefix="coursehub-cert-") as d:
        paths = []
        for name, value in (("tls.crt", cert), ("tls.key", key)):
            if isinstance(value, Path):
                paths.append(str(value))
                continue
            path = Path(d) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
            paths.append(str(path))
        ctx.load_cert_chain(paths[0], paths[1])


async def _run_exec_plugin(
    spec: dict, where: str, base: Path, cluster: dict, environ: Mapping[str, str]
) -> dict:
    """Runs a client.authentication.k8s.io exec plugin (e.g. `aws eks get-token`) and returns
    the ExecCredential's status."""
    api_version = spec.get("apiVersion")
    if api_version not in EXEC_API_VERSIONS:
        raise KubeconfigError(
            f"{where}.exec.apiVersion is {api_version!r}: use one of {', '.join(EXEC_API_VERSIONS)}"
        )
    command = spec.get("command")
    if not command or not isinstance(command, str):
        raise KubeconfigError(f"{where}.exec.command is missing")
    if spec.get("interactiveMode") == "Always":
        raise KubeconfigError(
            f"{where}.exec.interactiveMode is Always, but the operator has no terminal: "
            "use a plugin that runs without one (IfAvailable or Never)"
        )
    if os.sep in command:  # a path, not a name on $PATH: relative to the kubeconfig
        command = str(_relative(base, command))
    resolved = shutil.which(command, path=environ.get("PATH"))
    if resolved is None:
        hint = spec.get("installHint") or "install it or fix the path"
        raise KubeconfigError(f"{where}.exec.command {command!r} was not found: {hint}")
    exec_info: dict[str, Any] = {
        "apiVersion": api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }
    if spec.get("provideClusterInfo"):
        exec_info["spec"]["cluster"] = {
            k: cluster[f]
            for k, f in (
                ("server", "server"),
                ("certificate-authority-data", "certificate-authority-data"),
                ("insecure-skip-tls-verify", "insecure-skip-tls-verify"),
            )
            if f in cluster
        }
    env = {**environ, "KUBERNETES_EXEC_INFO": json.dumps(exec_info)}
    for i, item in enumerate(spec.get("env") or []):
        if not isinstance(item, dict) or "name" not in item or "value" not in item:
            raise KubeconfigError(f"{where}.exec.env[{i}] needs a name and a value")
        env[str(item["name"])] = str(item["value"])
    args = [str(a) for a in spec.get("args") or []]
    proc = await asyncio.create_subprocess_exec(
        resolved,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip()[-500:]
        raise KubeconfigError(f"{where}.exec.command {command!r} exited with {proc.returncode}: {tail}")
    try:
        cred = json.loads(out)
    except ValueError as e:
        raise KubeconfigError(f"{where}.exec.command {command!r} printed no ExecCredential JSON: {e}") from e
    status = cred.get("status") if isinstance(cred, dict) else None
    if not isinstance(status, dict):
        raise KubeconfigError(f"{where}.exec.command {command!r} printed an ExecCredential without status")
    return status


async def kubeconfig_credentials(
    config_file: str | Path | None = None, environ: Mapping[str, str] = os.environ
) -> Credentials:
    """Credentials from a kubeconfig ($KUBECONFIG or ~/.kube/config unless given).

    Each call reads the file again and runs its exec plugin again (an EKS token lives ~15 minutes).
    Our own loader: kubernetes_asyncio's costs ~77 MB of generated modules for a few dozen lines.
    """
    docs: list[tuple[Path, dict]] = []
    for path in _kubeconfig_paths(config_file, environ):
        if not path.exists():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise KubeconfigError(f"kubeconfig {path} is not valid YAML: {e}") from e
        if not isinstance(doc, dict):
            raise KubeconfigError(f"kubeconfig {path} is not a mapping")
        docs.append((path, doc))
    if not docs:
        names = ", ".join(str(p) for p in _kubeconfig_paths(config_file, environ))
        raise KubeconfigError(f"no kubeconfig at {names}: set KUBECONFIG or run inside a cluster")
    current = next((d.get("current-context") for _, d in docs if d.get("current-context")), None)
    if not current:
        raise KubeconfigError(f"kubeconfig {docs[0][0]}: current-context is missing")
    _, context = _named(docs, "contexts", current, "current-context")
    for field in ("cluster", "user"):
        if not context.get(field):
            raise KubeconfigError(
                f"kubeconfig {docs[0][0]}: contexts[name={current}].context.{field} is missing"
            )
    cpath, cluster = _named(docs, "clusters", context["cluster"], f"contexts[name={current}].context.cluster")
    upath, user = _named(docs, "users", context["user"], f"contexts[name={current}].context.user")
    cwhere, uwhere = f"clusters[name={context['cluster']}].cluster", f"users[name={context['user']}].user"

    server = cluster.get("server")
    if not server:
        raise KubeconfigError(f"kubeconfig {cpath}: {cwhere}.server is missing: give the API server's URL")
    for field in UNSUPPORTED_CLUSTER_FIELDS:
        if field in cluster:
            raise KubeconfigError(f"kubeconfig {cpath}: {cwhere}.{field} is not supported by coursehub")
    for field in UNSUPPORTED_USER_FIELDS:
        if field in user:
            raise KubeconfigError(
                f"kubeconfig {upath}: {uwhere}.{field} is not supported by coursehub: "
                "use a token, a client certificate or an exec plugin"
            )

    ctx = ssl.create_default_context()
    if cluster.get("insecure-skip-tls-verify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif "certificate-authority-data" in cluster:
        ca = _b64(cluster["certificate-authority-data"], f"{cwhere}.certificate-authority-data")
        ctx.load_verify_locations(cadata=ca.decode(errors="replace"))
    elif "certificate-authority" in cluster:
        ctx.load_verify_locations(cafile=str(_relative(cpath, cluster["certificate-authority"])))

    headers: dict[str, str] = {}
    token: str | None = user.get("token")
    if not token and user.get("tokenFile"):
        token = _relative(upath, user["tokenFile"]).read_text().strip()
    cert: bytes | Path | None = None
    key: bytes | Path | None = None
    if "client-certificate-data" in user:
        cert = _b64(user["client-certificate-data"], f"{uwhere}.client-certificate-data")
    elif "client-certificate" in user:
        cert = _relative(upath, user["client-certificate"])
    if "client-key-data" in user:
        key = _b64(user["client-key-data"], f"{uwhere}.client-key-data")
    elif "client-key" in user:
        key = _relative(upath, user["client-key"])
    if isinstance(user.get("exec"), dict):
        status = await _run_exec_plugin(
            user["exec"], f"kubeconfig {upath}: {uwhere}", upath, cluster, environ
        )
        if status.get("token"):
            token = status["token"]
        elif status.get("clientCertificateData") and status.get("clientKeyData"):
            cert = status["clientCertificateData"].encode()
            key = status["clientKeyData"].encode()
        else:
            raise KubeconfigError(
                f"kubeconfig {upath}: {uwhere}.exec printed an ExecCredential whose status has "
                "neither token nor clientCertificateData with clientKeyData"
            )
    if (cert is None) != (key is None):
        missing = "client-key(-data)" if key is None else "client-certificate(-data)"
        raise KubeconfigError(
            f"kubeconfig {upath}: {uwhere}.{missing} is missing (a client certificate needs both)"
        )
    if cert is not None and key is not None:
        _load_client_cert(ctx, cert, key)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif cert is None:
        raise KubeconfigError(
            f"kubeconfig {upath}: {uwhere} has no credentials: "
            "give token, tokenFile, client-certificate(-data) with client-key(-data), or exec"
        )
    return Credentials(server, ctx, headers)


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
        accept: str = "application/json",
        kind: str = "",
    ) -> dict:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
            self._session = aiohttp.ClientSession(timeout=timeout)
        data = json.dumps(body) if body is not None else None
        counter = self.reads if method == "GET" else self.writes
        for retry in (False, True):
            generation = self._generation
            headers = {**self._headers, "Accept": accept}
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

    async def list_names(self, res: Resource, namespace: str | None = None) -> builtins.list[tuple[str, str]]:
        """(namespace, name) of every object: metadata only (PartialObjectMetadataList), a small
        answer even for 10,000 courses."""
        payload = await self.request(
            "GET",
            res.path(namespace),
            accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
            kind=res.kind,
        )
        items = payload.get("items") or []  # null, not [], in an empty PartialObjectMetadataList
        return [(i["metadata"].get("namespace", ""), i["metadata"]["name"]) for i in items]

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
