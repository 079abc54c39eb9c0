"""coursehub's code inside the JupyterHub hub: course launch links -> allowlisted images.

This file is embedded verbatim as a ``hub.extraConfig`` entry of the z2jh Helm values
(see ``coursehub.hub.extra_config_snippets``) and is also importable as
``coursehub.hub.course_spawner`` for tests. It may import only what the z2jh hub image
ships (jupyterhub, kubespawner, kubernetes_asyncio, tornado, traitlets, stdlib) and
never ``coursehub``. No ``from __future__`` import: a settings line is prepended to
this text when it is embedded, and such an import must be the first statement.

Flow of a launch link ``/hub/tmplogin?course=<slug>&notebook=<path>``:

1. ``CourseTmpLoginHandler`` checks the course against the live allowlist *before*
   creating a temporary user, so an unoffered course is refused with HTTP 400 and
   leaves no user behind; otherwise it logs in a fresh user and redirects to
   ``/hub/spawn?course=...&notebook=...`` (only the known launch keys are carried).
2. ``CourseSpawner.options_from_query`` reduces the query to the known keys.
3. ``CourseSpawner.load_user_options`` (called by KubeSpawner at the top of ``_start``)
   takes the current allowlist, resolves the course and sets image, default URL,
   resources and GPU scheduling.

The allowlist is kept current by a watch on the ConfigMap (``AllowlistWatcher``), so
a spawn reads memory; while the watch is down, it is read through the API with a
cache of ``ALLOWLIST_TTL_SECONDS`` (``AllowlistCache``). Either way a change reaches
the next spawn within seconds, without a hub restart.

Everything that decides is a pure function (``normalize_options``,
``validate_notebook``, ``parse_allowlist``, ``plan_launch``, ``merge_traits``); the
classes only do I/O and assignment.
"""

import asyncio
import html
import ipaddress
import json
import logging
import os
import re
import time
import unicodedata
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode

from jupyterhub.apihandlers.users import UserServerAPIHandler
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.login import LogoutHandler
from jupyterhub.handlers.pages import SpawnHandler
from kubespawner import KubeSpawner
from tmpauthenticator import TmpAuthenticateHandler, TmpAuthenticator
from tornado import web
from traitlets import Unicode, default

# The module name under which tests import this file; anything else means we were
# exec'd by z2jh's jupyterhub_config.py (where __name__ resolves to "builtins").
_MODULE_NAME = "coursehub.hub.course_spawner"

log = logging.getLogger("coursehub.hub")

ALLOWLIST_CONFIGMAP = "coursehub-allowlist"
ALLOWLIST_KEY = "allowlist.json"
# Contract: changes must apply within 5 s; 1 s TTL leaves room for API latency.
ALLOWLIST_TTL_SECONDS = 1.0
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# Only these request keys are ever read; everything else (tag, image, profile, ...)
# is dropped before it can reach the spawner.
LAUNCH_KEYS = ("course", "notebook", "gpu")
# The system this replaces used needs_gpu; old links keep working.
GPU_ALIASES = ("gpu", "needs_gpu")
MAX_COURSE_LEN = 253
MAX_NOTEBOOK_LEN = 512
MAX_RAW_VALUE_LEN = 4096
TRUTHY = frozenset({"1", "true", "yes", "y", "on"})
DIGEST_PINNED = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
GPU_MODES = ("none", "required", "optional")


class CourseRefused(Exception):
    """A spawn request that must not start anything.

    ``status`` is the HTTP code; ``kind`` is one of ``not_offered``, ``no_course``,
    ``no_gpu_nodes``, ``unavailable``. "Not offered" is 400, not 404, because
    JupyterHub's 404 page does not show the message, and the learner must read it.
    """

    def __init__(self, status: int, message: str, kind: str = "not_offered"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


class AllowlistError(ValueError):
    """The allowlist document is not in the contract's shape."""


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class GpuConfig:
    node_selector: Mapping[str, str]
    tolerations: tuple
    resource: str = "nvidia.com/gpu"


@dataclass(frozen=True)
class Course:
    key: str
    course: str
    image: str
    display_name: str = ""
    gpu: str = "none"
    default_notebook: str | None = None
    mem_limit: int | None = None
    mem_guarantee: int | None = None
    cpu_limit: float | None = None
    cpu_guarantee: float | None = None


@dataclass(frozen=True)
class Limits:
    """The hub's ``limits`` section. None: no limit.

    ``gateway_identity``: the hub sits behind coursehub's SSO gateway, so the identity
    headers oauth2-proxy sets are trusted, required on login, and counted per person.
    """

    active_servers: int | None = None
    servers_per_identity: int | None = None
    gpu_servers_per_identity: int | None = None
    gateway_identity: bool = False


@dataclass(frozen=True)
class Allowlist:
    courses: Mapping[str, Course] = field(default_factory=dict)
    default: str | None = None
    on_unknown: str = "default"
    gpu: GpuConfig | None = None
    hub: str = ""
    limits: Limits = field(default_factory=Limits)
    # False when the ConfigMap does not exist (nothing published yet).
    published: bool = True

    def images(self) -> frozenset:
        return frozenset(c.image for c in self.courses.values())


_MEM_UNITS = {
    "": 1,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
    "T": 1024**4,
    "KI": 1024,
    "MI": 1024**2,
    "GI": 1024**3,
    "TI": 1024**4,
}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]I?)?B?\s*$", re.IGNORECASE)


def parse_memory(value: Any) -> int | None:
    """Bytes from ``8G``/``512Mi``/an int; units are 1024-based like JupyterHub's
    ByteSpecification (so ``4G`` means what z2jh's singleuser.memory means)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if value > 0 else None
    m = _MEM_RE.match(str(value))
    if not m:
        raise ValueError(f"not a memory quantity: {value!r}")
    n = int(float(m.group(1)) * _MEM_UNITS[(m.group(2) or "").upper()])
    return n if n > 0 else None


def parse_cpu(value: Any) -> float | None:
    """Cores from ``0.5``/``500m``/a number."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    s = str(value).strip()
    n = float(s[:-1]) / 1000 if s.endswith("m") else float(s)
    return n if n > 0 else None


def _course_from_json(key: str, raw: Mapping) -> Course:
    image = raw.get("image")
    if not isinstance(image, str) or not DIGEST_PINNED.match(image):
        # Contract: images are always digest-pinned; anything else is not trusted.
        raise AllowlistError(f"course {key!r}: image is not digest-pinned: {image!r}")
    gpu = raw.get("gpu") or "none"
    if gpu not in GPU_MODES:
        raise AllowlistError(f"course {key!r}: gpu must be one of {GPU_MODES}, got {gpu!r}")
    res = raw.get("resources") or {}
    mem = res.get("memory") or {}
    cpu = res.get("cpu") or {}
    nb = raw.get("defaultNotebook")
    return Course(
        key=key,
        course=str(raw.get("course") or key),
        image=image,
        display_name=str(raw.get("displayName") or ""),
        gpu=gpu,
        default_notebook=nb if isinstance(nb, str) and nb else None,
        mem_limit=parse_memory(mem.get("limit")),
        mem_guarantee=parse_memory(mem.get("guarantee")),
        cpu_limit=parse_cpu(cpu.get("limit")),
        cpu_guarantee=parse_cpu(cpu.get("guarantee")),
    )


