"""Resolve a tag to a digest through the OCI distribution API (any registry but ECR).

One resolution is: HEAD the manifest (GET when the registry sends no
``Docker-Content-Digest``), answering a 401 challenge once, either with HTTP
basic auth or with the bearer token flow of the Docker token spec. A re-check of a tag
whose digest is known sends it as ``If-None-Match`` (distribution's manifest ETag), so a
registry may answer 304 Not Modified: the same digest, nothing else to read.

Everything a registry says is untrusted (a course author picks the registry): the limits of
``RegistryPolicy`` (policy.py) apply to every request, and messages carry HTTP statuses and
the distribution spec's error codes, never response bodies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import socket
import ssl
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .errors import (
    ImageNotFound,
    RegistryError,
    RegistryNotAllowed,
    RegistryUnauthorized,
    RegistryUnreachable,
    ResolveError,
)
from .policy import MAX_ERROR_BYTES, RegistryPolicy, host_matches, is_global_address, split_host
from .reference import DOCKER_HUB, ImageReference

__all__ = [
    "MANIFEST_MEDIA_TYPES",
    "Credentials",
    "OciClient",
    "credentials_for",
    "is_insecure",
    "resolve_oci",
]

# Index/list first: a multi-platform tag must resolve to its index digest, which
# is what the kubelet pulls and what stays stable across platforms.
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# Aliases under which docker config files store Docker Hub credentials.
_DOCKER_HUB_ALIASES = {DOCKER_HUB, "index.docker.io", "registry-1.docker.io"}

Credentials = tuple[str, str]


# --- insecure hosts -------------------------------------------------------


def is_insecure(host: str, insecure_registries: Iterable[str] = ()) -> bool:
    """Whether ``host`` is reached over plain HTTP: entries are ``host`` (any port) or
    ``host:port``; nothing is insecure unless listed (loopback registries included)."""
    return host_matches(*split_host(host), insecure_registries)


# --- credentials ----------------------------------------------------------


def _normalize_config_key(key: str) -> str:
    # Keys appear as "host", "https://host", "https://index.docker.io/v1/", ...
    host = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key.strip()).split("/", 1)[0]
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def credentials_for(
    registry: str, docker_config: Mapping[str, Any] | str | bytes | None
) -> Credentials | None:
    """Username and password for ``registry`` from a dockerconfigjson document.

    Accepts ``{"auths": {host: entry}}`` (``.dockerconfigjson``), the bare map
    (legacy ``.dockercfg``), or the same as JSON text; an entry holds
    ``auth`` (base64 of ``user:password``) or ``username`` and ``password``.
    """
    if docker_config is None:
        return None
    if isinstance(docker_config, (str, bytes)):
        try:
            docker_config = json.loads(docker_config)
        except ValueError as exc:
            raise RegistryError(f"the docker config for {registry} is not valid JSON: {exc}") from None
    if not isinstance(docker_config, Mapping):
        raise RegistryError("the docker config must be a JSON object with an 'auths' map")
    auths = docker_config.get("auths", docker_config)
    if not isinstance(auths, Mapping):
        raise RegistryError("'auths' in the docker config must be a map of registry host to credentials")
    wanted = DOCKER_HUB if registry in _DOCKER_HUB_ALIASES else registry
    for key, entry in auths.items():
        if _normalize_config_key(key) != wanted or not isinstance(entry, Mapping):
            continue
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(entry["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise RegistryUnauthorized(
                    f"the 'auth' entry for {key} in the pull secret is not base64 of 'user:password'"
                ) from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise RegistryUnauthorized(
                    f"the 'auth' entry for {key} in the pull secret must decode to 'user:password'"
                )
            return username, password
        if entry.get("username") is not None and entry.get("password") is not None:
            return str(entry["username"]), str(entry["password"])
    return None


# --- WWW-Authenticate -----------------------------------------------------

_CHALLENGE_PARAM_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``'Bearer realm="r",service="s"'`` -> ``("bearer", {"realm": "r", "service": "s"})``."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        quoted, bare = match.group(2), match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
    return scheme.lower(), params


# --- the network guard ----------------------------------------------------


def _not_allowed(host: str, why: str) -> RegistryNotAllowed:
    return RegistryNotAllowed(
        f"{host} {why}; the operator reaches only public addresses unless the registry is named in its "
        "settings (COURSEHUB_PRIVATE_REGISTRIES or COURSEHUB_INSECURE_REGISTRIES, see docs/registries.md)"
    )


class _GuardedResolver(AbstractResolver):
    """DNS that refuses loopback, link-local and private answers for hosts the settings do not
    name. The connection uses exactly the addresses checked here, so a name cannot be pointed
    elsewhere between the check and the connect (DNS rebinding)."""

    def __init__(self, policy: RegistryPolicy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, socket.AddressFamily(family))
        if not self._policy.may_be_private(host, port):
            for result in results:
                if not is_global_address(result["host"]):
                    raise _not_allowed(host, f"resolves to the non-public address {result['host']}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def _check_destination(url: URL, policy: RegistryPolicy) -> None:
    """Address literals skip DNS (and so the resolver): check them here, before connecting."""
    host = url.host or ""
    try:
        public = is_global_address(host)
    except ValueError:
        return  # a name: _GuardedResolver checks what it resolves to
    if not public and not policy.may_be_private(host, url.port):
        raise _not_allowed(host, "is a non-public address")


# Per event loop and registry host: semaphores belong to one loop.
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _slot(host: str, limit: int) -> asyncio.Semaphore:
    per_loop = _slots.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault((host.lower(), limit), asyncio.Semaphore(limit))


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, streamed and abandoned once it passes ``limit`` bytes (None then)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


# --- the resolution -------------------------------------------------------

_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _Reply:
    """What the resolver keeps of a response: status, headers, and a bounded body."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes | None) -> None:
        self.status = status
        self.headers = headers
        self.body = body  # None: larger than the limit


