"""Hostile registries and token services (issue 12, item 1): real HTTP(S) servers on distinct
loopback addresses (127.0.0.2, 127.0.0.3) that try SSRF, credential theft, unbounded answers and
stalling. Each test checks what a server received, not only the error the resolver raised.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coursehub.reconcile.resolver import Resolver
from coursehub.registry import OciClient, RegistryPolicy, ResolveError, resolve_image
from coursehub.registry.oci import _slot
from coursehub.settings import Settings
from coursehub.state import Index

DIGEST = "sha256:" + "ab" * 32
SECRET = "INTERNAL-SECRET-4f1c"  # what an internal endpoint would hold
USER, PASSWORD = "course-author", "pull-secret-password"


def pull_secret(ref: str) -> dict:
    """A dockerconfigjson document with credentials for the registry of ``ref``."""
    return {"auths": {ref.split("/", 1)[0]: {"username": USER, "password": PASSWORD}}}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- servers ---------------------------------------------------------------


@dataclass
class Server:
    """One aiohttp server on ``address``; ``requests`` lists (method, path, Authorization)."""

    address: str
    handler: Handler
    tls: ssl.SSLContext | None = None
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    port: int = 0

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def credentials_seen(self) -> bool:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return any(auth == expected for _, _, auth in self.requests)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(address: str, handler: Handler, *, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(address, handler, tls)

        async def entry(request: web.Request) -> web.StreamResponse:
            server.requests.append(
                (request.method, request.path_qs, request.headers.get("Authorization", ""))
            )
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", entry)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, address, 0, ssl_context=tls)
        await site.start()
        server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass(frozen=True)
class Pki:
    server: ssl.SSLContext  # for the hostile servers
    client: ssl.SSLContext  # trusts only this test's CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and one server certificate for 127.0.0.2, 127.0.0.3 and localhost, made here."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coursehub hostile-registry test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost")] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory: Path = tmp_path_factory.mktemp("pki")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return Pki(server, client)


# --- registry behaviours ---------------------------------------------------


def manifest_ok(request: web.Request) -> web.Response:
    return web.Response(status=200, headers={"Docker-Content-Digest": DIGEST})


def bearer_registry(realm: str) -> Handler:
    """A registry that wants a bearer token from ``realm`` and accepts any token it got."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization", "").startswith("Bearer "):
            return manifest_ok(request)
        challenge = f'Bearer realm="{realm}",service="hostile",scope="repository:x:pull"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    return handle


async def token_ok(request: web.Request) -> web.Response:
    return web.json_response({"token": "token-from-" + request.host})


async def internal_secret(request: web.Request) -> web.Response:
    """An internal endpoint: answers anything, with a secret in the body."""
    return web.json_response({"token": SECRET, "details": SECRET})


async def resolve_error(ref: str, policy: RegistryPolicy, **kwargs) -> ResolveError:
    with pytest.raises(ResolveError) as caught:
        await resolve_image(ref, docker_config=pull_secret(ref), policy=policy, **kwargs)
    assert SECRET not in caught.value.message
    return caught.value


# --- the bearer realm ----------------------------------------------------------


async def test_realm_on_another_host_is_refused_before_any_request(serve, pki):
    # The other host is even configured as reachable: the realm rule alone refuses it.
    tokens = await serve("127.0.0.3", internal_secret, tls=pki.server)
    registry = await serve("127.0.0.2", bearer_registry(f"{tokens.url}/token"), tls=pki.server)
    policy = RegistryPolicy(private_registries=("127.0.0.2", "127.0.0.3"), ssl_context=pki.client)

    error = await resolve_error(f"{registry.host}/x:1", policy)
    assert error.reason == "RegistryNotAllowed"
    assert "127.0.0.3" in error.message and "COURSEHUB_REGISTRY_TOKEN_HOSTS" in error.message
    assert tokens.requests == []  # no SSRF, and the pull secret's credentials never left

    # Configured as this registry's token host, the same realm is used, credentials and all.
    allowed = replace(policy, token_hosts={registry.host: ("127.0.0.3",)})
    resolved = await resolve_image(
        f"{registry.host}/x:1", docker_config=pull_secret(registry.host), policy=allowed
    )
    assert resolved.digest == DIGEST
    assert tokens.credentials_seen()


async def test_plain_http_realm_gets_no_credentials(serve, pki):
    tokens = await serve("127.0.0.2", token_ok)  # plain HTTP, on the registry's own host
    registry = await serve("127.0.0.2", bearer_registry(f"{tokens.url}/token"), tls=pki.server)
    policy = RegistryPolicy(private_registries=("127.0.0.2",), ssl_context=pki.client)

    error = await resolve_error(f"{registry.host}/x:1", policy)
    assert error.reason == "RegistryNotAllowed"
    assert "plain HTTP" in error.message
    assert tokens.requests == []
    assert not tokens.credentials_seen()