class _LazyCourses(Mapping):
    """Course entries parsed on first lookup: a spawn needs one course, and building
    all 1,000 on every allowlist change would cost milliseconds in the request path."""

    def __init__(self, raw: Mapping, on_bad_course: Callable[[str], None] | None = None):
        # Keys are lower-cased by contract; lower again so a hand edit still matches.
        self._raw = {str(k).lower(): v for k, v in raw.items()}
        self._parsed: dict = {}
        self._on_bad = on_bad_course

    def __getitem__(self, key: str) -> Course:
        found = self._parsed.get(key)
        if found is None:
            raw = self._raw[key]  # KeyError: not in the allowlist
            try:
                if not isinstance(raw, dict):
                    raise AllowlistError(f"course {key!r} is not an object")
                found = _course_from_json(key, raw)
            except (AllowlistError, ValueError, TypeError) as e:
                if self._on_bad:
                    self._on_bad(str(e))
                self._raw.pop(key, None)  # report a bad entry once, then treat it as absent
                raise KeyError(key) from None
            self._parsed[key] = found
        return found

    def __contains__(self, key) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __iter__(self):
        return iter([k for k in list(self._raw) if k in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)


ALLOWLIST_SHARD_KEY = "courses.json"


def shard_names(text: str | None) -> list[str]:
    """The shard ConfigMaps a sharded (version 2) allowlist index lists; [] for an inline one.

    Only names of the form ``coursehub-allowlist-<hash>`` count (the hub's Role lets it
    read exactly those the operator listed).
    """
    try:
        doc = json.loads(text) if text else None
    except (TypeError, ValueError):
        return []
    if not isinstance(doc, dict) or doc.get("version") != 2 or not isinstance(doc.get("shards"), list):
        return []
    names = doc["shards"]
    prefix = ALLOWLIST_CONFIGMAP + "-"
    if not names or not all(isinstance(n, str) and n.startswith(prefix) for n in names):
        return []
    return names


def expand_sharded(text: str, shards: Mapping[str, str]) -> str:
    """A version-1 allowlist document from a sharded index and its shards' texts."""
    doc = json.loads(text)
    courses: dict = {}
    for name in doc["shards"]:
        try:
            part = json.loads(shards[name])
        except (KeyError, TypeError, ValueError):
            raise AllowlistError(f"allowlist shard {name} is missing or not JSON") from None
        if not isinstance(part, dict) or not isinstance(part.get("courses"), dict):
            raise AllowlistError(f"allowlist shard {name} has no courses object")
        courses.update(part["courses"])
    out = {k: v for k, v in doc.items() if k != "shards"}
    out["version"] = 1
    out["courses"] = courses
    return json.dumps(out)


def parse_allowlist(text: str, *, on_bad_course: Callable[[str], None] | None = None) -> Allowlist:
    """Parse the ``allowlist.json`` document (docs/CONTRACTS.md).

    A malformed course entry is dropped when it is first looked up (reported through
    ``on_bad_course``) rather than failing the whole list: one bad course must not
    take every course down. A malformed document raises ``AllowlistError``.
    """
    try:
        doc = json.loads(text)
    except (TypeError, ValueError) as e:
        raise AllowlistError(f"allowlist is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise AllowlistError("allowlist must be an object with version 1")
    raw_courses = doc.get("courses") or {}
    if not isinstance(raw_courses, dict):
        raise AllowlistError("allowlist.courses must be an object")
    courses = _LazyCourses(raw_courses, on_bad_course)
    on_unknown = doc.get("onUnknown") or "default"
    if on_unknown not in ("default", "reject"):
        raise AllowlistError(f"onUnknown must be default or reject, got {on_unknown!r}")
    dflt = doc.get("default")
    dflt = str(dflt).lower() if dflt else None
    gpu = None
    g = doc.get("gpu")
    if isinstance(g, dict):
        sel = g.get("nodeSelector") or {}
        tol = g.get("tolerations") or []
        if not isinstance(sel, dict) or not isinstance(tol, list):
            raise AllowlistError("allowlist.gpu has the wrong shape")
        gpu = GpuConfig(
            node_selector={str(k): str(v) for k, v in sel.items()},
            tolerations=tuple(dict(t) for t in tol if isinstance(t, dict)),
            resource=str(g.get("resource") or "nvidia.com/gpu"),
        )
    return Allowlist(
        courses=courses,
        default=dflt,
        on_unknown=on_unknown,
        gpu=gpu,
        hub=str(doc.get("hub") or ""),
        limits=parse_limits(doc.get("limits")),
    )


def _limit(raw: Mapping, key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AllowlistError(f"limits.{key} must be a whole number >= 0 or null, got {value!r}")
    return value


def parse_limits(raw: Any) -> Limits:
    """The ``limits`` section; absent means no limits (an allowlist from an older operator)."""
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        raise AllowlistError("allowlist.limits must be an object")
    return Limits(
        active_servers=_limit(raw, "activeServers"),
        servers_per_identity=_limit(raw, "serversPerIdentity"),
        gpu_servers_per_identity=_limit(raw, "gpuServersPerIdentity"),
        gateway_identity=raw.get("identity") == "gateway",
    )


# ------------------------------------------------------------------ request options


def _first_scalar(value: Any) -> str | None:
    """One string from a query value (list of str), a form value or a JSON value."""
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        return None
    if len(value) > MAX_RAW_VALUE_LEN:
        return None
    return value


def normalize_options(raw: Any) -> dict:
    """Reduce query arguments / form data / REST ``user_options`` to the launch keys.

    Returns a dict with at most ``course`` (str), ``notebook`` (str) and ``gpu``
    (bool). Every other key is dropped here, so ``tag``, ``image``, ``profile`` and
    friends can never reach the spawner. Idempotent.
    """
    out: dict = {}
    if not isinstance(raw, Mapping):
        return out
    course = _first_scalar(raw.get("course"))
    if course is not None:
        course = course.strip()
        if course:
            out["course"] = course[: MAX_COURSE_LEN + 1]
    notebook = _first_scalar(raw.get("notebook"))
    if notebook is not None and notebook.strip():
        out["notebook"] = notebook
    for alias in GPU_ALIASES:
        if alias in raw:
            flag = _first_scalar(raw.get(alias))
            if flag is not None:
                out["gpu"] = flag.strip().lower() in TRUTHY
                break
    return out


def validate_notebook(value: Any) -> str | None:
    """The notebook path to open, or None when it is not a safe relative ``.ipynb`` path.

    The value is percent-decoded until stable (a link may be encoded twice, and a
    double-encoded ``..`` must not slip through), then must be a relative path of
    plain segments (no ``..``/``.``/empty segment, no backslash, no control
    characters, no ``~`` home reference) ending in ``.ipynb``, at most
    ``MAX_NOTEBOOK_LEN`` characters.
    """
    if not isinstance(value, str):
        return None
    path = value
    for _ in range(4):
        try:
            decoded = unquote(path, errors="strict") if "%" in path else path
        except UnicodeDecodeError:
            return None
        if decoded == path:
            break
        path = decoded
    else:
        return None  # still changing after several rounds: refuse rather than guess
    path = path.strip()
    if not path or len(path) > MAX_NOTEBOOK_LEN:
        return None
    if path.startswith(("/", "~")) or "\\" in path or "%" in path:
        return None
    if any(unicodedata.category(ch).startswith("C") for ch in path):
        return None
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return None
    if not path.endswith(".ipynb") or segments[-1] == ".ipynb":
        return None
    return path


def notebook_url(path: str) -> str:
    """JupyterLab URL (relative to the server) that opens ``path``."""
    return "/lab/tree/" + quote(path, safe="/")


# ---------------------------------------------------------------------- the decision


@dataclass(frozen=True)
class LaunchPlan:
    """What a spawn request resolves to. ``None`` fields keep the hub's default."""

    course: Course
    image: str
    default_url: str | None = None
    gpu: bool = False
    mem_limit: int | None = None
    mem_guarantee: int | None = None
    cpu_limit: float | None = None
    cpu_guarantee: float | None = None
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple = ()
    gpu_resource: str | None = None
    notes: tuple = ()  # log lines (ignored notebook, defaulted course, ...)


def _printable(s: str, limit: int = 80) -> str:
    """A requested value made safe to echo in a message or log line."""
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("C"))
    return s if len(s) <= limit else s[:limit] + "..."


def resolve_course(allowlist: Allowlist, requested: str | None) -> tuple:
    """(Course, note) for a requested slug, applying the hub's onUnknown policy."""
    if not allowlist.published:
        raise CourseRefused(503, "No courses are published on this hub yet.", "unavailable")
    default = allowlist.courses.get(allowlist.default) if allowlist.default else None
    if requested:
        found = allowlist.courses.get(requested.strip().lower())
        if found is not None:
            return found, None
        shown = _printable(requested)
        if allowlist.on_unknown == "default" and default is not None:
            return default, f"course {shown!r} is not offered; using default course {allowlist.default!r}"
        raise CourseRefused(400, f"The course '{shown}' is not offered on this hub.", "not_offered")
    if default is not None:
        return default, "no course requested; using the default course"
    raise CourseRefused(400, "No course was requested. Use a course launch link.", "no_course")


def plan_launch(allowlist: Allowlist, options: Any) -> LaunchPlan:
    """Pure: allowlist + raw request options -> LaunchPlan, or CourseRefused.

    The image always comes from ``allowlist.courses[...]``; no option is consulted for it.
    """
    opts = normalize_options(options)
    course, note = resolve_course(allowlist, opts.get("course"))
    notes = [note] if note else []

    default_url = None
    if "notebook" in opts:
        nb = validate_notebook(opts["notebook"])
        if nb is None:
            notes.append(f"ignoring invalid notebook {_printable(opts['notebook'])!r}")
        else:
            default_url = notebook_url(nb)
    if default_url is None and course.default_notebook:
        nb = validate_notebook(course.default_notebook)
        if nb is not None:
            default_url = notebook_url(nb)
        else:
            notes.append(f"ignoring invalid defaultNotebook of course {course.key!r}")

    wants_gpu = course.gpu == "required" or (course.gpu == "optional" and opts.get("gpu") is True)
    if course.gpu == "none" and opts.get("gpu") is True:
        notes.append(f"course {course.key!r} has no GPU; ignoring gpu request")
    gpu_kw: dict = {}
    if wants_gpu:
        if allowlist.gpu is None:
            raise CourseRefused(
                503,
                f"The course '{course.course}' needs a GPU, and this hub has no GPU nodes.",
                "no_gpu_nodes",
            )
        gpu_kw = dict(
            gpu_node_selector=dict(allowlist.gpu.node_selector),
            gpu_tolerations=tuple(allowlist.gpu.tolerations),
            gpu_resource=allowlist.gpu.resource,
        )
    return LaunchPlan(
        course=course,
        image=course.image,
        default_url=default_url,
        gpu=wants_gpu,
        mem_limit=course.mem_limit,
        mem_guarantee=course.mem_guarantee,
        cpu_limit=course.cpu_limit,
        cpu_guarantee=course.cpu_guarantee,
        notes=tuple(notes),
        **gpu_kw,
    )


# Spawner traits a plan may change; snapshotted so a reused spawner starts clean.
PLANNED_TRAITS = (
    "image",
    "default_url",
    "mem_limit",
    "mem_guarantee",
    "cpu_limit",
    "cpu_guarantee",
    "node_affinity_required",
    "tolerations",
    "extra_resource_limits",
    "extra_resource_guarantees",
)


def merge_traits(baseline: Mapping[str, Any], plan: LaunchPlan) -> dict:
    """Pure: hub defaults (``baseline``) + plan -> new values for ``PLANNED_TRAITS``."""
    new: dict[str, Any] = {k: baseline.get(k) for k in PLANNED_TRAITS}
    new["image"] = plan.image
    if plan.default_url is not None:
        new["default_url"] = plan.default_url
    for name in ("mem_limit", "mem_guarantee", "cpu_limit", "cpu_guarantee"):
        value = getattr(plan, name)
        if value is not None:
            new[name] = value
    new["node_affinity_required"] = [dict(t) for t in (baseline.get("node_affinity_required") or [])]
    new["tolerations"] = [dict(t) for t in (baseline.get("tolerations") or [])]
    new["extra_resource_limits"] = dict(baseline.get("extra_resource_limits") or {})
    new["extra_resource_guarantees"] = dict(baseline.get("extra_resource_guarantees") or {})
    if plan.gpu:
        exprs = [
            {"key": k, "operator": "In", "values": [v]} for k, v in sorted(plan.gpu_node_selector.items())
        ]
        terms = new["node_affinity_required"]
        if exprs:
            if terms:
                # Required terms are ORed by Kubernetes: add the GPU expressions to
                # every term (AND), or a hub term would let the pod land elsewhere.
                for t in terms:
                    t["matchExpressions"] = list(t.get("matchExpressions") or []) + exprs
            else:
                terms.append({"matchExpressions": exprs})
        for tol in plan.gpu_tolerations:
            if tol not in new["tolerations"]:
                new["tolerations"].append(dict(tol))
        new["extra_resource_limits"][plan.gpu_resource] = "1"
        new["extra_resource_guarantees"][plan.gpu_resource] = "1"
    return new


# ------------------------------------------------------------------ one identity, bounded

# oauth2-proxy's user headers, most specific first. Only the gateway sets them: with a
# gateway, proxy-public takes traffic from the gateway's pods alone, and oauth2-proxy
# replaces whatever a client sent under these names.
IDENTITY_HEADERS = ("X-Forwarded-Email", "X-Forwarded-Preferred-Username", "X-Forwarded-User")
MAX_IDENTITY_LEN = 320  # the longest valid e-mail address


def gateway_identity(headers: Mapping) -> str | None:
    """The SSO identity the gateway passed (case-folded), or None when there is none
    or it is not a plausible one (too long, control characters)."""
    for name in IDENTITY_HEADERS:
        value = headers.get(name)
        if not isinstance(value, str):
            continue
        value = value.strip()
        if not value or len(value) > MAX_IDENTITY_LEN:
            continue
        if any(unicodedata.category(ch).startswith("C") for ch in value):
            continue
        return value.casefold()
    return None


# Who may pass identity headers: the proxy (configurable-http-proxy), the gateway's only
# way in. The hub port also admits learner pods (z2jh's hub NetworkPolicy: they need the
# hub API), and they can send any X-Forwarded-Email. So the headers count only when the
# TCP peer is a proxy pod; anyone else has no identity (403 on /hub/tmplogin).
PROXY_POD_SELECTOR = "component=proxy"  # z2jh's label on the proxy pod
# A peer that is not a known proxy triggers a re-read of the proxy pods (a restarted proxy
# has a new IP) at most this often, so a learner's probes cannot flood the API server.
PROXY_REREAD_SECONDS = 1.0


def normalize_ip(value: Any) -> str | None:
    """``value`` as a canonical IP string (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(str(value).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def socket_peer(request: Any) -> str | None:
    """The IP of the TCP peer of a tornado request, as the socket saw it.

    Not ``request.remote_ip``: JupyterHub serves with ``xheaders=True``, so that is
    whatever ``X-Real-Ip``/``X-Forwarded-For`` the client sent.
    """
    context = getattr(getattr(request, "connection", None), "context", None)
    address = getattr(context, "address", None)
    if not isinstance(address, tuple) or not address:
        return None
    return normalize_ip(address[0])


def proxy_pod_ips(pods: Any) -> frozenset:
    """Pure: the IPs of the pods in a pod list (raw API JSON) that have not terminated."""
    ips = set()
    for pod in pods or ():
        status = pod.get("status") or {}
        if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") in (
            "Succeeded",
            "Failed",
        ):
            continue
        for entry in [*(status.get("podIPs") or ()), {"ip": status.get("podIP")}]:
            ip = normalize_ip(entry.get("ip")) if entry.get("ip") else None
            if ip:
                ips.add(ip)
    return frozenset(ips)


def trusted_identity(headers: Mapping, peer: str | None, proxy_ips: frozenset) -> str | None:
    """Pure: the gateway's identity from ``headers``, only when the TCP peer is the proxy."""
    if peer is None or peer not in proxy_ips:
        return None
    return gateway_identity(headers)


class ProxyPeers:
    """The proxy pods' IPs, read through the API on demand.

    ``fetch`` returns the proxy pods (raw JSON items). A peer not in the set causes a
    re-read, at most once per ``reread_seconds``; concurrent misses share one read. An
    API error keeps the last set (fail closed for peers it does not hold).
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list]],
        reread_seconds: float = PROXY_REREAD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fetch = fetch
        self.reread_seconds = reread_seconds
        self.clock = clock
        self.ips: frozenset = frozenset()
        self.reads = 0
        self._read_at: float | None = None
        self._inflight: asyncio.Future | None = None

    async def is_proxy(self, peer: str | None) -> bool:
        if peer is None:
            return False
        if peer in self.ips:
            return True
        if self._inflight is None:
            if self._read_at is not None and self.clock() - self._read_at < self.reread_seconds:
                return False
            self._inflight = asyncio.ensure_future(self._read())
        inflight = self._inflight
        await asyncio.shield(inflight)
        return peer in self.ips

    async def _read(self) -> None:
        try:
            self.reads += 1
            self.ips = proxy_pod_ips(await self.fetch())
        except Exception as e:
            log.warning(
                "coursehub: cannot read the proxy pods (%s); keeping %d known",
                type(e).__name__,
                len(self.ips),
            )
        finally:
            self._read_at = self.clock()
            self._inflight = None


@dataclass(frozen=True)
class Slot:
    """A server that counts against the limits: started, starting, or admitted to start."""

    identity: str | None
    gpu: bool
    user: str = ""
    course: str = ""


@dataclass(frozen=True)
class LimitRefusal:
    """Why a launch may not start: ``kind`` is ``hub``, ``identity`` or ``gpu``;
    ``running`` are the identity's servers that fill its limit."""

    kind: str
    message: str
    running: tuple = ()


def check_limits(limits: Limits, others: Any, *, identity: str | None, gpu: bool) -> LimitRefusal | None:
    """Pure: may one more server (of ``identity``, GPU or not) start next to ``others``?

    ``others`` are the Slots of every other server that is active or admitted. Per-
    identity limits apply only when the hub trusts the gateway's identity headers.
    """
    others = list(others)
    if limits.active_servers is not None and len(others) >= limits.active_servers:
        return LimitRefusal(
            "hub",
            f"This hub is at its limit of {limits.active_servers} running servers. "
            "Try again in a few minutes.",
        )
    if not (limits.gateway_identity and identity):
        return None
    mine = [s for s in others if s.identity == identity]
    if gpu and limits.gpu_servers_per_identity is not None:
        mine_gpu = [s for s in mine if s.gpu]
        if len(mine_gpu) >= limits.gpu_servers_per_identity:
            return LimitRefusal(
                "gpu",
                f"You already have {len(mine_gpu)} GPU server(s) running, the most one person may have "
                "on this hub. Use it, or stop it before starting another.",
                tuple(mine_gpu),
            )
    if limits.servers_per_identity is not None and len(mine) >= limits.servers_per_identity:
        return LimitRefusal(
            "identity",
            f"You already have {len(mine)} server(s) running, the most one person may have on this hub. "
            "Use it, or stop it before starting another.",
            tuple(mine),
        )
    return None


def limit_page_html(refusal: LimitRefusal, resume_url: Callable[[Slot], str]) -> str:
    """The refusal as HTML: the message and a link to each running server."""
    items = "".join(
        f'<li><a href="{html.escape(resume_url(s))}">{html.escape(s.course or s.user)}</a></li>'
        for s in refusal.running
    )
    running = f"<p>Your running server(s):</p><ul>{items}</ul>" if items else ""
    return f"<p>{html.escape(refusal.message)}</p>{running}"


# --------------------------------------------------------------- live allowlist read


@dataclass
class _Entry:
    allowlist: Allowlist
    fetched_at: float
    version: str | None


class AllowlistCache:
    """The allowlist, read through the Kubernetes API at most once per ``ttl``.

    Concurrent lookups share one in-flight read, an unchanged resourceVersion skips
    re-parsing, and when the API fails the last good copy is served (a spawn should
    not fail because of an API blip). ``reads`` counts API reads for the benchmark.
    """

    def __init__(self, ttl: float = ALLOWLIST_TTL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self.reads = 0
        self.lookups = 0
        self._entries: dict = {}
        self._inflight: dict = {}

    async def get(self, key: Any, fetch: Callable[[], Awaitable[tuple]]) -> Allowlist:
        """``fetch()`` returns ``(text or None when the ConfigMap is absent, version)``."""
        self.lookups += 1
        entry = self._entries.get(key)
        if entry is not None and self.clock() - entry.fetched_at < self.ttl:
            return entry.allowlist
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._refresh(key, fetch, entry))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _refresh(self, key, fetch, entry: _Entry | None) -> Allowlist:
        self.reads += 1
        try:
            text, version = await fetch()
            now = self.clock()
            if entry is not None and version is not None and version == entry.version:
                entry.fetched_at = now
                return entry.allowlist
            allowlist = (
                Allowlist(published=False)
                if text is None
                else parse_allowlist(text, on_bad_course=lambda m: log.warning("coursehub: dropping %s", m))
            )
        except Exception as e:
            # An API blip or a broken edit: keep serving the last good copy, if any.
            what = "is invalid" if isinstance(e, AllowlistError) else "read failed"
            if entry is not None:
                log.warning("coursehub: allowlist %s (%s); serving the last good copy", what, e)
                return entry.allowlist
            raise CourseRefused(
                503, "The course list is unavailable right now; try again shortly.", "unavailable"
            ) from e
        self._entries[key] = _Entry(allowlist, now, version)
        return allowlist


ALLOWLIST_CACHE = AllowlistCache()


def hub_namespace(fallback: str | None = None) -> str:
    """The namespace of the allowlist: explicit env, the pod's own, else ``fallback``."""
    for env in ("COURSEHUB_ALLOWLIST_NAMESPACE", "POD_NAMESPACE"):
        if os.environ.get(env):
            return os.environ[env]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE_FILE) as f:
            ns = f.read().strip()
        if ns:
            return ns
    except OSError:
        pass
    return fallback or "default"


class AllowlistWatcher:
    """Keeps the allowlist current from a Kubernetes watch, so a spawn reads memory.

    List (one read, also tells "absent" apart), then watch from that resourceVersion
    until the server ends the watch after ``resync_seconds``, then list again. While
    the watch is down, ``live`` is False and lookups fall back to the TTL read. A 403
    (RBAC without list/watch) turns the watcher off for good.
    """

    def __init__(self, source: "AllowlistSource", resync_seconds: int = 240):
        self.source = source
        self.resync_seconds = resync_seconds
        self.allowlist: Allowlist | None = None
        self.version: str | None = None
        self.live = False
        self.disabled = False
        self.task: asyncio.Future | None = None

    def ensure_started(self) -> None:
        if self.task is None and not self.disabled:
            self.task = asyncio.ensure_future(self._run())

    def _apply(self, obj: Mapping | None) -> None:
        if obj is None:
            self.allowlist, self.version = Allowlist(published=False), None
            return
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version is not None and version == self.version and self.allowlist is not None:
            return
        text = (obj.get("data") or {}).get(ALLOWLIST_KEY)
        if text is None:
            self.allowlist, self.version = Allowlist(published=False), version
            return
        try:
            self.allowlist = parse_allowlist(
                text, on_bad_course=lambda m: log.warning("coursehub: dropping %s", m)
            )
            self.version = version
        except AllowlistError as e:
            # keep serving the previous list; a broken edit must not stop every spawn
            log.error("coursehub: invalid allowlist (%s); keeping the previous one", e)

    async def _apply_expanded(self, obj: Mapping | None) -> None:
        """`_apply` with a sharded allowlist's shards read in (docs/CONTRACTS.md)."""
        try:
            obj = await self.source.expanded(obj)
        except AllowlistError as e:
            # keep serving the previous list; the next change or resync tries again
            log.error("coursehub: %s; keeping the previous allowlist", e)
            return
        self._apply(obj)

    async def _run(self) -> None:
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.rest import ApiException

        backoff = 1.0
        selector = f"metadata.name={self.source.configmap}"
        while True:
            try:
                api = self.source._core_api()
                self.source.cache.reads += 1
                resp = await api.list_namespaced_config_map(
                    self.source.namespace,
                    field_selector=selector,
                    _preload_content=False,
                    _request_timeout=10,
                )
                body = json.loads(await resp.read())
                items = body.get("items") or []
                await self._apply_expanded(items[0] if items else None)
                self.live, backoff = True, 1.0
                w = watch.Watch()
                async for event in w.stream(
                    api.list_namespaced_config_map,
                    self.source.namespace,
                    field_selector=selector,
                    resource_version=body["metadata"]["resourceVersion"],
                    timeout_seconds=self.resync_seconds,
                    _request_timeout=self.resync_seconds + 30,
                ):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        await self._apply_expanded(event["raw_object"])
                    elif event["type"] == "DELETED":
                        self._apply(None)
            except asyncio.CancelledError:
                self.live = False
                raise
            except ApiException as e:
                self.live = False
                if e.status == 403:
                    log.warning(
                        "coursehub: may not list/watch the allowlist (%s); reading it on demand", e.reason
                    )
                    self.disabled = True
                    return
                if e.status != 410:  # 410: our resourceVersion expired, list again now
                    log.warning("coursehub: allowlist watch failed (%s); retrying", e)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
            except Exception as e:
                self.live = False
                log.warning("coursehub: allowlist watch failed (%s); retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


class AllowlistSource:
    """Where the hub reads the allowlist: ConfigMap name + namespace + an API client."""

    def __init__(
        self,
        configmap: str = ALLOWLIST_CONFIGMAP,
        namespace: str | None = None,
        cache: AllowlistCache = ALLOWLIST_CACHE,
    ):
        self.configmap = configmap
        self.namespace = namespace
        self.cache = cache
        self.api = None  # a kubernetes_asyncio CoreV1Api; set by the first spawner
        # watch by default; COURSEHUB_ALLOWLIST_WATCH=0 keeps to TTL reads only
        self.watch = os.environ.get("COURSEHUB_ALLOWLIST_WATCH", "1") != "0"
        self.watcher = AllowlistWatcher(self)
        self._shards: dict[str, str] = {}  # shard name -> text (content-addressed: never stale)
        self._expanded: tuple = (None, None)  # (index resourceVersion, expanded text)

    async def _read_shard(self, name: str) -> str:
        try:
            resp = await self._core_api().read_namespaced_config_map(
                name, self.namespace, _preload_content=False, _request_timeout=5
            )
            body = json.loads(await resp.read())
        except Exception as e:
            raise AllowlistError(f"allowlist shard {name} is unreadable ({type(e).__name__})") from None
        text = (body.get("data") or {}).get(ALLOWLIST_SHARD_KEY)
        if not isinstance(text, str):
            raise AllowlistError(f"allowlist shard {name} has no {ALLOWLIST_SHARD_KEY}")
        return text

    async def _expanded_text(self, text: str | None, version: str | None) -> str | None:
        """The allowlist text with its shards' courses in it; an inline allowlist as it is."""
        names = shard_names(text)
        if not names:
            return text
        if version is not None and self._expanded[0] == version:
            return self._expanded[1]
        for name in names:
            if name not in self._shards:
                self._shards[name] = await self._read_shard(name)
        self._shards = {n: self._shards[n] for n in names}  # forget shards no longer listed
        full = expand_sharded(text or "", self._shards)
        self._expanded = (version, full)
        return full

    async def expanded(self, obj: Mapping | None) -> Mapping | None:
        """The allowlist ConfigMap `obj` with a sharded list's courses read in (AllowlistError if not)."""
        if obj is None:
            return None
        data = obj.get("data") or {}
        text = data.get(ALLOWLIST_KEY)
        full = await self._expanded_text(text, (obj.get("metadata") or {}).get("resourceVersion"))
        return obj if full is text else {**obj, "data": {**data, ALLOWLIST_KEY: full}}

    def _core_api(self):
        if self.api is None:
            # Before any spawner exists (the login handler runs first), build the
            # same shared client KubeSpawner would.
            from kubespawner.clients import load_config, shared_client

            load_config()
            self.api = shared_client("CoreV1Api")
        return self.api

    async def _fetch(self) -> tuple:
        from kubernetes_asyncio.client.rest import ApiException

        api = self._core_api()
        try:
            # Raw JSON instead of a V1ConfigMap model: the model build costs more than
            # the read itself for a 1,000-course list.
            resp = await api.read_namespaced_config_map(
                self.configmap, self.namespace, _preload_content=False, _request_timeout=5
            )
            body = json.loads(await resp.read())
        except ApiException as e:
            if e.status == 404:
                return None, None
            raise
        data = body.get("data") or {}
        version = (body.get("metadata") or {}).get("resourceVersion")
        return await self._expanded_text(data.get(ALLOWLIST_KEY), version), version

    async def current(self) -> Allowlist:
        if not self.namespace:
            self.namespace = hub_namespace()
        if self.watch:
            self.watcher.ensure_started()
            if self.watcher.live and self.watcher.allowlist is not None:
                self.cache.lookups += 1
                return self.watcher.allowlist
        return await self.cache.get((self.namespace, self.configmap), self._fetch)


SOURCE = AllowlistSource()


async def _read_proxy_pods() -> list:
    """The hub namespace's proxy pods (z2jh's hub Role may list pods there)."""
    if not SOURCE.namespace:
        SOURCE.namespace = hub_namespace()
    resp = await SOURCE._core_api().list_namespaced_pod(
        SOURCE.namespace,
        label_selector=os.environ.get("COURSEHUB_PROXY_POD_SELECTOR") or PROXY_POD_SELECTOR,
        _preload_content=False,
        _request_timeout=5,
    )
    return json.loads(await resp.read()).get("items") or []


PROXY_PEERS = ProxyPeers(_read_proxy_pods)


async def request_identity(request: Any, limits: Limits) -> str | None:
    """The SSO identity of a request behind the gateway: its identity headers, if the
    TCP peer is the proxy; otherwise none (the headers were not set by the gateway)."""
    if request is None or not limits.gateway_identity:
        return None
    peer = socket_peer(request)
    await PROXY_PEERS.is_proxy(peer)
    identity = trusted_identity(request.headers, peer, PROXY_PEERS.ips)
    if identity is None and gateway_identity(request.headers) is not None:
        log.warning("coursehub: ignoring identity headers from %s: not the proxy", peer)
    return identity


# --------------------------------------------------------------------- hub classes

# Every CourseSpawner in this hub process, to count servers against the limits. JupyterHub
# builds a spawner for every running server at startup (state loaded from its database),
# so after a restart the running servers count again. Weak: deleted users drop out.
LIVE_SPAWNERS: "weakref.WeakSet[CourseSpawner]" = weakref.WeakSet()
STATE_KEY = "coursehub"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Signed cookie naming the tmp users this browser launched: a resume link works only in
# the browser that started the server. The identity headers alone would not do: a
# learner's own pod can reach the hub directly and send any X-Forwarded-Email.
LAUNCHES_COOKIE = "coursehub-launches"
MAX_REMEMBERED_LAUNCHES = 10


class CourseSpawner(KubeSpawner):
    """KubeSpawner whose image, default URL, resources and GPU scheduling come only
    from the course allowlist.

    Why ``load_user_options`` (and not the JupyterHub 5.3 ``apply_user_options`` hook
    or ``start``): KubeSpawner calls ``load_user_options`` at the top of ``_start``,
    after every configurable hook (``apply_user_options``, ``pre_spawn_hook``, group
    overrides) has run and just before the pod manifest is built, so nothing later
    can replace the image we set. It is KubeSpawner's documented extension point for
    subclasses, it is a method (a config value cannot swap it out, whereas
    ``apply_user_options`` is a configurable trait), and by not calling
    ``super()`` the ``profile`` option is never applied, so no profile_list entry can
    override the image either. ``apply_user_options`` defaults to a no-op here only
    so that JupyterHub does not warn about "unhandled" options.

    The spawner also carries the learner's SSO identity (``coursehub_identity``, kept in
    the spawner state in the hub database) and what its server counts as (GPU or not).
    """

    _coursehub_baseline = None
    coursehub_identity: str | None = None
    _coursehub_gpu = False
    _coursehub_course = ""
    # Admitted, and JupyterHub has not marked the spawn pending yet.
    _coursehub_reserved = False
    # Admitted by coursehub's handlers; load_user_options need not decide again.
    _coursehub_admitted = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if SOURCE.api is None and getattr(self, "api", None) is not None:
            SOURCE.api = self.api
        if not SOURCE.namespace:
            SOURCE.namespace = hub_namespace(self.namespace)
        LIVE_SPAWNERS.add(self)

    @default("apply_user_options")
    def _coursehub_apply_user_options_default(self):
        return _accept_user_options

    @default("options_from_form")
    def _coursehub_options_from_form_default(self):
        # The GPU confirmation form posts the launch keys; nothing else is kept.
        return normalize_options

    def options_from_query(self, query_data):
        # Store only the launch keys in the hub database, never the rest of the query.
        return normalize_options(query_data)

    # The identity outlives a stopped server (it is the user's), so clear_state keeps it.
    def get_state(self):
        state = super().get_state()
        state[STATE_KEY] = {
            "identity": self.coursehub_identity,
            "gpu": self._coursehub_gpu,
            "course": self._coursehub_course,
        }
        return state

    def load_state(self, state):
        super().load_state(state)
        mine = state.get(STATE_KEY) if isinstance(state, dict) else None
        if isinstance(mine, dict):
            identity = mine.get("identity")
            self.coursehub_identity = identity if isinstance(identity, str) and identity else None
            self._coursehub_gpu = mine.get("gpu") is True
            self._coursehub_course = str(mine.get("course") or "")

    def coursehub_slot(self) -> Slot | None:
        """What this server counts as, or None when it does not count (stopped)."""
        if not (self.active or self._coursehub_reserved):
            return None
        return Slot(self.coursehub_identity, self._coursehub_gpu, self.user.name, self._coursehub_course)

    def admit(self, limits: Limits, plan: LaunchPlan, identity: str | None) -> LimitRefusal | None:
        """Count and reserve in one step: no ``await`` inside, and the hub runs on one
        event loop, so concurrent launches of one identity cannot all pass the count.
        ``identity``: the request's, from ``request_identity`` (checked peer)."""
        if self.coursehub_identity is None and limits.gateway_identity:
            self.coursehub_identity = identity
        refusal = check_limits(
            limits, other_slots(exclude=self), identity=self.coursehub_identity, gpu=plan.gpu
        )
        if refusal is None:
            self._coursehub_reserved = True
            self._coursehub_gpu = plan.gpu
            self._coursehub_course = plan.course.display_name or plan.course.course
        return refusal

    async def load_user_options(self):
        allowlist = await SOURCE.current()
        try:
            plan = plan_launch(allowlist, self.user_options or {})
        except CourseRefused as e:
            self.log.warning("coursehub: refusing spawn for %s: %s", self._log_name, e.message)
            raise refusal_error(e) from None
        # A second line of defence for spawns that did not come through coursehub's
        # handlers (another authenticator): the same rules, decided here.
        request = getattr(self.handler, "request", None)
        if plan.gpu and request is not None and request.method in SAFE_METHODS:
            raise gpu_needs_post_error(plan, "")
        if self._coursehub_admitted:
            self._coursehub_admitted = False
        else:
            identity = await request_identity(request, allowlist.limits)
            refusal = self.admit(allowlist.limits, plan, identity)
            # pending already: from here `active` counts this server
            self._coursehub_reserved = False
            if refusal is not None:
                self.log.warning("coursehub: refusing spawn for %s: %s", self._log_name, refusal.message)
                raise limit_error(refusal, lambda s: "")
        for note in plan.notes:
            self.log.info("coursehub: %s: %s", self._log_name, note)
        if self._coursehub_baseline is None:
            self._coursehub_baseline = {k: _copy(getattr(self, k)) for k in PLANNED_TRAITS}
        for name, value in merge_traits(self._coursehub_baseline, plan).items():
            setattr(self, name, value)
        self.log.info(
            "coursehub: %s -> course %r image %s gpu=%s default_url=%s",
            self._log_name,
            plan.course.key,
            plan.image,
            plan.gpu,
            self.default_url,
        )


def other_slots(exclude: Any = None) -> list:
    """The Slots of every counted server of this hub except ``exclude``'s."""
    slots = []
    for spawner in list(LIVE_SPAWNERS):
        if spawner is not exclude:
            slot = spawner.coursehub_slot()
            if slot is not None:
                slots.append(slot)
    return slots


def _http_error(status: int, message: str, html_message: str = "") -> web.HTTPError:
    # "%s" + args: a '%' in an echoed value must not break tornado's formatting
    err = web.HTTPError(status, "%s", message)
    err.jupyterhub_message = message  # type: ignore[attr-defined]  # what JupyterHub's error page shows
    if html_message:
        err.jupyterhub_html_message = html_message  # type: ignore[attr-defined]
    return err


def refusal_error(refusal: CourseRefused) -> web.HTTPError:
    """The HTTP error JupyterHub shows for a refusal, message on the error page."""
    return _http_error(refusal.status, refusal.message)


def limit_error(refusal: LimitRefusal, resume_url: Callable[[Slot], str]) -> web.HTTPError:
    """429 with the running servers linked (when ``resume_url`` gives links)."""
    running = tuple(s for s in refusal.running if resume_url(s))
    html_message = limit_page_html(LimitRefusal(refusal.kind, refusal.message, running), resume_url)
    return _http_error(429, refusal.message, html_message)


def gpu_needs_post_error(plan: LaunchPlan, confirm_url: str) -> web.HTTPError:
    """A GET may not start a GPU server (a link or an image tag on any site could)."""
    message = (
        f"The course '{plan.course.course}' runs on a GPU; confirm on the course's start page to start it."
    )
    link = f' <a href="{html.escape(confirm_url)}">Go to the start page.</a>' if confirm_url else ""
    return _http_error(403, message, html.escape(message) + link)


def _accept_user_options(spawner, user_options):
    """Options are applied in ``CourseSpawner.load_user_options``; nothing to do here."""


def _copy(value):
    if isinstance(value, list):
        return [dict(v) if isinstance(v, dict) else v for v in value]
    if isinstance(value, dict):
        return dict(value)
    return value


def launch_query(arguments: Mapping) -> dict:
    """Launch keys from a request's query or form (``{key: [bytes]}``) as strings."""
    opts = normalize_options(arguments)
    q = {}
    if "course" in opts:
        q["course"] = opts["course"]
    if "notebook" in opts:
        q["notebook"] = opts["notebook"]
    if opts.get("gpu"):
        q["gpu"] = "true"
    return q


CONFIRM_TEMPLATE = """{% extends "page.html" %}
{% block main %}
<div class="container" id="coursehub-gpu-confirm">
  <h1>Start {{ course }} on a GPU?</h1>
  <p>This course runs on a GPU server. GPUs are shared and scarce: start one when you are
  ready to use it, and stop it when you are done.</p>
  <form method="post" action="{{ action }}">
    <input type="hidden" name="_xsrf" value="{{ xsrf_token }}">
    {% for name, value in fields %}<input type="hidden" name="{{ name }}" value="{{ value }}">
    {% endfor %}<button type="submit" class="btn btn-jupyter btn-lg">Start the GPU server</button>
  </form>
</div>
{% endblock %}
"""


class _CourseHandlerMixin(BaseHandler):
    """Shared by coursehub's hub handlers: launch admission and the GPU confirmation page."""

    def resume_url(self, slot: Slot) -> str:
        return self.hub.base_url + "tmplogin?" + urlencode({"resume": slot.user})

    def render_gpu_confirmation(self, plan: LaunchPlan, query: Mapping, action: str) -> None:
        """A page whose form POSTs the launch keys with JupyterHub's XSRF token."""
        ns = dict(
            self.template_namespace,
            xsrf_token=self.xsrf_token.decode("ascii"),
            course=plan.course.display_name or plan.course.course,
            action=action,
            fields=sorted(query.items()),
        )
        self.finish(self.settings["jinja2_env_sync"].from_string(CONFIRM_TEMPLATE).render(**ns))

    async def spawn_single_user(self, user, server_name="", options=None):
        """Decide the GPU rule and the limits *before* JupyterHub starts the spawn.

        A refusal here is an HTTP answer. A refusal inside ``Spawner.start`` would be a
        failed spawn, and z2jh's ``consecutiveFailureLimit`` (5) stops the hub after that
        many in a row: five launches over the limit would take the hub down.
        """
        spawner = user.spawners[server_name]
        if not isinstance(spawner, CourseSpawner) or spawner.active:
            return await super().spawn_single_user(user, server_name, options=options)
        try:
            allowlist = await SOURCE.current()
            plan = plan_launch(
                allowlist, options if options is not None else (spawner.orm_spawner.user_options or {})
            )
        except CourseRefused as e:
            raise refusal_error(e) from None
        if plan.gpu and self.request.method in SAFE_METHODS:
            confirm = self.hub.base_url + "spawn?" + urlencode(launch_query(options or {}))
            raise gpu_needs_post_error(plan, confirm)
        identity = await request_identity(self.request, allowlist.limits)
        # From here to the reservation nothing awaits (see CourseSpawner.admit).
        refusal = spawner.admit(allowlist.limits, plan, identity)
        if refusal is not None:
            self.log.warning("coursehub: refusing spawn for %s: %s", spawner._log_name, refusal.message)
            raise limit_error(refusal, self.resume_url)
        spawner._coursehub_admitted = True
        try:
            return await super().spawn_single_user(user, server_name, options=options)
        except BaseException:
            spawner._coursehub_admitted = False  # refused before the spawn began
            raise
        finally:
            # by now JupyterHub marks the spawn pending (or it is over): `active` counts it
            spawner._coursehub_reserved = False


class CourseSpawnHandler(_CourseHandlerMixin, SpawnHandler):
    """``/hub/spawn``: a GPU course from a link gets the confirmation page, not a server."""

    @web.authenticated
    async def get(self, user_name=None, server_name=None):
        query = launch_query(self.request.query_arguments)
        user = self.current_user
        if query and user_name in (None, user.name) and not user.spawners[server_name or ""].active:
            try:
                plan = plan_launch(await SOURCE.current(), query)
            except CourseRefused:
                plan = None  # JupyterHub's own path reports it
            if plan is not None and plan.gpu:
                return self.render_gpu_confirmation(plan, query, self.request.path)
        return await super().get(user_name, server_name)


class CourseServerAPIHandler(_CourseHandlerMixin, UserServerAPIHandler):
    """``/hub/api/users/<name>/server``: the same limits for spawns through the REST API."""


class CourseTmpLoginHandler(_CourseHandlerMixin, TmpAuthenticateHandler):
    """``/hub/tmplogin``: a launch link becomes a fresh temporary user and a server.

    GET with ``course``/``notebook``/``gpu``: refuse an unoffered course or a launch over
    the limits before any user exists; a GPU course gets the confirmation page; any other
    course logs in a new user and goes on to ``/hub/spawn``. POST (the confirmation
    form, XSRF-checked by JupyterHub): a new user and its spawn. GET ``resume=<user>``:
    back to a running server of the same SSO identity that this browser started (the
    link on the limit page).
    """

    async def _checked(self, query: Mapping) -> tuple:
        """(allowlist or None, identity, plan or None), raising the refusals that come
        before a user exists. Anything else is decided again at spawn time."""
        try:
            allowlist = await SOURCE.current()
        except CourseRefused:
            return None, None, None
        identity = await request_identity(self.request, allowlist.limits)
        if allowlist.limits.gateway_identity and identity is None:
            # Behind the gateway every request comes from the proxy with the SSO
            # identity; one without it (or from elsewhere) did not come through the gateway.
            raise _http_error(403, "Sign in through this hub's sign-in page first.")
        plan = None
        if query:
            try:
                plan = plan_launch(allowlist, query)
            except CourseRefused as e:
                if e.kind == "not_offered":
                    self.log.warning("coursehub: tmplogin refused: %s", e.message)
                    raise refusal_error(e) from None
            if plan is not None:
                refusal = check_limits(allowlist.limits, other_slots(), identity=identity, gpu=plan.gpu)
                if refusal is not None:
                    self.log.warning("coursehub: tmplogin refused: %s", refusal.message)
                    raise limit_error(refusal, self.resume_url)
        return allowlist, identity, plan

    async def _new_user(self, identity: str | None):
        # As TmpAuthenticateHandler.get: always a new user, cookie overwritten.
        user = await self.login_user(None)
        self.set_hub_cookie(user)
        if identity is not None:
            spawner = user.spawner
            spawner.coursehub_identity = identity
            # in the hub database now, so the identity survives a hub restart
            spawner.orm_spawner.state = spawner.get_state()
            self.db.commit()
            launched = [*self._launched_here(), user.name][-MAX_REMEMBERED_LAUNCHES:]
            self.set_secure_cookie(
                LAUNCHES_COOKIE,
                json.dumps(launched),
                expires_days=1,
                path=self.hub.base_url,
                httponly=True,
                secure=self.request.protocol == "https",
            )
        return user

    def _launched_here(self) -> list:
        """The tmp users this browser launched (the signed cookie), newest last."""
        raw = self.get_secure_cookie(LAUNCHES_COOKIE, max_age_days=1)
        try:
            names = json.loads(raw) if raw else []
        except ValueError:
            return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    async def get(self):
        if "resume" in self.request.query_arguments:
            return await self._resume(self.get_argument("resume"))
        query = launch_query(self.request.query_arguments)
        _, identity, plan = await self._checked(query)
        if plan is not None and plan.gpu:
            return self.render_gpu_confirmation(plan, query, self.hub.base_url + "tmplogin")
        user = await self._new_user(identity)
        self.redirect(self.get_next_url(user))

    async def post(self):
        query = launch_query(self.request.body_arguments)
        _, identity, _ = await self._checked(query)
        user = await self._new_user(identity)
        # As JupyterHub's SpawnHandler: report a refusal at once, else the pending page.
        spawn = asyncio.ensure_future(self.spawn_single_user(user, "", options=normalize_options(query)))
        await asyncio.wait([spawn], timeout=1)
        if spawn.done() and spawn.exception() is not None:
            raise spawn.exception()
        self.redirect(self.hub.base_url + "spawn-pending/" + quote(user.name, safe=""))

    async def _resume(self, name: str):
        allowlist = await SOURCE.current()
        identity = await request_identity(self.request, allowlist.limits)
        user = self.find_user(name) if identity and name in self._launched_here() else None
        if user is None or getattr(user.spawners[""], "coursehub_identity", None) != identity:
            raise _http_error(
                404, "No such server of yours on this hub; open it from the browser you started it in."
            )
        self.set_login_cookie(user)
        self.redirect(user.url)

    def get_next_url(self, user=None, default=None):
        query = launch_query(self.request.query_arguments)
        if query:
            return self.hub.base_url + "spawn?" + urlencode(query)
        return super().get_next_url(user, default)


class CourseLogoutHandler(LogoutHandler):
    """JupyterHub's logout (cookie cleared as usual), then on to the authenticator's
    ``logout_redirect_url`` when one is set: behind the SSO gate that is the gate's sign-out,
    which ends the Keycloak session too, so "Log out" does not sign the browser straight back in."""

    async def render_logout_page(self):
        url = getattr(self.authenticator, "logout_redirect_url", "")
        if url:
            self.redirect(url, permanent=False)
        else:
            await super().render_logout_page()


class CourseTmpAuthenticator(TmpAuthenticator):
    """TmpAuthenticator whose login link keeps the course launch parameters.

    Its handlers come before JupyterHub's own routes, so coursehub's ``/spawn`` and
    server API handlers take those paths: every spawn passes the admission check.
    """

    # JupyterHub 5's base Authenticator has no such setting (oauthenticator's has): the operator
    # renders Authenticator.logout_redirect_url when a gateway is configured (desired/values.py).
    logout_redirect_url = Unicode(
        "", config=True, help="Where /hub/logout sends the browser after clearing the hub's cookie."
    )

    def get_handlers(self, app):
        return [
            ("/tmplogin", CourseTmpLoginHandler),
            ("/logout", CourseLogoutHandler),
            (r"/spawn", CourseSpawnHandler),
            (r"/spawn/([^/]+)", CourseSpawnHandler),
            (r"/spawn/([^/]+)/([^/]+)", CourseSpawnHandler),
            (r"/api/users/([^/]+)/server", CourseServerAPIHandler),
            (r"/api/users/([^/]+)/servers/([^/]*)", CourseServerAPIHandler),
        ]


# -------------------------------------------------------------------- the staff page

# Besides admins, members of this JupyterHub group see the staff page. A setting
# (COURSEHUB_SETTINGS["staff_group"], rendered by coursehub.hub.extra_config_snippets);
# the SSO gateway maps its identity provider's staff group onto it.
DEFAULT_STAFF_GROUP = "coursehub-staff"
STAFF_PAGE_PATH = "/courses"  # under the hub prefix: /hub/courses


@dataclass
class StaffSettings:
    group: str | None = DEFAULT_STAFF_GROUP


STAFF = StaffSettings()


def is_staff(admin: Any, groups: Iterable[str], staff_group: str | None) -> bool:
    """Pure: an admin, or a member of ``staff_group`` (None or empty: admins only)."""
    return admin is True or (bool(staff_group) and staff_group in set(groups))


@dataclass(frozen=True)
class CourseLink:
    """One row of the staff page: an offered course and its launch link."""

    course: str  # the ?course= value, as its CourseImage spells it
    title: str
    url: str
    gpu: str
    notebook: str | None
    default: bool


def course_links(allowlist: Allowlist, hub_url: str) -> list[CourseLink]:
    """Pure: a launch link per offered course, by title. ``hub_url`` ends in ``/hub/``.

    The link carries only ``course`` (as the CourseImage's ``status.launchURL`` does): the
    course's ``defaultNotebook`` applies at spawn, and a link stays valid when it changes.
    """
    links = []
    for key in allowlist.courses:
        c = allowlist.courses[key]
        links.append(
            CourseLink(
                course=c.course,
                title=c.display_name or c.course,
                url=hub_url + "tmplogin?" + urlencode({"course": c.course}),
                gpu=c.gpu,
                notebook=validate_notebook(c.default_notebook) if c.default_notebook else None,
                default=key == allowlist.default,
            )
        )
    return sorted(links, key=lambda link: (link.title.casefold(), link.course))


STAFF_TEMPLATE = """{% extends "page.html" %}
{% block main %}
<div class="container" id="coursehub-courses">
  <h1>Courses on this hub</h1>
  {% if links %}
  <p>{{ links|length }} course(s) offered. Each launch link gives a learner a new temporary
  server with the course's image. Opening one here signs this browser in as a new learner.</p>
  <table class="table table-striped">
    <thead><tr><th>Course</th><th>Launch link</th><th>GPU</th><th>Opens</th></tr></thead>
    <tbody>
    {% for link in links %}<tr class="coursehub-course" data-course="{{ link.course }}">
      <td>{{ link.title }}{% if link.default %}
        <span class="badge text-bg-secondary">default</span>{% endif %}</td>
      <td><a class="coursehub-launch" href="{{ link.url }}">{{ link.url }}</a></td>
      <td>{{ link.gpu }}</td>
      <td>{{ link.notebook or "" }}</td>
    </tr>
    {% endfor %}</tbody>
  </table>
  {% else %}
  <p id="coursehub-no-courses">No courses are published on this hub yet.</p>
  {% endif %}
</div>
{% endblock %}
"""


class StaffCoursesHandler(BaseHandler):
    """``/hub/courses``: the offered courses and their launch links, for course staff.

    Read from the live allowlist on every request (as a spawn reads it), so a newly
    published course is listed without a hub restart. Staff: admins and members of
    ``STAFF.group``; any other user gets 403 with a readable page. Without a login, other
    authenticators send the browser to their login page; the tmp authenticator would hand
    out a new learner, so there it is a 403 as well.
    """

    async def get(self):
        user = self.current_user
        if user is None:
            if isinstance(self.authenticator, TmpAuthenticator):
                raise _http_error(403, "This page is for course staff. Sign in to the hub as staff first.")
            return self.redirect(self.get_login_url())
        # a service's token is not a person: no staff page for it
        if getattr(user, "kind", None) != "user" or not is_staff(
            user.admin, [g.name for g in user.groups], STAFF.group
        ):
            raise _http_error(
                403,
                "This page is for course staff. Your account is not an admin of this hub"
                + (f" or in the group '{STAFF.group}'." if STAFF.group else "."),
            )
        try:
            allowlist = await SOURCE.current()
        except CourseRefused as e:
            raise refusal_error(e) from None
        hub_url = f"{self.request.protocol}://{self.request.host}{self.hub.base_url}"
        links = course_links(allowlist, hub_url) if allowlist.published else []
        ns = dict(self.template_namespace, links=links)
        self.finish(self.settings["jinja2_env_sync"].from_string(STAFF_TEMPLATE).render(**ns))


# ------------------------------------------------------------------- configuration

_TMP_NAMES = {"tmp", "tmpauthenticator", "tmpauthenticator.tmpauthenticator"}


def configure_hub(c, *, allowlist_configmap: str | None = None, staff_group: str | None = None) -> None:
    """Point a JupyterHub config ``c`` at the course spawner (and the course-aware
    tmp login when tmpauthenticator is the configured authenticator), and add the
    staff page for admins and members of ``staff_group``."""
    SOURCE.configmap = (
        allowlist_configmap or os.environ.get("COURSEHUB_ALLOWLIST_CONFIGMAP") or ALLOWLIST_CONFIGMAP
    )
    # None: the default group; "": admins only
    STAFF.group = DEFAULT_STAFF_GROUP if staff_group is None else (staff_group or None)
    # extra_handlers (deprecated since JupyterHub 3.1 in favour of services, and logged so):
    # a service would be a second process with its own token and allowlist reader, while the
    # page must read the hub's own live allowlist.
    handlers = list(c.JupyterHub.get("extra_handlers") or []) if "JupyterHub" in c else []
    if not any(h[1] is StaffCoursesHandler for h in handlers):
        c.JupyterHub.extra_handlers = [*handlers, (STAFF_PAGE_PATH, StaffCoursesHandler)]
    configured_ns = c.KubeSpawner.get("namespace") if "KubeSpawner" in c else None
    SOURCE.namespace = hub_namespace(configured_ns if isinstance(configured_ns, str) else None)
    c.JupyterHub.spawner_class = CourseSpawner
    auth = c.JupyterHub.get("authenticator_class") if "JupyterHub" in c else None
    if auth is TmpAuthenticator or (isinstance(auth, str) and auth.lower() in _TMP_NAMES):
        c.JupyterHub.authenticator_class = CourseTmpAuthenticator


# When z2jh's jupyterhub_config.py exec's this text, `c` and `get_config` are globals.
if __name__ != _MODULE_NAME and "c" in globals() and "get_config" in globals():
    configure_hub(globals()["c"], **dict(globals().get("COURSEHUB_SETTINGS") or {}))