class _Resolver:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        ref: ImageReference,
        credentials: Credentials | None,
        base_url: str,
        policy: RegistryPolicy,
        known_digest: str | None,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.known_digest = known_digest if known_digest and _DIGEST_RE.match(known_digest) else None
        self.ref = ref
        self.credentials = credentials
        self.base_url = base_url
        self.policy = policy
        self.authorization: str | None = None
        self.what = f"digest {ref.digest}" if ref.digest else f"tag {ref.tag!r}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/v2/{self.ref.repository}/manifests/{self.ref.manifest_reference}"

    async def fetch(self, method: str, url: str, headers: dict[str, str], limit: int, what: str) -> _Reply:
        """One request, following redirects within the same origin only; the body (of a GET)
        is read up to ``limit`` bytes."""
        target = URL(url)
        origin = target.origin()
        for _ in range(_MAX_REDIRECTS + 1):
            _check_destination(target, self.policy)
            async with self.session.request(
                method, target, headers=headers, allow_redirects=False, timeout=self.timeout
            ) as response:
                if response.status in _REDIRECTS and "Location" in response.headers:
                    try:
                        target = target.join(URL(response.headers["Location"]))
                    except ValueError:
                        raise RegistryError(f"{what} sent a redirect that is not a URL") from None
                    if target.origin() != origin:
                        raise RegistryNotAllowed(
                            f"{what} redirected to another origin ({target.origin()}); coursehub follows "
                            f"redirects only within {origin}"
                        )
                    continue
                body = b"" if method == "HEAD" else await _read_capped(response, limit)
                return _Reply(response.status, response.headers, body)
        raise RegistryError(f"{what} redirected more than {_MAX_REDIRECTS} times")

    async def request(self, method: str) -> _Reply:
        """One manifest request, answering a 401 challenge once."""
        reply = await self._send(method)
        if reply.status == 401 and self.authorization is None:
            await self._authorize(reply.headers.get("WWW-Authenticate", ""))
            reply = await self._send(method)
        return reply

    async def _send(self, method: str) -> _Reply:
        headers = {"Accept": _ACCEPT}
        if method == "HEAD" and self.known_digest:
            headers["If-None-Match"] = f'"{self.known_digest}"'
        if self.authorization:
            headers["Authorization"] = self.authorization
        # Success bodies are manifests; error bodies are read only for their error codes.
        limit = max(self.policy.max_manifest_bytes, MAX_ERROR_BYTES)
        reply = await self.fetch(method, self.manifest_url, headers, limit, self.ref.registry)
        if reply.status == 200 and reply.body is None:
            raise RegistryError(
                f"the manifest of {self.what} in {self.ref.name} is larger than "
                f"{self.policy.max_manifest_bytes // (1024 * 1024)} MiB; coursehub does not read it"
            )
        return reply

    async def _authorize(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if not scheme:
            # A bare 401 (no challenge) still means "who are you?".
            raise self._unauthorized(rejected=self.credentials is not None)
        if scheme == "basic":
            if self.credentials is None:
                raise self._unauthorized(rejected=False)
            # Basic credentials go to the registry itself, which the reference named.
            self.authorization = _basic(self.credentials)
        elif scheme == "bearer" and params.get("realm"):
            self.authorization = f"Bearer {await self._fetch_token(params)}"
        else:
            raise RegistryError(
                f"{self.ref.registry} asked for authentication with an unsupported challenge "
                f"({scheme or 'none'}); coursehub supports Basic and Bearer"
            )

    async def _fetch_token(self, params: dict[str, str]) -> str:
        realm = params["realm"]
        problem = self.policy.realm_problem(self.ref.registry, self.ref.api_host, realm)
        if problem:
            # Checked before anything is sent: neither a request nor the credentials leave.
            raise RegistryNotAllowed(
                f"{self.ref.registry} named a token service that is not allowed: {problem}"
            )
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        url = str(URL(realm).update_query(query))
        # Credentials go to the token service only; anonymous tokens need none.
        headers = {"Authorization": _basic(self.credentials)} if self.credentials else {}
        where = f"the token service of {self.ref.registry} ({URL(realm).origin()})"
        reply = await self.fetch("GET", url, headers, self.policy.max_token_bytes, where)
        if reply.status in (401, 403):
            raise self._unauthorized(rejected=self.credentials is not None)
        if reply.status != 200:
            raise RegistryError(f"{where} answered HTTP {reply.status}{_codes_text(reply.body)}")
        if reply.body is None:
            raise RegistryError(
                f"{where} answered with more than {self.policy.max_token_bytes // 1024} KiB; "
                "coursehub does not read it"
            )
        try:
            document = json.loads(reply.body)
            token = document.get("token") or document.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token or not token.isprintable():
            raise RegistryError(f"{where} returned no token")
        return token

    def _unauthorized(self, *, rejected: bool) -> RegistryUnauthorized:
        if rejected:
            return RegistryUnauthorized(
                f"{self.ref.registry} rejected the credentials for {self.ref.name}; "
                "fix the user/password (or token) in the pull secret, or grant it pull access"
            )
        return RegistryUnauthorized(
            f"{self.ref.registry} requires credentials to pull {self.ref.name} (some registries "
            "also say this for a repository that does not exist); reference a dockerconfigjson "
            f"Secret with an entry for {self.ref.registry}"
        )

    async def resolve(self) -> str:
        digest = await self._digest()
        if self.ref.digest and digest != self.ref.digest:
            raise RegistryError(
                f"{self.ref.registry} returned {digest} when asked for {self.ref.digest} in {self.ref.name}"
            )
        return digest

    async def _digest(self) -> str:
        reply = await self.request("HEAD")
        if reply.status == 304 and self.known_digest:
            # Not modified: the tag still names the digest we sent (a registry can only say
            # what it could have said with a 200 and that digest).
            return self.known_digest
        if reply.status == 200:
            digest = reply.headers.get("Docker-Content-Digest", "")
            if _DIGEST_RE.match(digest):
                return digest
        if reply.status not in (401, 403):
            # No digest on HEAD (some registries omit it or refuse HEAD), or an error
            # whose body HEAD cannot carry: GET the manifest and hash it ourselves.
            reply = await self.request("GET")
            if reply.status == 200:
                digest = reply.headers.get("Docker-Content-Digest", "")
                body = reply.body or b""
                return digest if _DIGEST_RE.match(digest) else "sha256:" + hashlib.sha256(body).hexdigest()
        body = reply.body or b""
        # Many registries say MANIFEST_UNKNOWN for a missing repository too; the
        # tag list tells the two apart, so the message names the right fix.
        if (
            reply.status == 404
            and "NAME_UNKNOWN" not in _error_codes(body)
            and await self._repository_missing()
        ):
            body = b'{"errors":[{"code":"NAME_UNKNOWN"}]}'
        raise self._error(reply.status, body)

    async def _repository_missing(self) -> bool:
        headers = {"Authorization": self.authorization} if self.authorization else {}
        url = f"{self.base_url}/v2/{self.ref.repository}/tags/list?n=1"
        reply = await self.fetch("GET", url, headers, MAX_ERROR_BYTES, self.ref.registry)
        return reply.status == 404 and "NAME_UNKNOWN" in _error_codes(reply.body or b"")

    def _error(self, status: int, body: bytes) -> ResolveError:
        codes = _error_codes(body)
        if status == 404 or codes & {
            "MANIFEST_UNKNOWN",
            "NAME_UNKNOWN",
            "BLOB_UNKNOWN",
        }:
            if "NAME_UNKNOWN" in codes:
                return ImageNotFound(
                    f"repository {self.ref.repository!r} not found in {self.ref.registry}; "
                    "push the image or fix spec.image"
                )
            return ImageNotFound(f"{self.what} not found in {self.ref.name}; push it or fix spec.image")
        if status in (401, 403) or codes & {"UNAUTHORIZED", "DENIED"}:
            return self._unauthorized(rejected=self.credentials is not None)
        if status == 429 or "TOOMANYREQUESTS" in codes:
            return RegistryError(f"{self.ref.registry} is rate limiting pulls (HTTP 429); it will be retried")
        named = _codes_text(body)
        return RegistryError(
            f"{self.ref.registry} answered HTTP {status}{named} for {self.what} in {self.ref.name}"
        )


def _basic(credentials: Credentials) -> str:
    username, password = credentials
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


# The distribution spec's error codes: the only words of a registry's answer that reach status
# and Events, so nothing a server returns (an internal page, a secret) can be read back there.
_KNOWN_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "MANIFEST_UNVERIFIED",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "TAG_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
        "PAGINATION_NUMBER_INVALID",
        "RANGE_INVALID",
    }
)


