"""The hub's z2jh Helm release: install, upgrade only on a real change, roll back, uninstall.

All Helm work goes through pyhelm3 (the helm binary, driven as a subprocess). The rule
that matters: nothing that changes the cluster runs unless the chart or the rendered
values differ from the deployed revision. Each deployed revision carries a fingerprint
of (chart, values) in its Helm description, so the common no-change case costs one
read-only `helm status`, also right after an operator restart; when the description has
no fingerprint (a rollback, a hand-made upgrade) the deployed chart and values are
compared directly.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pyhelm3 import Client, Command
from pyhelm3 import errors as helm_errors
from pyhelm3.models import Chart, ChartMetadata, ReleaseRevision, ReleaseRevisionStatus

from .api.jupyterhubdeployment import ChartSource
from .desired.hub_round import DETERMINISTIC_RELEASE_REASONS
from .metrics import HELM_OPERATIONS, HELM_SECONDS

FINGERPRINT_PREFIX = "coursehub fingerprint="
MUTATING = frozenset({"install", "upgrade", "rollback", "uninstall"})


@dataclass(frozen=True)
class ReleaseOutcome:
    changed: bool  # True when this call installed or upgraded
    revision: int
    chart_version: str
    status: str  # helm's status, e.g. "deployed"
    fingerprint: str  # of the chart and values now deployed ("" if unknown)
    operation: str = "none"  # "none" | "install" | "upgrade"


class ReleaseFailed(Exception):
    """A Helm operation failed; `message` is helm's error, summarised and secret-free."""

    def __init__(self, reason: str, message: str, *, revision: int | None = None):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.revision = revision  # the revision deployed after the failure, if any


# --- pure helpers --------------------------------------------------------------------


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def chart_identity(chart: ChartSource) -> dict:
    """What identifies a chart source, independent of how it was spelled in the spec."""
    if chart.path:
        return {"path": chart.path}
    ident = {"name": chart.name, "version": chart.version}
    if chart.repository:
        ident["repository"] = chart.repository.rstrip("/") + "/"
    return ident


def release_fingerprint(chart: ChartSource, values: dict, chart_version: str | None = None) -> str:
    """sha256 over the chart source (and the resolved version, for path/unpinned charts) and values."""
    doc = {"chart": chart_identity(chart), "version": chart_version, "values": values}
    return "sha256:" + hashlib.sha256(_canonical(doc).encode()).hexdigest()


def description_for(fingerprint: str) -> str:
    return f"{FINGERPRINT_PREFIX}{fingerprint}"


def fingerprint_from_description(description: str | None) -> str | None:
    if description and description.startswith(FINGERPRINT_PREFIX):
        return description[len(FINGERPRINT_PREFIX) :].strip() or None
    return None


def chart_name(chart: ChartSource) -> str | None:
    """The chart's name as Helm records it (None for a path: read from its Chart.yaml)."""
    if chart.path:
        return None
    assert chart.name is not None
    return chart.name.rstrip("/").rsplit("/", 1)[-1] if chart.name.startswith("oci://") else chart.name


_CREDENTIALS_IN_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@")
_SECRETISH = re.compile(r"(?i)\b(password|passwd|token|secret)(\s*[=:]\s*)\S+")


