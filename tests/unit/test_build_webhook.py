"""Push webhooks: signatures (GitHub HMAC, GitLab token), payload parsing, repository matching,
and the aiohttp endpoint refusing bad signatures without logging the body."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from coursehub.desired.webhook_auth import authorize
from coursehub.reconcile import webhook as w

SECRET = b"s3cret-webhook"
C1 = "a" * 40


def github_push(ref="refs/heads/main", url="https://github.com/ol/uai.git") -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "after": C1,
            "repository": {"clone_url": url, "ssh_url": "git@github.com:ol/uai.git"},
        }
    ).encode()


def gitlab_push(ref="refs/heads/main") -> bytes:
    return json.dumps(
        {
            "ref": ref,
            "checkout_sha": C1,
            "after": C1,
            "project": {"git_http_url": "https://gitlab.example.edu/ol/uai.git", "git_ssh_url": "x"},
        }
    ).encode()


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(headers: dict[str, str], body: bytes, secret: bytes) -> str:
    """The provider, checked against the operator-wide secret alone (no course has its own)."""
    return authorize(headers, body, (), {}, secret).provider


def test_github_signature():
    body = github_push()
    assert verify({"X-Hub-Signature-256": sign(body)}, body, SECRET) == "github"
    with pytest.raises(w.Refused) as e:
        verify({"X-Hub-Signature-256": sign(body, b"other")}, body, SECRET)
    assert e.value.status == 403
    with pytest.raises(w.Refused) as e:  # the body changed after signing
        verify({"X-Hub-Signature-256": sign(body)}, body + b" ", SECRET)
    assert e.value.status == 403


def test_gitlab_token():
    body = gitlab_push()
    assert verify({"X-Gitlab-Token": SECRET.decode()}, body, SECRET) == "gitlab"
    with pytest.raises(w.Refused) as e:
        verify({"X-Gitlab-Token": "wrong"}, body, SECRET)
    assert e.value.status == 403


def test_no_signature_is_401_and_no_secret_refuses_everything():
    with pytest.raises(w.Refused) as e:
        verify({}, b"{}", SECRET)
    assert e.value.status == 401
    with pytest.raises(w.Refused) as e:  # an unset secret must not make "" a valid token
        verify({"X-Gitlab-Token": ""}, b"{}", b"")
    assert e.value.status == 403


def test_parse_pushes():
    p = w.parse("github", {"X-GitHub-Event": "push"}, github_push())
    assert p is not None and p.ref == "refs/heads/main" and p.after == C1
    assert "https://github.com/ol/uai.git" in p.repositories
    assert w.parse("github", {"X-GitHub-Event": "ping"}, b"{}") is None
    g = w.parse("gitlab", {"X-Gitlab-Event": "Push Hook"}, gitlab_push())
    assert g is not None and g.repositories[0] == "https://gitlab.example.edu/ol/uai.git"
    with pytest.raises(w.Refused, match="not JSON"):
        w.parse("github", {"X-GitHub-Event": "push"}, b"nope")
    with pytest.raises(w.Refused, match="URL"):
        w.parse("github", {"X-GitHub-Event": "push"}, b'{"ref": "refs/heads/main"}')


def test_repository_names_and_refs_match_however_written():
    assert w.repo_key("https://GitHub.com/ol/uai.git") == w.repo_key("git@github.com:ol/uai.git")
    assert w.repo_key("ssh://git@github.com/ol/uai/") == "github.com/ol/uai"
    assert w.repo_key("https://github.com/ol/uai") != w.repo_key("https://github.com/ol/uai2")
    assert w.ref_matches("refs/heads/main", "main") and w.ref_matches("refs/tags/v1", "v1")
    assert w.ref_matches("refs/heads/main", "refs/heads/main")
    assert not w.ref_matches("refs/heads/main2", "main")


async def test_endpoint_refuses_bad_signatures_and_never_logs_the_body(caplog):
    pushes: list[w.Push] = []

    def on_push(p: w.Push) -> int:
        pushes.append(p)
        return 1

    server = w.WebhookServer(SECRET, on_push, port=0)
    async with TestClient(TestServer(server.app())) as client:
        body = github_push(url="https://github.com/ol/BODY-MARKER.git")
        caplog.set_level(logging.INFO, logger="coursehub.reconcile.webhook")
        bad = await client.post(
            w.PATH, data=body, headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body, b"x")}
        )
        assert bad.status == 403
        none = await client.post(w.PATH, data=body, headers={"X-GitHub-Event": "push"})
        assert none.status == 401
        assert pushes == []
        assert "BODY-MARKER" not in caplog.text and "refused" in caplog.text
        good = await client.post(
            w.PATH, data=body, headers={"X-GitHub-Event": "push", "X-Hub-Signature-256": sign(body)}
        )
        assert good.status == 202 and (await good.json()) == {"courses": 1}
        assert [p.ref for p in pushes] == ["refs/heads/main"]
        ping = await client.post(
            w.PATH, data=b"{}", headers={"X-GitHub-Event": "ping", "X-Hub-Signature-256": sign(b"{}")}
        )
        assert ping.status == 204
        big = await client.post(w.PATH, data=b"x" * (w.MAX_BODY + 1), headers={"X-Gitlab-Token": "x"})
        assert big.status == 413
    assert server.refused == 2
