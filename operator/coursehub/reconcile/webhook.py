"""Push webhooks (GitHub and GitLab) on the operator's Service: a signed push makes the operator
poll that repository now instead of at its next interval.

A webhook never says what to build: the commit is what `git ls-remote` of the course's ref says
when the operator polls (so a replayed or forged-but-signed payload cannot pick a commit). The
request must carry a valid signature: GitHub's `X-Hub-Signature-256` (HMAC-SHA256 of the body with
the shared secret) or GitLab's `X-Gitlab-Token` (the secret itself, compared in constant time).
A request without one gets 401, a wrong one 403; both are logged with the peer and the size,
never the body.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from aiohttp import web

from ..desired.webhook_auth import (
    OwnSecretRef,
    Refused,
    authorize,
    own_secret,
    own_secret_refs,
    payload_repositories,
    provider_of,
    repo_key,
    repository_urls,
)
from ..kube import SECRETS, Kube, KubeError, NotFound
from ..state import Index, Key

log = logging.getLogger(__name__)

MAX_BODY = 5 * 1024 * 1024  # GitHub caps payloads at 25 MB; pushes are far smaller
PATH = "/hooks/git"


@dataclass(frozen=True)
class Push:
    provider: str  # github | gitlab
    repositories: tuple[str, ...]  # the repository's URLs as the payload names them (http and ssh)
    ref: str  # refs/heads/main, refs/tags/v1
    after: str | None  # the pushed commit (informational: the poll decides)


def parse(provider: str, headers: dict[str, str], body: bytes) -> Push | None:
    """The push a verified request reports (None: another event, e.g. GitHub's ping)."""
    h = {k.lower(): v for k, v in headers.items()}
    event = h.get("x-github-event") if provider == "github" else h.get("x-gitlab-event")
    if provider == "github" and event != "push":
        return None
    if provider == "gitlab" and event not in ("Push Hook", "Tag Push Hook"):
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ref"), str):
        raise Refused(400, "a push payload needs 'ref'")
    found = repository_urls(doc, provider)
    if not found:
        raise Refused(400, "a push payload needs the repository's URL")
    after = doc.get("after") if isinstance(doc.get("after"), str) else None
    return Push(provider, found, doc["ref"], after)


def ref_matches(pushed: str, followed: str) -> bool:
    """Whether a push to `pushed` (refs/heads/x or refs/tags/x) moves the followed ref (x or full)."""
    if followed.startswith("refs/"):
        return pushed == followed
    return pushed in (f"refs/heads/{followed}", f"refs/tags/{followed}")


class CourseWebhookSecrets:
    """I/O: the CourseImages' own webhook secrets (spec.build.git.webhookSecretRef), read one by
    one with `get` (the right the operator already has for git.secretRef), kept in memory only,
    for TTL seconds: anyone can send requests naming a repository, and each must not cost an API
    read; a rotated secret is used within TTL seconds. Every read reports the course's problem
    (or its absence) to `report`, which Built shows (reconcile/build.py)."""

    TTL = 10.0

    def __init__(
        self,
        kube: Kube,
        index: Index,
        report: Callable[[Key, tuple[str, str] | None], None],
        ttl: float = TTL,
    ):
        self.kube = kube
        self.index = index
        self.report = report
        self.ttl = ttl
        # (namespace, Secret, key) -> (read at, {key: value} or None when not found, read error)
        self.cache: dict[tuple[str, str, str], tuple[float, dict[str, bytes] | None, str | None]] = {}

    async def _read(self, namespace: str, name: str, key: str) -> tuple[dict[str, bytes] | None, str | None]:
        now = time.monotonic()
        hit = self.cache.get((namespace, name, key))
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1], hit[2]
        data: dict[str, bytes] | None = None
        error = None
        try:
            raw = (await self.kube.get(SECRETS, name, namespace)).get("data") or {}
            data = {}
            if key in raw:  # only the referenced value is kept
                with contextlib.suppress(binascii.Error, ValueError):  # not base64: as if absent
                    data[key] = base64.b64decode(raw[key])
        except NotFound:
            data = None
        except (KubeError, OSError) as e:
            error = f"HTTP {e.status}" if isinstance(e, KubeError) else type(e).__name__
        self.cache[(namespace, name, key)] = (now, data, error)
        if len(self.cache) > 4096:  # Secrets of courses long gone
            self.cache = {k: v for k, v in self.cache.items() if now - v[0] < self.ttl}
        return data, error

    async def check(self, ref: OwnSecretRef) -> bytes | None:
        """The course's own secret, or None (its problem reported)."""
        data, error = await self._read(ref.course[0], ref.name, ref.key)
        value, problem = own_secret(ref, ref.course[0], data, error)
        self.report(ref.course, problem)
        return value

    async def check_course(self, key: Key) -> None:
        """Read (or re-read after TTL) one course's own secret, for its Built condition."""
        course = self.index.courses.get(key)
        for ref in own_secret_refs([course] if course is not None else []):
            await self.check(ref)

    async def for_repositories(self, repositories: Iterable[str]) -> dict[str, tuple[bytes, ...]]:
        """Per repository some CourseImage with its own secret builds: the readable own secrets
        (an empty tuple: it has some, none readable, so its pushes are refused)."""
        out: dict[str, list[bytes]] = {}
        for ref in own_secret_refs(list(self.index.courses.values()), repositories):
            value = await self.check(ref)
            out.setdefault(ref.repository, [])
            if value is not None:
                out[ref.repository].append(value)
        return {repo: tuple(values) for repo, values in out.items()}


