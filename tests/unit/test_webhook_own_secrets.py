"""A push webhook secret per course repository (spec.build.git.webhookSecretRef, issue 14):
a repository some CourseImage with its own secret builds is verified only against those
secrets, never the operator-wide one; other repositories keep the operator-wide secret; an own
secret that cannot be read refuses that repository's pushes and Built names the field and the fix."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from coursehub.api.courseimage import CourseImageSpec
from coursehub.desired import webhook_auth as wa
from coursehub.desired.build import BuildRecordData, BuildState, built_condition
from coursehub.desired.courses import CourseRecord
from coursehub.reconcile import webhook as w
from coursehub.reconcile.build import BuildController
from coursehub.settings import Settings
from coursehub.state import Index

OPERATOR = b"operator-wide-secret"
OWN_A = b"course-a-own-secret"
OWN_A2 = b"second-course-of-a-secret"
A = "https://git.example.edu/ol/course-a.git"
B = "https://git.example.edu/ol/course-b.git"  # no course with an own secret builds it
KEY_A, KEY_B = wa.repo_key(A), wa.repo_key(B)


def github(url: str = A, *extra: str) -> bytes:
    repo = {"clone_url": url, "ssh_url": url.replace("https://", "git@").replace("/ol/", ":ol/")}
    for i, u in enumerate(extra):
        repo[("html_url", "url")[i]] = u
    return json.dumps({"ref": "refs/heads/main", "after": "a" * 40, "repository": repo}).encode()


def gitlab(url: str = A) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "project": {"git_http_url": url}}).encode()


def signed(body: bytes, secret: bytes) -> dict[str, str]:
    return {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest(),
    }


def token(secret: bytes) -> dict[str, str]:
    return {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret.decode()}


def decide(headers: dict[str, str], body: bytes, own: dict[str, tuple[bytes, ...]]) -> wa.Verdict:
    return wa.authorize(headers, body, wa.payload_repositories(headers, body), own, OPERATOR)


OWN = {KEY_A: (OWN_A,)}


@pytest.mark.parametrize("fmt", ["github", "gitlab"])
def test_the_operator_secret_no_longer_signs_for_a_repository_with_its_own(fmt):
    body, head = (github(), signed) if fmt == "github" else (gitlab(), lambda _b, s: token(s))
    # Before: the operator-wide secret was enough for every repository.
    assert decide(head(body, OPERATOR), body, {}).repositories == {KEY_A}
    with pytest.raises(wa.Refused) as e:
        decide(head(body, OPERATOR), body, OWN)
    assert e.value.status == 403
    # Its own secret is accepted, and speaks for that repository.
    v = decide(head(body, OWN_A), body, OWN)
    assert (v.provider, v.repositories) == (fmt, {KEY_A})
    # Any course building that repository may have its own: each of them signs for it.
    assert decide(head(body, OWN_A2), body, {KEY_A: (OWN_A, OWN_A2)}).repositories == {KEY_A}


@pytest.mark.parametrize("fmt", ["github", "gitlab"])
def test_other_repositories_keep_the_operator_secret_and_own_secrets_do_not_sign_for_them(fmt):
    body, head = (github(B), signed) if fmt == "github" else (gitlab(B), lambda _b, s: token(s))
    assert decide(head(body, OPERATOR), body, OWN).repositories == {KEY_B}
    with pytest.raises(wa.Refused) as e:  # course A's author cannot forge course B's pushes
        decide(head(body, OWN_A), body, OWN)
    assert e.value.status == 403


def test_a_payload_naming_two_repositories_wakes_only_those_its_signer_speaks_for():
    # Anyone writes anything in a payload: A's author names B's repository as well.
    body = github(A, B)
    assert wa.payload_repositories(signed(body, OWN_A), body) == {KEY_A, KEY_B}
    assert decide(signed(body, OWN_A), body, OWN).repositories == {KEY_A}
    assert decide(signed(body, OPERATOR), body, OWN).repositories == {KEY_B}
    b_own = {KEY_A: (OWN_A,), KEY_B: (b"b-own",)}
    assert decide(signed(body, b"b-own"), body, b_own).repositories == {KEY_B}


def test_an_unreadable_own_secret_refuses_the_repository_fail_closed():
    body = github()
    # A course names an own secret that cannot be read: none accepted, not even the operator's.
    for secret in (OPERATOR, OWN_A, b""):
        with pytest.raises(wa.Refused) as e:
            decide(signed(body, secret), body, {KEY_A: ()})
        assert e.value.status == 403
    with pytest.raises(wa.Refused) as e:
        decide(signed(body, OPERATOR), body, {KEY_A: ()})
    assert "no webhook secret for this repository" in e.value.why
    # Without the operator-wide secret a repository with its own still takes pushes.
    assert wa.authorize(signed(body, OWN_A), body, {KEY_A}, OWN, b"").repositories == {KEY_A}
    with pytest.raises(wa.Refused):
        wa.authorize(signed(github(B), b""), github(B), {KEY_B}, OWN, b"")


def test_no_signature_header_is_401_before_anything_is_parsed():
    with pytest.raises(wa.Refused) as e:
        wa.payload_repositories({"X-GitHub-Event": "push"}, b"not json")
    assert e.value.status == 401
    # A body that is not JSON names no repository: only the operator-wide secret can sign it.
    assert wa.payload_repositories(signed(b"not json", OPERATOR), b"not json") == frozenset()
    assert decide(signed(b"not json", OPERATOR), b"not json", OWN).repositories == frozenset()


def course(name: str, url: str, own: dict | None = None, deleting: bool = False) -> CourseRecord:
    git: dict = {"url": url}
    if own is not None:
        git["webhookSecretRef"] = own
    spec = CourseImageSpec.model_validate(
        {"course": name, "image": f"registry.example.edu/courses:{name}", "build": {"git": git}}
    )
    return CourseRecord("learn", name, f"uid-{name}", "", 1, (), spec, deleting=deleting)


def test_own_secret_refs_of_the_courses_building_a_repository():
    courses = [
        course("a", A, {"name": "a-hook"}),
        course("a2", A.removesuffix(".git"), {"name": "a2-hook", "key": "gh"}),
        course("b", B),
        course("gone", A, {"name": "gone-hook"}, deleting=True),
    ]
    refs = wa.own_secret_refs(courses, {KEY_A, KEY_B})
    assert [(r.course, r.repository, r.name, r.key) for r in refs] == [
        (("learn", "a"), KEY_A, "a-hook", "webhook-secret"),
        (("learn", "a2"), KEY_A, "a2-hook", "gh"),
    ]
    assert wa.own_secret_refs(courses, {KEY_B}) == []


def test_own_secret_problems_name_the_field_and_the_fix():
    ref = wa.OwnSecretRef(("learn", "a"), KEY_A, "a-hook", "webhook-secret")
    assert wa.own_secret(ref, "learn", {"webhook-secret": b"s3cret\n"}) == (b"s3cret", None)
    _, missing = wa.own_secret(ref, "learn", None)
    assert missing is not None and missing[0] == "WebhookSecretNotFound"
    assert "spec.build.git.webhookSecretRef: Secret a-hook not found in learn" in missing[1]
    assert "Create it with key 'webhook-secret'" in missing[1] and "refused" in missing[1]
    _, empty = wa.own_secret(ref, "learn", {"other": b"x"})
    assert empty is not None and empty[0] == "WebhookSecretInvalid" and "no key 'webhook-secret'" in empty[1]
    _, blank = wa.own_secret(ref, "learn", {"webhook-secret": b" \n"})
    assert blank is not None and blank[0] == "WebhookSecretInvalid"
    _, denied = wa.own_secret(ref, "learn", None, "HTTP 403")
    assert denied is not None and denied[0] == "WebhookSecretUnreadable" and "HTTP 403" in denied[1]


def test_built_says_the_pushes_are_refused_and_keeps_what_learners_get():
    good = BuildRecordData(commit="c" * 40, result="Succeeded", digest="sha256:" + "d" * 64, tag="a-c")
    problem = ("WebhookSecretNotFound", "spec.build.git.webhookSecretRef: Secret a-hook not found in learn")
    state = BuildState(ref="main", good=good, history=(good,), webhook_problem=problem)
    c = built_condition(state)
    assert (c.status, c.reason) == (False, "WebhookSecretNotFound")
    assert "webhookSecretRef" in c.message and "learners get cccccccccccc" in c.message
    # A build running says Building; a git problem before any build comes first.
    running = BuildRecordData(commit="e" * 40, result="Running", job="j")
    assert (
        built_condition(BuildState(ref="main", current=running, webhook_problem=problem)).reason == "Building"
    )
    first = BuildState(ref="main", problem=("RefNotFound", "no main"), webhook_problem=problem)
    assert built_condition(first).reason == "RefNotFound"
    assert built_condition(BuildState(ref="main", good=good, history=(good,))).reason == "Built"


def test_the_controller_clears_a_problem_when_the_reference_goes():
    idx = Index()
    bc = BuildController(
        kube=None,  # type: ignore[arg-type]  # no API call: sync only
        index=idx,
        settings=Settings(build_image="registry.example.edu/buildah:1", webhook_port=9443),
    )
    key = ("learn", "a")
    idx.courses[key] = course("a", A, {"name": "a-hook"})
    idx.raw_courses[key] = {"metadata": {"name": "a", "namespace": "learn"}}
    bc.sync(key)
    assert bc.webhook_ref_of[key] == ("a-hook", "webhook-secret")
    problem = ("WebhookSecretNotFound", "spec.build.git.webhookSecretRef: ...")
    bc._webhook_problem(key, problem)
    assert idx.builds[key].webhook_problem == problem
    assert built_condition(idx.builds[key]).reason == "WebhookSecretNotFound"
    idx.courses[key] = course("a", A)  # the author removed webhookSecretRef
    bc.sync(key)
    assert idx.builds[key].webhook_problem is None and key not in bc.webhook_ref_of
    bc._webhook_problem(key, problem)  # a late read of the old reference changes nothing
    assert idx.builds[key].webhook_problem is None


async def test_the_endpoint_verifies_by_repository_and_says_who_answered(caplog):
    woken: list[w.Push] = []
    asked: list[frozenset[str]] = []

    def on_push(p: w.Push) -> int:
        woken.append(p)
        return 1

    async def own_secrets(repos: frozenset[str]) -> dict[str, tuple[bytes, ...]]:
        asked.append(repos)
        return {r: OWN[r] for r in repos if r in OWN}

    server = w.WebhookServer(OPERATOR, on_push, port=0, own_secrets=own_secrets, identity="op-leader-1")
    caplog.set_level(logging.DEBUG)
    async with TestClient(TestServer(server.app())) as client:
        body = github()
        forged = await client.post(w.PATH, data=body, headers=signed(body, OPERATOR))
        assert forged.status == 403 and w.ANSWERED_BY not in forged.headers
        assert woken == []
        good = await client.post(w.PATH, data=body, headers=signed(body, OWN_A))
        assert good.status == 202 and (await good.json()) == {"courses": 1}
        assert good.headers[w.ANSWERED_BY] == "op-leader-1"
        assert {wa.repo_key(u) for u in woken[-1].repositories} == {KEY_A}
        other = github(B)
        ok = await client.post(w.PATH, data=other, headers=signed(other, OPERATOR))
        assert ok.status == 202 and {wa.repo_key(u) for u in woken[-1].repositories} == {KEY_B}
        # Two repositories named, signed by A's own secret: B is not woken.
        both = github(A, B)
        r = await client.post(w.PATH, data=both, headers=signed(both, OWN_A))
        assert r.status == 202 and {wa.repo_key(u) for u in woken[-1].repositories} == {KEY_A}
        lab = gitlab()
        r = await client.post(w.PATH, data=lab, headers=token(OPERATOR))
        assert r.status == 403
        r = await client.post(w.PATH, data=lab, headers=token(OWN_A))
        assert r.status == 202
        # No signature: refused before the body is read for repositories.
        r = await client.post(w.PATH, data=body, headers={"X-GitHub-Event": "push"})
        assert r.status == 401
    assert frozenset({KEY_A}) in asked and all(a for a in asked)
    for secret in (OPERATOR, OWN_A):
        assert secret.decode() not in caplog.text
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 3 and not any("course-a" in m for m in refusals)  # never the body
    assert server.refused == 3
