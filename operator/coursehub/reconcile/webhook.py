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

import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger(__name__)

MAX_BODY = 5 * 1024 * 1024  # GitHub caps payloads at 25 MB; pushes are far smaller
PATH = "/hooks/git"


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass(frozen=True)
class Push:
    provider: str  # github | gitlab
    repositories: tuple[str, ...]  # the repository's URLs as the payload names them (http and ssh)
    ref: str  # refs/heads/main, refs/tags/v1
    after: str | None  # the pushed commit (informational: the poll decides)


def verify(headers: dict[str, str], body: bytes, secret: bytes) -> str:
    """The provider whose signature `body` carries, or Refused (401 none, 403 wrong)."""
    h = {k.lower(): v for k, v in headers.items()}
    if not secret:
        raise Refused(403, "no webhook secret configured: webhooks are off")
    sig = h.get("x-hub-signature-256")
    if sig is not None:
        want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig.strip().encode(), want.encode()):
            raise Refused(403, "X-Hub-Signature-256 does not match the body")
        return "github"
    token = h.get("x-gitlab-token")
    if token is not None:
        if not hmac.compare_digest(token.encode(), secret):
            raise Refused(403, "X-Gitlab-Token is wrong")
        return "gitlab"
    raise Refused(401, "no X-Hub-Signature-256 (GitHub) or X-Gitlab-Token (GitLab) header")


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
    if provider == "github":
        repo = doc.get("repository") or {}
        urls = [repo.get(k) for k in ("clone_url", "ssh_url", "git_url", "html_url", "url")]
    else:
        repo = doc.get("project") or doc.get("repository") or {}
        urls = [repo.get(k) for k in ("git_http_url", "git_ssh_url", "web_url", "http_url", "url")]
    found = tuple(u for u in urls if isinstance(u, str) and u)
    if not found:
        raise Refused(400, "a push payload needs the repository's URL")
    after = doc.get("after") if isinstance(doc.get("after"), str) else None
    return Push(provider, found, doc["ref"], after)


def repo_key(url: str) -> str:
    """One name for a repository however it is written: host (lower case) and path, without
    scheme, user, port, '.git' and trailing '/' (https://Git.x/a/b.git = ssh://git@git.x/a/b)."""
    if "://" not in url and ":" in url and "@" in url.split(":", 1)[0]:  # scp-like git@host:a/b
        user_host, _, path = url.partition(":")
        host = user_host.split("@", 1)[1]
    else:
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return f"{host.lower()}/{path}"


def ref_matches(pushed: str, followed: str) -> bool:
    """Whether a push to `pushed` (refs/heads/x or refs/tags/x) moves the followed ref (x or full)."""
    if followed.startswith("refs/"):
        return pushed == followed
    return pushed in (f"refs/heads/{followed}", f"refs/tags/{followed}")


class WebhookServer:
    """aiohttp app on settings.webhook_port; `on_push(push)` returns how many courses it woke."""

    def __init__(self, secret: bytes, on_push: Callable[[Push], int], port: int, host: str = "0.0.0.0"):
        self.secret = secret
        self.on_push = on_push
        self.port = port
        self.host = host
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
            provider = verify(headers, body, self.secret)
            push = parse(provider, headers, body)
        except Refused as e:
            self.refused += 1
            # Never the body: it is whatever anyone sent.
            log.warning("webhook from %s refused (%d): %s (%d bytes)", peer, e.status, e.why, len(body))
            return web.Response(status=e.status, text=e.why + "\n")
        if push is None:
            return web.Response(status=204)
        woken = self.on_push(push)
        log.info(
            "webhook (%s) push to %s of %s: %d course(s) poll now",
            provider,
            push.ref,
            push.repositories[0],
            woken,
        )
        return web.json_response({"courses": woken}, status=202)

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
