"""Conditional re-checks: the known digest goes out as If-None-Match, and a 304 from the real
registry (Debian's docker-registry, distribution) confirms it without a manifest. A recording
proxy on loopback stands between the resolver and the registry to show what was asked and
what came back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from coursehub.registry import RegistryPolicy, ResolveError, resolve_image

LOOPBACK = RegistryPolicy(insecure_registries=("127.0.0.1",))
PASSED = ("Accept", "If-None-Match", "Authorization")
RETURNED = ("Docker-Content-Digest", "Content-Type", "ETag")


class Recorder:
    def __init__(self, upstream: str | None):
        self.upstream = upstream
        self.seen: list[tuple[str, str | None, int]] = []  # (method, If-None-Match, status)
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.upstream is None:  # a registry that says "not modified" to anything
            self.seen.append((request.method, request.headers.get("If-None-Match"), 304))
            return web.Response(status=304)
        headers = {h: request.headers[h] for h in PASSED if h in request.headers}
        async with (
            aiohttp.ClientSession() as s,
            s.request(request.method, self.upstream + request.path_qs, headers=headers) as r,
        ):
            body = await r.read()
            self.seen.append((request.method, request.headers.get("If-None-Match"), r.status))
            out = {h: r.headers[h] for h in RETURNED if h in r.headers}
            return web.Response(status=r.status, body=body or None, headers=out)


@pytest.fixture
async def recorder() -> AsyncIterator:
    runners = []

    async def start(upstream: str | None) -> Recorder:
        rec = Recorder(upstream)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", rec.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rec.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runners.append(runner)
        return rec

    yield start
    for r in runners:
        await r.cleanup()


async def test_an_unchanged_tag_is_confirmed_by_a_304(oci_registry, unique_repo, recorder):
    rec = await recorder(oci_registry.url)
    digest = oci_registry.push_image(unique_repo, "v1", "first build")
    ref = f"127.0.0.1:{rec.port}/{unique_repo}:v1"

    first = await resolve_image(ref, policy=LOOPBACK)
    assert first.digest == digest
    assert rec.seen[-1] == ("HEAD", None, 200)  # nothing known yet: no condition

    again = await resolve_image(ref, policy=LOOPBACK, known_digest=digest)
    assert again.digest == digest
    assert rec.seen[-1] == ("HEAD", f'"{digest}"', 304)  # the registry said: not modified

    moved = oci_registry.push_image(unique_repo, "v1", "second build")
    after = await resolve_image(ref, policy=LOOPBACK, known_digest=digest)
    assert after.digest == moved != digest
    assert rec.seen[-1] == ("HEAD", f'"{digest}"', 200)  # moved: a full answer with the new digest


async def test_a_304_without_a_known_digest_is_no_digest(recorder):
    rec = await recorder(None)
    with pytest.raises(ResolveError) as caught:
        await resolve_image(f"127.0.0.1:{rec.port}/courses/x:v1", policy=LOOPBACK)
    assert caught.value.reason == "RegistryError"
    assert all(inm is None for _m, inm, _s in rec.seen)


async def test_a_known_digest_that_is_not_a_digest_is_never_sent(recorder):
    rec = await recorder(None)
    with pytest.raises(ResolveError):
        await resolve_image(f"127.0.0.1:{rec.port}/courses/x:v1", policy=LOOPBACK, known_digest="v1\r\nX: y")
    assert all(inm is None for _m, inm, _s in rec.seen)