async def test_https_realm_on_the_registry_host_gets_credentials(serve, pki):
    tokens = await serve("127.0.0.2", token_ok, tls=pki.server)
    registry = await serve("127.0.0.2", bearer_registry(f"{tokens.url}/token"), tls=pki.server)
    policy = RegistryPolicy(private_registries=("127.0.0.2",), ssl_context=pki.client)
    resolved = await resolve_image(
        f"{registry.host}/x:1", docker_config=pull_secret(registry.host), policy=policy
    )
    assert resolved.digest == DIGEST
    assert tokens.credentials_seen()
    assert registry.requests[-1][2] == f"Bearer token-from-{tokens.host}"


async def test_realm_resolving_to_loopback_needs_configuration(serve, pki):
    """A name resolved by DNS counts, not only address literals: localhost is loopback."""
    tokens = await serve("127.0.0.1", token_ok, tls=pki.server)
    registry = await serve(
        "127.0.0.1", bearer_registry(f"https://localhost:{tokens.port}/token"), tls=pki.server
    )
    # The registry is configured with its port, so the realm's port is not.
    policy = RegistryPolicy(private_registries=(f"localhost:{registry.port}",), ssl_context=pki.client)
    error = await resolve_error(f"localhost:{registry.port}/x:1", policy)
    assert error.reason == "RegistryNotAllowed"
    assert "localhost resolves to the non-public address" in error.message
    assert tokens.requests == []


# --- where the registry itself may be ----------------------------------------


async def test_registry_name_resolving_to_loopback_is_refused(serve, pki):
    registry = await serve("127.0.0.1", manifest_ok_handler, tls=pki.server)
    error = await resolve_error(f"localhost:{registry.port}/x:1", RegistryPolicy(ssl_context=pki.client))
    assert error.reason == "RegistryNotAllowed"
    assert "non-public address 127.0.0.1" in error.message
    assert registry.requests == []
    # Named in the settings, the same registry is fine.
    policy = RegistryPolicy(private_registries=("localhost",), ssl_context=pki.client)
    assert (await resolve_image(f"localhost:{registry.port}/x:1", policy=policy)).digest == DIGEST


async def test_registry_address_literal_is_refused(serve):
    registry = await serve("127.0.0.2", manifest_ok_handler)
    error = await resolve_error(f"{registry.host}/x:1", RegistryPolicy(insecure_registries=("127.0.0.3",)))
    assert error.reason == "RegistryNotAllowed"
    assert registry.requests == []
    # Listing a registry as insecure (plain HTTP) names it explicitly too.
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",))
    assert (await resolve_image(f"{registry.host}/x:1", policy=policy)).digest == DIGEST


async def manifest_ok_handler(request: web.Request) -> web.Response:
    return manifest_ok(request)


# --- redirects -------------------------------------------------------------------