def _error_codes(body: bytes) -> set[str]:
    try:
        errors = json.loads(body).get("errors") or []
        codes = {str(e.get("code", "")).upper() for e in errors if isinstance(e, dict)}
    except (ValueError, AttributeError, TypeError):
        return set()
    return codes & _KNOWN_CODES


def _codes_text(body: bytes | None) -> str:
    codes = _error_codes(body or b"")
    return f" ({', '.join(sorted(codes))})" if codes else ""


class OciClient:
    """Resolutions under one policy that share one HTTP session, so connections to a registry
    are kept alive between them (a resolve round of 1,000 courses otherwise opened, resolved
    DNS for, and closed 1,000 connections).

    What a shared session could carry from one course to another is shut off: no cookie jar
    (a registry cannot tie two courses' requests together or hand one course's state to
    another), credentials and tokens are per resolution (``_Resolver``), and every new
    connection still goes through ``_GuardedResolver``; a kept-alive one goes only to an
    address that was checked when it was opened. Use it in one event loop; ``close`` it.
    """

    def __init__(self, policy: RegistryPolicy | None = None) -> None:
        self.policy = policy or RegistryPolicy()
        self._session: aiohttp.ClientSession | None = None
        self.connections_opened = 0  # what keeping them alive saves shows here

    async def _opened(self, *_args: object) -> None:
        self.connections_opened += 1

    async def __aenter__(self) -> OciClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=_GuardedResolver(self.policy),
                use_dns_cache=False,
                ssl=self.policy.ssl_context or True,
            )
            tracing = aiohttp.TraceConfig()
            tracing.on_connection_create_end.append(self._opened)
            # trust_env stays off: no proxy from the environment picks where requests go.
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trace_configs=[tracing]
            )
        return self._session

    async def resolve(
        self,
        ref: ImageReference,
        *,
        docker_config: Mapping[str, Any] | str | bytes | None = None,
        timeout: float | None = None,
        known_digest: str | None = None,
    ) -> str:
        """Return the ``sha256:`` digest that ``ref`` points at in its registry (``resolve_oci``)."""
        policy = self.policy
        deadline = policy.deadline if timeout is None else timeout
        credentials = credentials_for(ref.registry, docker_config)
        host = ref.api_host
        scheme = "http" if policy.is_insecure(host) else "https"
        try:
            async with asyncio.timeout(deadline), _slot(host, policy.per_registry_concurrency):
                resolver = _Resolver(
                    self._session_now(),
                    ref,
                    credentials,
                    f"{scheme}://{host}",
                    policy,
                    known_digest,
                    aiohttp.ClientTimeout(total=deadline, connect=min(deadline, 5.0)),
                )
                return await resolver.resolve()
        except ResolveError:
            raise
        except (
            aiohttp.ClientConnectorCertificateError,
            aiohttp.ClientSSLError,
            ssl.SSLError,
        ) as exc:
            raise RegistryError(
                f"TLS to {host} failed ({type(exc).__name__}); if this registry serves plain HTTP, add it to "
                "the operator's insecure registries (COURSEHUB_INSECURE_REGISTRIES)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise RegistryUnreachable(
                f"cannot connect to {host} ({exc.os_error or exc}); check the registry host in "
                "spec.image and that the registry is up"
            ) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise RegistryUnreachable(
                f"resolving {ref.name} at {host} did not finish within {deadline:g}s; it will be retried"
            ) from None
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError,
            aiohttp.ClientPayloadError,
        ) as exc:
            raise RegistryUnreachable(f"the connection to {host} failed ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            raise RegistryError(f"talking to {host} failed ({type(exc).__name__})") from None


async def resolve_oci(
    ref: ImageReference,
    *,
    docker_config: Mapping[str, Any] | str | bytes | None = None,
    policy: RegistryPolicy | None = None,
    timeout: float | None = None,
    known_digest: str | None = None,
) -> str:
    """Return the ``sha256:`` digest that ``ref`` points at in its registry.

    ``known_digest``: the digest the tag named last time; sent as ``If-None-Match``, so an
    unchanged tag may cost a 304 and no manifest.

    A reference that carries a digest is checked to exist and its digest is returned.
    ``policy`` (default: nothing insecure, nothing private) bounds where the resolver goes and
    what it reads; ``timeout`` overrides its deadline. At most ``per_registry_concurrency``
    resolutions talk to one registry host at once; waiting for a turn counts to the deadline.
    One resolution, one session: many resolutions share one through ``OciClient``.
    """
    async with OciClient(policy) as client:
        return await client.resolve(
            ref, docker_config=docker_config, timeout=timeout, known_digest=known_digest
        )
