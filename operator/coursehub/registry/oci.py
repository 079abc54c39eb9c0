"""Resolve a tag to a digest through the OCI distribution API (any registry but ECR).

One resolution is: HEAD the manifest (GET when the registry sends no
``Docker-Content-Digest``), answering a 401 challenge once, either with HTTP
basic auth or with the bearer token flow of the Docker token spec.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp

from .errors import (
    ImageNotFound,
    RegistryError,
    RegistryUnauthorized,
    RegistryUnreachable,
    ResolveError,
)
from .reference import DOCKER_HUB, ImageReference

__all__ = [
    "DEFAULT_INSECURE_REGISTRIES",
    "MANIFEST_MEDIA_TYPES",
    "Credentials",
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

#: Hosts spoken to over plain HTTP when no ``insecure_registries`` is given.
DEFAULT_INSECURE_REGISTRIES = ("localhost", "127.0.0.1", "::1")

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# Aliases under which docker config files store Docker Hub credentials.
_DOCKER_HUB_ALIASES = {DOCKER_HUB, "index.docker.io", "registry-1.docker.io"}

Credentials = tuple[str, str]


# --- insecure hosts -------------------------------------------------------


def _split_host(host: str) -> tuple[str, int | None]:
    """``"[::1]:5000"`` -> ``("::1", 5000)``; ``"a.b"`` -> ``("a.b", None)``."""
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        return name, int(rest[1:]) if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and ":" not in name:
        return name, int(port)
    return host, None


def is_insecure(host: str, insecure_registries: Iterable[str] | None = None) -> bool:
    """Whether ``host`` is reached over plain HTTP.

    Entries are ``host`` (any port) or ``host:port``; ``None`` means the
    loopback defaults, an explicit list replaces them (``[]``: TLS everywhere).
    """
    entries = DEFAULT_INSECURE_REGISTRIES if insecure_registries is None else insecure_registries
    name, port = _split_host(host)
    for entry in entries:
        entry_name, entry_port = _split_host(entry.strip().removeprefix("http://").rstrip("/"))
        if entry_name.lower() == name.lower() and entry_port in (None, port):
            return True
    return False


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


# --- the resolution -------------------------------------------------------


class _Resolver:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        ref: ImageReference,
        credentials: Credentials | None,
        base_url: str,
    ) -> None:
        self.session = session
        self.ref = ref
        self.credentials = credentials
        self.base_url = base_url
        self.authorization: str | None = None
        self.what = f"digest {ref.digest}" if ref.digest else f"tag {ref.tag!r}"

    @property
    def manifest_url(self) -> str:
        return f"{self.base_url}/v2/{self.ref.repository}/manifests/{self.ref.manifest_reference}"

    async def request(self, method: str) -> tuple[aiohttp.ClientResponse, bytes]:
        """One manifest request, answering a 401 challenge once."""
        response, body = await self._send(method)
        if response.status == 401 and self.authorization is None:
            await self._authorize(response.headers.get("WWW-Authenticate", ""))
            response, body = await self._send(method)
        return response, body

    async def _send(self, method: str) -> tuple[aiohttp.ClientResponse, bytes]:
        headers = {"Accept": _ACCEPT}
        if self.authorization:
            headers["Authorization"] = self.authorization
        async with self.session.request(method, self.manifest_url, headers=headers) as response:
            body = await response.read()
        return response, body

    async def _authorize(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if not scheme:
            # A bare 401 (no challenge) still means "who are you?".
            raise self._unauthorized(rejected=self.credentials is not None)
        if scheme == "basic":
            if self.credentials is None:
                raise self._unauthorized(rejected=False)
            self.authorization = _basic(self.credentials)
        elif scheme == "bearer" and params.get("realm"):
            self.authorization = f"Bearer {await self._fetch_token(params)}"
        else:
            raise RegistryError(
                f"{self.ref.registry} asked for authentication with an unsupported challenge "
                f"{challenge!r}; coursehub supports Basic and Bearer"
            )

    async def _fetch_token(self, params: dict[str, str]) -> str:
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        # Credentials go to the token service only; anonymous tokens need none.
        headers = {"Authorization": _basic(self.credentials)} if self.credentials else {}
        async with self.session.get(params["realm"], params=query, headers=headers) as response:
            body = await response.read()
        if response.status in (401, 403):
            raise self._unauthorized(rejected=self.credentials is not None)
        if response.status != 200:
            raise RegistryError(
                f"the token service of {self.ref.registry} ({params['realm']}) answered "
                f"HTTP {response.status}: {_snippet(body)}"
            )
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise RegistryError(f"the token service of {self.ref.registry} returned no token")
        return str(token)

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
        response, body = await self.request("HEAD")
        if response.status == 200:
            digest = response.headers.get("Docker-Content-Digest", "")
            if _DIGEST_RE.match(digest):
                return digest
        if response.status not in (401, 403):
            # No digest on HEAD (some registries omit it or refuse HEAD), or an error
            # whose body HEAD cannot carry: GET the manifest and hash it ourselves.
            response, body = await self.request("GET")
            if response.status == 200:
                digest = response.headers.get("Docker-Content-Digest", "")
                return digest if _DIGEST_RE.match(digest) else "sha256:" + hashlib.sha256(body).hexdigest()
        # Many registries say MANIFEST_UNKNOWN for a missing repository too; the
        # tag list tells the two apart, so the message names the right fix.
        if (
            response.status == 404
            and "NAME_UNKNOWN" not in _error_codes(body)
            and await self._repository_missing()
        ):
            body = b'{"errors":[{"code":"NAME_UNKNOWN"}]}'
        raise self._error(response, body)

    async def _repository_missing(self) -> bool:
        headers = {"Authorization": self.authorization} if self.authorization else {}
        url = f"{self.base_url}/v2/{self.ref.repository}/tags/list?n=1"
        async with self.session.get(url, headers=headers) as response:
            body = await response.read()
        return response.status == 404 and "NAME_UNKNOWN" in _error_codes(body)

    def _error(self, response: aiohttp.ClientResponse, body: bytes) -> ResolveError:
        status = response.status
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
        return RegistryError(
            f"{self.ref.registry} answered HTTP {status} for {self.what} in {self.ref.name}: {_snippet(body)}"
        )


def _basic(credentials: Credentials) -> str:
    username, password = credentials
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _error_codes(body: bytes) -> set[str]:
    try:
        errors = json.loads(body).get("errors") or []
        return {str(e.get("code", "")).upper() for e in errors if isinstance(e, dict)}
    except (ValueError, AttributeError):
        return set()


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")


async def resolve_oci(
    ref: ImageReference,
    *,
    docker_config: Mapping[str, Any] | str | bytes | None = None,
    insecure_registries: Iterable[str] | None = None,
    session: aiohttp.ClientSession | None = None,
    timeout: float = 15.0,
) -> str:
    """Return the ``sha256:`` digest that ``ref`` points at in its registry.

    A reference that carries a digest is checked to exist and its digest is
    returned. ``session`` lets a caller reuse connections; by default each call
    opens and closes its own.
    """
    credentials = credentials_for(ref.registry, docker_config)
    host = ref.api_host
    scheme = "http" if is_insecure(host, insecure_registries) else "https"
    owned = session is None
    if owned:
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        )
    try:
        resolver = _Resolver(session, ref, credentials, f"{scheme}://{host}")
        return await resolver.resolve()
    except ResolveError:
        raise
    except (
        aiohttp.ClientConnectorCertificateError,
        aiohttp.ClientSSLError,
        ssl.SSLError,
    ) as exc:
        raise RegistryError(
            f"TLS to {host} failed ({exc}); if this registry serves plain HTTP, add it to "
            "the operator's insecure registries"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise RegistryUnreachable(
            f"cannot connect to {host} ({exc.os_error or exc}); check the registry host in "
            "spec.image and that the registry is up"
        ) from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise RegistryUnreachable(f"{host} did not answer within {timeout:g}s; it will be retried") from None
    except (
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientOSError,
        aiohttp.ClientPayloadError,
    ) as exc:
        raise RegistryUnreachable(f"the connection to {host} failed: {exc}") from None
    except aiohttp.ClientError as exc:
        raise RegistryError(f"talking to {host} failed: {exc}") from None
    finally:
        if owned:
            await session.close()