def summarise_helm_error(stderr: str, *, limit: int = 600) -> str:
    """helm's error text, one line, without credentials, at most `limit` characters."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # helm prints the error last ("Error: ..."); warnings before it are noise here.
    errs = [ln for ln in lines if ln.startswith("Error:")]
    if errs:
        start = lines.index(errs[0])
        lines = lines[start:]
    text = " ".join(lines)
    text = re.sub(r"^Error:\s*", "", text)
    text = re.sub(r"^(UPGRADE FAILED|INSTALLATION FAILED):\s*", "", text)
    text = _CREDENTIALS_IN_URL.sub(r"\1***@", text)
    text = _SECRETISH.sub(r"\1\2***", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def classify_helm_error(stderr: str, operation: str) -> str:
    """A condition reason (CamelCase) for a failed helm command."""
    s = stderr.lower()
    if "cannot impersonate" in s:
        return "ImpersonationRefused"
    if " is forbidden: " in s or "forbidden: user " in s:
        return "Forbidden"
    if "values don't meet the specifications of the schema" in s:
        return "ValuesRejected"
    if "another operation (install/upgrade/rollback) is in progress" in s:
        return "OperationInProgress"
    if "kubernetes cluster unreachable" in s or "connection refused" in s or "no such host" in s:
        return "ClusterUnreachable"
    if "timed out waiting for the condition" in s or "context deadline exceeded" in s:
        return "Timeout"
    if (
        "execution error at" in s
        or "parse error" in s
        or "failed to render" in s
        or ("template: " in s and "error calling" in s)
    ):
        return "ChartRenderFailed"
    if "could not find protocol handler" in s:
        return "InvalidChartSource"
    if (
        "chart not found" in s
        or re.search(r'chart "[^"]*"( version "[^"]*")? not found', s)
        or "failed to download" in s
        or "no chart version found" in s
        or "no chart name found" in s
        or "not a valid chart repository" in s
        or ("path " in s and "not found" in s)
    ):
        return "ChartNotFound"
    if "is invalid" in s:
        return "ResourceInvalid"
    if "already exists" in s or "invalid ownership metadata" in s:
        return "ResourceConflict"
    return {
        "install": "InstallFailed",
        "upgrade": "UpgradeFailed",
        "uninstall": "UninstallFailed",
        "rollback": "RollbackFailed",
        "show_chart": "ChartNotFound",
    }.get(operation, "HelmError")


def _normalise(values: Any) -> Any:
    # Through JSON, as helm sees them: tuples become lists, 1.0 and 1 compare equal.
    return json.loads(json.dumps(values or {}))


def find_helm() -> str:
    """The helm binary: $COURSEHUB_HELM, else `helm` on PATH (the image sets the first;
    `eval $(coursehub-dev env)` sets both for the dev build)."""
    env = os.environ.get("COURSEHUB_HELM")
    if env:
        return env
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    raise FileNotFoundError(
        "no helm binary: set COURSEHUB_HELM to its path or put helm on PATH "
        "(in a checkout: `uv run coursehub-dev build`, then `eval $(uv run coursehub-dev env)`)"
    )


# --- the release handler -------------------------------------------------------------


class _ImpersonatingCommand(Command):
    """pyhelm3's Command, with every helm call made as `user` (`--kube-as-user`).

    For a ServiceAccount user the API server derives the groups itself, so the operator
    needs `impersonate` on that ServiceAccount only (not on groups).
    """

    def __init__(self, *, user: str, **kwargs: Any):
        super().__init__(**kwargs)
        self._user = user

    async def run(self, command: list[str], input: bytes | None = None) -> bytes:
        return await super().run([*command, "--kube-as-user", self._user], input)


class HelmReleases:
    """Release handling for hubs; one instance per operator process.

    `atomic` makes helm roll a failed upgrade back (and remove a failed install); in
    Helm 3 it also makes helm wait for the release's workloads to be ready, up to
    `timeout`. `wait` alone asks for that wait without the rollback.

    Every method takes `as_user`: the identity helm impersonates for that hub
    (desired/tenancy.py's helm_user). None runs helm as the operator itself, which only
    tests and tools do.
    """

    def __init__(
        self,
        *,
        executable: str | None = None,
        kubeconfig: str | Path | None = None,
        timeout: str = "5m",
        atomic: bool = True,
        wait: bool = False,
        history_max: int = 10,
    ):
        if kubeconfig is None and not os.environ.get("KUBECONFIG"):
            kubeconfig = _write_in_cluster_kubeconfig()
        self._command_args: dict[str, Any] = {
            "executable": executable or find_helm(),
            "kubeconfig": Path(kubeconfig) if kubeconfig else None,
            "default_timeout": timeout,
            "history_max_revisions": history_max,
        }
        self._clients: dict[str | None, Client] = {}
        self.timeout = timeout
        self.atomic = atomic
        self.wait = wait
        # (operation, result) -> count, for tests and benchmarks in this process.
        self.operations: collections.Counter[tuple[str, str]] = collections.Counter()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._refused: dict[tuple[str, str], tuple[str, int, ReleaseFailed]] = {}

    def client(self, as_user: str | None = None) -> Client:
        """The pyhelm3 client acting as `as_user` (one per identity, kept: each runs `helm version` once)."""
        if as_user not in self._clients:
            command = (
                _ImpersonatingCommand(user=as_user, **self._command_args)
                if as_user
                else Command(**self._command_args)
            )
            self._clients[as_user] = Client(command, executable=self._command_args["executable"])
        return self._clients[as_user]

    @property
    def mutating_operations(self) -> int:
        return sum(n for (op, _), n in self.operations.items() if op in MUTATING)

    async def _run(self, operation: str, coro, *, as_user: str | None = None):
        start = time.monotonic()
        try:
            result = await coro
        except helm_errors.ReleaseNotFoundError:
            self._count(operation, "not_found", start)
            raise
        except helm_errors.Error as e:
            self._count(operation, "error", start)
            stderr = e.stderr.decode(errors="replace")
            reason, message = classify_helm_error(stderr, operation), summarise_helm_error(stderr)
            if as_user and reason == "ClusterUnreachable" and "unreachable: unknown" in stderr.lower():
                # The API server refuses even /version to an identity the caller may not act as;
                # helm reports that as an unreachable cluster with no detail.
                reason = "ImpersonationRefused"
                message = (
                    f"the API server refused helm acting as {as_user}: the operator may impersonate only "
                    "the ServiceAccount names its chart lists (tenancy.serviceAccountName, "
                    f"tenancy.extraServiceAccountNames) ({message})"
                )
            raise ReleaseFailed(reason, message) from None
        except Exception:
            self._count(operation, "error", start)
            raise
        self._count(operation, "ok", start)
        return result

    def _count(self, operation: str, result: str, start: float) -> None:
        self.operations[(operation, result)] += 1
        HELM_OPERATIONS.labels(operation=operation, result=result).inc()
        HELM_SECONDS.labels(operation=operation).observe(time.monotonic() - start)

    # -- reads

    async def current_revision(
        self, name: str, namespace: str, *, as_user: str | None = None
    ) -> ReleaseRevision | None:
        """The latest revision (any status), or None when the release does not exist."""
        try:
            return await self._run(
                "status",
                self.client(as_user).get_current_revision(name, namespace=namespace),
                as_user=as_user,
            )
        except helm_errors.ReleaseNotFoundError:
            return None

    async def release_status(
        self, name: str, namespace: str, *, as_user: str | None = None
    ) -> ReleaseOutcome | None:
        """Read-only: what is deployed now (for status reporting)."""
        rev = await self.current_revision(name, namespace, as_user=as_user)
        if rev is None:
            return None
        meta = await rev.chart_metadata()
        return ReleaseOutcome(
            False,
            rev.revision,
            meta.version,
            rev.status.value,
            fingerprint_from_description(rev.description) or "",
        )

    # -- writes

    async def ensure_release(
        self, name: str, namespace: str, chart: ChartSource, values: dict, *, as_user: str | None = None
    ) -> ReleaseOutcome:
        """Make the release run `chart` with exactly `values`; touch nothing if it already does."""
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            return await self._ensure(name, namespace, chart, _normalise(values), as_user)

    async def _ensure(
        self, name: str, namespace: str, chart: ChartSource, values: dict, as_user: str | None
    ) -> ReleaseOutcome:
        client = self.client(as_user)
        key = (namespace, name)
        local_meta = _read_local_chart(chart.path) if chart.path else None
        # The version the spec asks for, when it is known without asking a repository.
        want_version = local_meta.version if local_meta else chart.version
        want_name = local_meta.name if local_meta else chart_name(chart)
        fingerprint = release_fingerprint(chart, values, want_version)

        current = await self.current_revision(name, namespace, as_user=as_user)
        current = await self._make_proceedable(current, as_user)

        refused = self._refused.get(key)
        if refused and current is not None and refused[0] == fingerprint and refused[1] == current.revision:
            # Same chart and values already failed against this very revision: do not
            # churn revisions again. A spec change, a restart or forget_failure() retries.
            raise refused[2]

        if current is not None and current.status == ReleaseRevisionStatus.DEPLOYED:
            meta = await current.chart_metadata()
            if await self._unchanged(current, meta, fingerprint, want_name, want_version, values):
                return ReleaseOutcome(
                    False,
                    current.revision,
                    meta.version,
                    current.status.value,
                    fingerprint_from_description(current.description) or fingerprint,
                )

        pyhelm_chart = await self._resolve_chart(client, chart)
        if want_version is None:  # an unpinned OCI chart: the fingerprint names what was resolved
            fingerprint = release_fingerprint(chart, values, pyhelm_chart.metadata.version)
            if current is not None and current.status == ReleaseRevisionStatus.DEPLOYED:
                meta = await current.chart_metadata()
                if await self._unchanged(
                    current,
                    meta,
                    fingerprint,
                    pyhelm_chart.metadata.name,
                    pyhelm_chart.metadata.version,
                    values,
                ):
                    return ReleaseOutcome(
                        False, current.revision, meta.version, current.status.value, fingerprint
                    )

        operation = "install" if current is None else "upgrade"
        try:
            rev = await self._run(
                operation,
                client.install_or_upgrade_release(
                    name,
                    pyhelm_chart,
                    values,
                    atomic=self.atomic,
                    wait=self.wait,
                    namespace=namespace,
                    create_namespace=False,
                    description=description_for(fingerprint),
                    timeout=self.timeout,
                ),
            )
        except ReleaseFailed as e:
            after = await self.current_revision(name, namespace, as_user=as_user)
            e.revision = after.revision if after is not None else None
            if self.atomic and operation == "upgrade" and after is not None:
                e.message = f"upgrade failed and was rolled back (revision {after.revision}): {e.message}"
            elif self.atomic and operation == "install":
                e.message = f"install failed and was removed: {e.message}"
            if e.reason in DETERMINISTIC_RELEASE_REASONS and after is not None:
                self._refused[key] = (fingerprint, after.revision, e)
            raise
        self._refused.pop(key, None)
        return ReleaseOutcome(
            True, rev.revision, pyhelm_chart.metadata.version, rev.status.value, fingerprint, operation
        )

    def forget_failure(self, name: str, namespace: str) -> None:
        """Allow a retry of chart and values that failed before (e.g. after fixing the cluster)."""
        self._refused.pop((namespace, name), None)

    async def _unchanged(
        self,
        current: ReleaseRevision,
        meta: ChartMetadata,
        fingerprint: str,
        want_name: str | None,
        want_version: str | None,
        values: dict,
    ) -> bool:
        if want_version is None:
            return False
        if meta.version.lstrip("v") != want_version.lstrip("v") or (want_name and meta.name != want_name):
            return False
        deployed_fingerprint = fingerprint_from_description(current.description)
        if deployed_fingerprint is not None:
            # Ours: it covers the chart source too, which the deployed release does not record.
            return deployed_fingerprint == fingerprint
        # No fingerprint (a rollback, or an upgrade by hand): compare what is deployed.
        deployed = await self._run("get_values", current.values())
        return _normalise(deployed) == values

    async def _resolve_chart(self, client: Client, chart: ChartSource) -> Chart:
        try:
            return await self._resolve_chart_unchecked(client, chart)
        except pydantic.ValidationError as e:
            # pyhelm3 models refuse what they cannot drive (e.g. a file:// repository).
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ReleaseFailed(
                "InvalidChartSource", f"spec.chart is not usable by helm here: {where}: {first['msg']}"
            ) from None

    async def _resolve_chart_unchecked(self, client: Client, chart: ChartSource) -> Chart:
        # Only before an install or upgrade: the no-change path never gets here.
        if chart.path:
            return await self._run("show_chart", client.get_chart(Path(chart.path)))
        assert chart.name is not None
        return await self._run(
            "show_chart", client.get_chart(chart.name, repo=chart.repository, version=chart.version)
        )

    async def _make_proceedable(
        self, current: ReleaseRevision | None, as_user: str | None
    ) -> ReleaseRevision | None:
        """Finish what an interrupted helm run (e.g. an operator killed mid-upgrade) left behind."""
        if current is None:
            return None
        st = current.status
        if st in (ReleaseRevisionStatus.PENDING_INSTALL, ReleaseRevisionStatus.UNINSTALLING) or (
            st == ReleaseRevisionStatus.FAILED and current.revision == 1
        ):
            # Nothing deployed to go back to: start over.
            await self._run("uninstall", current.release.uninstall(wait=True, timeout=self.timeout))
            return None
        if st in (ReleaseRevisionStatus.PENDING_UPGRADE, ReleaseRevisionStatus.PENDING_ROLLBACK):
            await self._run(
                "rollback",
                current.release.rollback(cleanup_on_fail=True, wait=True, timeout=self.timeout),
            )
            return await self.current_revision(
                current.release.name, current.release.namespace, as_user=as_user
            )
        return current

    async def uninstall_release(
        self, name: str, namespace: str, *, wait: bool = False, as_user: str | None = None
    ) -> bool:
        """Remove the release; False when there was none. Never touches the database."""
        try:
            current = await self.current_revision(name, namespace, as_user=as_user)
            if current is None:
                return False
            await self._run("uninstall", current.release.uninstall(wait=wait, timeout=self.timeout))
        except helm_errors.ReleaseNotFoundError:
            return False
        finally:
            self._refused.pop((namespace, name), None)
        return True


def _read_local_chart(path: str) -> ChartMetadata:
    chart_yaml = Path(path) / "Chart.yaml"
    try:
        if Path(path).is_file():
            # A packaged chart (.tgz, as a chart repository publishes it): <name>/Chart.yaml inside.
            chart_yaml = Path(path) / "<name>/Chart.yaml"
            data = yaml.safe_load(_packaged_chart_yaml(path))
        else:
            data = yaml.safe_load(chart_yaml.read_text())
    except OSError as e:
        raise ReleaseFailed("ChartNotFound", f"no chart at {path}: {e.strerror}") from None
    except (tarfile.TarError, KeyError) as e:
        raise ReleaseFailed(
            "ChartNotFound", f"{path} is not a packaged chart (a .tgz with <name>/Chart.yaml): {e}"
        ) from None
    try:
        return ChartMetadata(**data)
    except Exception as e:  # pydantic's error names the bad field
        raise ReleaseFailed("ChartNotFound", f"{chart_yaml} is not a valid Chart.yaml: {e}") from None


def _packaged_chart_yaml(path: str) -> bytes:
    with tarfile.open(path, "r:*") as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] == "Chart.yaml" and member.isfile():
                f = tar.extractfile(member)
                if f is not None:
                    return f.read()
    raise KeyError("no <name>/Chart.yaml in the archive")


SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster_kubeconfig(env: dict[str, str], sa_dir: Path = SERVICE_ACCOUNT_DIR) -> dict | None:
    """A kubeconfig naming the pod's own API server, CA and (rotating) token file; None outside a pod.

    helm given --kube-as-user (every hub's impersonation) no longer falls back to the in-cluster
    config: client-go uses that only without overrides, and otherwise talks to localhost:8080,
    which in the operator's pod is its own liveness port. A kubeconfig keeps helm on the API server.
    """
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port or not (sa_dir / "token").exists():
        return None
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "in-cluster",
                "cluster": {"server": server, "certificate-authority": str(sa_dir / "ca.crt")},
            }
        ],
        "users": [{"name": "operator", "user": {"tokenFile": str(sa_dir / "token")}}],
        "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "operator"}}],
        "current-context": "in-cluster",
    }


def _write_in_cluster_kubeconfig() -> Path | None:
    config = in_cluster_kubeconfig(dict(os.environ))
    if config is None:
        return None
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="coursehub-helm-")) / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