async def test_redirect_to_another_origin_is_not_followed(serve):
    internal = await serve("127.0.0.3", internal_secret)

    async def redirecting(request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/v2/same/"):
            raise web.HTTPTemporaryRedirect("/v2/x/manifests/1")  # same origin: followed
        if request.path.startswith("/v2/x/"):
            raise web.HTTPTemporaryRedirect(f"{internal.url}/latest/meta-data")
        raise web.HTTPNotFound()

    registry = await serve("127.0.0.2", redirecting)
    # 127.0.0.3 is even reachable by configuration: the origin rule alone refuses it.
    policy = RegistryPolicy(insecure_registries=("127.0.0.2", "127.0.0.3"))
    for ref in (f"{registry.host}/x:1", f"{registry.host}/same:1"):
        error = await resolve_error(ref, policy)
        assert error.reason == "RegistryNotAllowed"
        assert "redirected to another origin" in error.message
    assert internal.requests == []


async def test_same_origin_redirect_is_followed(serve):
    async def redirecting(request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/x/manifests/1":
            raise web.HTTPTemporaryRedirect("/v2/x/manifests/" + DIGEST)
        return manifest_ok(request)

    registry = await serve("127.0.0.2", redirecting)
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",))
    assert (await resolve_image(f"{registry.host}/x:1", policy=policy)).digest == DIGEST


# --- bounded answers -------------------------------------------------------------


async def test_huge_manifest_is_not_read(serve):
    total, chunk = 64 * 1024 * 1024, b"{" + b" " * (1024 * 1024 - 1)
    sent = [0]

    async def huge(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(status=200)  # no digest: the resolver must GET and hash
        response = web.StreamResponse(status=200)
        response.enable_chunked_encoding()  # no Content-Length: only a streaming cap stops it
        await response.prepare(request)
        try:
            while sent[0] < total:
                await response.write(chunk)
                sent[0] += len(chunk)
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    registry = await serve("127.0.0.2", huge)
    error = await resolve_error(f"{registry.host}/x:1", RegistryPolicy(insecure_registries=("127.0.0.2",)))
    assert error.reason == "RegistryError"
    assert "larger than 4 MiB" in error.message
    assert sent[0] < total  # the client stopped reading; it did not read everything and truncate


async def test_huge_token_answer_is_refused(serve):
    async def huge_token(request: web.Request) -> web.Response:
        return web.json_response({"token": "t" * (1024 * 1024)})

    tokens = await serve("127.0.0.2", huge_token)
    registry = await serve("127.0.0.2", bearer_registry(f"{tokens.url}/token"))
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",))
    error = await resolve_error(f"{registry.host}/x:1", policy)
    assert error.reason == "RegistryError"
    assert "more than 64 KiB" in error.message
    assert not any(auth.startswith("Bearer t") for _, _, auth in registry.requests)


# --- what reaches status and Events -------------------------------------------------


async def test_answers_are_never_echoed(serve):
    async def failing(request: web.Request) -> web.Response:
        if request.path.startswith("/v2/coded/"):
            body = {"errors": [{"code": "UNSUPPORTED", "message": SECRET, "detail": SECRET}]}
            return web.json_response(body, status=500)
        if request.path.startswith("/v2/invented/"):
            return web.json_response({"errors": [{"code": SECRET}]}, status=500)
        return web.Response(status=500, text=f"<html>{SECRET}</html>")

    registry = await serve("127.0.0.2", failing)
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",))
    error = await resolve_error(f"{registry.host}/plain:1", policy)
    assert error.reason == "RegistryError" and "HTTP 500" in error.message
    error = await resolve_error(f"{registry.host}/coded:1", policy)
    assert "HTTP 500 (UNSUPPORTED)" in error.message
    error = await resolve_error(f"{registry.host}/invented:1", policy)  # only the spec's codes
    assert "HTTP 500 for" in error.message


async def test_token_service_answer_is_never_echoed(serve):
    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=502, text=SECRET)

    tokens = await serve("127.0.0.2", failing)
    registry = await serve("127.0.0.2", bearer_registry(f"{tokens.url}/token"))
    error = await resolve_error(f"{registry.host}/x:1", RegistryPolicy(insecure_registries=("127.0.0.2",)))
    assert error.reason == "RegistryError"
    assert "HTTP 502" in error.message


# --- time and concurrency ------------------------------------------------------------


async def test_slow_registry_hits_the_deadline(serve):
    """Each step answers, slowly: only a deadline for the whole resolution ends it."""
    release = asyncio.Event()

    async def stalling_tokens(request: web.Request) -> web.Response:
        await release.wait()
        return await token_ok(request)

    tokens = await serve("127.0.0.2", stalling_tokens)
    registry = await serve("127.0.0.2", bearer_registry(f"{tokens.url}/token"))
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",), deadline=1)
    try:
        error = await resolve_error(f"{registry.host}/x:1", policy)
    finally:
        release.set()
    assert error.reason == "RegistryUnreachable"
    assert "did not finish within 1s" in error.message


@pytest.mark.timeout(60)
async def test_one_registry_gets_at_most_the_concurrency_limit(serve):
    release = asyncio.Event()
    in_flight, most = [0], [0]

    async def busy(request: web.Request) -> web.Response:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await release.wait()
        in_flight[0] -= 1
        return manifest_ok(request)

    registry = await serve("127.0.0.2", busy)
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",), per_registry_concurrency=2)
    tasks = [asyncio.create_task(resolve_image(f"{registry.host}/x:{i}", policy=policy)) for i in range(3)]
    slot = _slot(registry.host, 2)
    # Two resolutions reach the registry; the third waits for a turn (not a timing check: a
    # state the test waits for).
    while not (in_flight[0] == 2 and slot.locked() and len(slot._waiters or ()) == 1):
        await asyncio.sleep(0.01)
    release.set()
    assert [r.digest for r in await asyncio.gather(*tasks)] == [DIGEST] * 3
    assert most[0] == 2


# --- one session for many resolutions (OciClient) ---------------------------------


def remembering(seen: list[dict[str, str]]) -> Handler:
    """A registry that wants Basic credentials, sets a cookie on every answer, and remembers
    each request's connection (the client's port), credentials and cookies."""

    async def handle(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append(
            {
                "port": str(peer[1] if peer else ""),
                "auth": request.headers.get("Authorization", ""),
                "cookie": request.headers.get("Cookie", ""),
            }
        )
        cookie = {"Set-Cookie": "registry-session=for-whoever-came-first; Path=/"}
        if request.method == "HEAD":
            # As a registry answers HEAD: the length of the body GET would have (aiohttp's
            # client closes a connection whose HEAD answer has none).
            cookie["Content-Length"] = "120"
        if not request.headers.get("Authorization", "").startswith("Basic "):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"', **cookie})
        return web.Response(status=200, headers={"Docker-Content-Digest": DIGEST, **cookie})

    return handle


async def test_a_shared_client_reuses_its_connection_and_one_off_resolutions_do_not(serve):
    seen: list[dict[str, str]] = []
    registry = await serve("127.0.0.2", remembering(seen))
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",))
    ref = f"{registry.host}/x:1"
    async with OciClient(policy) as client:
        for _ in range(5):
            resolved = await resolve_image(ref, docker_config=pull_secret(ref), oci=client)
            assert resolved.digest == DIGEST
    assert len(seen) == 10  # each: a 401, then the answer with credentials
    assert len({r["port"] for r in seen}) == 1
    seen.clear()
    for _ in range(5):
        await resolve_image(ref, docker_config=pull_secret(ref), policy=policy)
    assert len({r["port"] for r in seen}) == 5


async def test_a_shared_client_carries_no_credentials_or_cookies_from_one_course_to_another(serve):
    """Two courses on one registry through one kept-alive connection: the second (no pull
    secret) sends neither the first one's credentials nor the cookie the registry set for it."""
    seen: list[dict[str, str]] = []
    registry = await serve("127.0.0.2", remembering(seen))
    ref = f"{registry.host}/x:1"
    async with OciClient(RegistryPolicy(insecure_registries=("127.0.0.2",))) as client:
        assert (await resolve_image(ref, docker_config=pull_secret(ref), oci=client)).digest == DIGEST
        first = len(seen)
        with pytest.raises(ResolveError) as caught:
            await resolve_image(ref, oci=client)
    assert caught.value.reason == "RegistryUnauthorized"
    assert "requires credentials" in caught.value.message
    second = seen[first:]
    assert second and all(r["auth"] == "" and r["cookie"] == "" for r in second)
    assert len({r["port"] for r in seen}) == 1  # the same connection: only the headers differ
    assert all(r["cookie"] == "" for r in seen)


async def test_a_shared_client_still_guards_every_new_destination(serve, pki):
    """After resolving an allowed registry, the shared client still refuses a loopback name and
    an address literal the policy does not name (its guard is per connection, not per client)."""
    registry = await serve("127.0.0.2", answer_manifest)
    elsewhere = await serve("127.0.0.3", internal_secret)
    local = await serve("127.0.0.1", internal_secret, tls=pki.server)
    policy = RegistryPolicy(insecure_registries=("127.0.0.2",), ssl_context=pki.client)
    async with OciClient(policy) as client:
        assert (await resolve_image(f"{registry.host}/x:1", oci=client)).digest == DIGEST
        for ref in (f"{elsewhere.host}/x:1", f"localhost:{local.port}/x:1"):
            with pytest.raises(ResolveError) as caught:
                await resolve_image(ref, oci=client)
            assert caught.value.reason == "RegistryNotAllowed"
            assert SECRET not in caught.value.message
    assert elsewhere.requests == [] and local.requests == []


async def answer_manifest(request: web.Request) -> web.Response:
    return manifest_ok(request)


def test_a_client_refuses_a_policy_beside_it():
    with pytest.raises(TypeError):
        asyncio.run(resolve_image("r.example.edu/x:1", policy=RegistryPolicy(), oci=OciClient()))


async def test_the_resolver_closes_its_shared_client_when_it_stops(serve):
    registry = await serve("127.0.0.2", answer_manifest)
    resolver = Resolver(None, Index(), Settings(insecure_registries=["127.0.0.2"]))  # type: ignore[arg-type]
    running = asyncio.create_task(resolver.run())
    while resolver.oci is None:
        await asyncio.sleep(0.01)
    client = resolver.oci
    assert client.policy.insecure_registries == ("127.0.0.2",)
    assert (await resolve_image(f"{registry.host}/x:1", oci=client)).digest == DIGEST
    session = client._session
    assert session is not None and not session.closed
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert session.closed and resolver.oci is None