# The own secrets of the CourseImages building the repositories a request names.
OwnSecrets = Callable[[frozenset[str]], Awaitable[Mapping[str, tuple[bytes, ...]]]]
# Accepted requests say who answered (the leader's identity): only our server sends it.
ANSWERED_BY = "X-Coursehub-Operator"


class WebhookServer:
    """aiohttp app on settings.webhook_port; `on_push(push)` returns how many courses it woke.
    `own_secrets(repositories)` (I/O: CourseWebhookSecrets.for_repositories) gives, per
    repository with CourseImages that have their own secret, those secrets (desired/webhook_auth)."""

    def __init__(
        self,
        secret: bytes,
        on_push: Callable[[Push], int],
        port: int,
        host: str = "0.0.0.0",
        own_secrets: OwnSecrets | None = None,
        identity: str = "",
    ):
        self.secret = secret
        self.on_push = on_push
        self.port = port
        self.host = host
        self.own_secrets = own_secrets
        self.identity = identity
        self.runner: web.AppRunner | None = None
        self.refused = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.Response(status=413, text="payload too large\n")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413, text="payload too large\n")
        headers = dict(request.headers)
        try:
            provider_of(headers)  # 401 before the body is even parsed
            # Unverified: only to choose the secrets it must be signed with (bounded by MAX_BODY).
            repos = payload_repositories(headers, body)
            own = await self.own_secrets(repos) if self.own_secrets is not None and repos else {}
            verdict = authorize(headers, body, repos, own, self.secret)
            push = parse(verdict.provider, headers, body)
        except Refused as e:
            self.refused += 1
            # Never the body: it is whatever anyone sent.
            log.warning("webhook from %s refused (%d): %s (%d bytes)", peer, e.status, e.why, len(body))
            return web.Response(status=e.status, text=e.why + "\n")
        answered = {ANSWERED_BY: self.identity} if self.identity else {}
        if push is None:
            return web.Response(status=204, headers=answered)
        # Only the repositories the signature speaks for (a payload may name others).
        push = replace(
            push, repositories=tuple(u for u in push.repositories if repo_key(u) in verdict.repositories)
        )
        woken = self.on_push(push) if push.repositories else 0
        log.info(
            "webhook (%s) push to %s of %s: %d course(s) poll now",
            verdict.provider,
            push.ref,
            push.repositories[0] if push.repositories else "-",
            woken,
        )
        return web.json_response({"courses": woken}, status=202, headers=answered)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
