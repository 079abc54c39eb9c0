"""Polling git refs (reconcile/build.py) against a real git server (git http-backend): one poll per
repository shared by its courses, a newer commit superseding a queued build, internal hosts
refused unless allowed, a webhook making a repository due at once."""

from __future__ import annotations

import pytest

from coursehub.api.courseimage import CourseImageSpec
from coursehub.desired.courses import CourseRecord
from coursehub.reconcile.build import BuildController, GitProblem
from coursehub.reconcile.webhook import Push
from coursehub.settings import Settings
from coursehub.state import Index


def add_course(
    idx: Index, name: str, url: str, ref: str = "main", slug: str | None = None
) -> tuple[str, str]:
    spec = CourseImageSpec.model_validate(
        {
            "course": slug or name,
            "image": f"registry.example.edu/courses:{slug or name}",
            "build": {"git": {"url": url, "ref": ref}, "pollSeconds": 60},
        }
    )
    key = ("learn", name)
    idx.courses[key] = CourseRecord("learn", name, f"uid-{name}", "", 1, (), spec)
    idx.raw_courses[key] = {"metadata": {"name": name, "namespace": "learn", "annotations": {}}}
    return key


def controller(idx: Index, **settings) -> BuildController:
    s = Settings(build_image="registry.example.edu/buildah:1", **settings)
    return BuildController(kube=None, index=idx, settings=s)  # type: ignore[arg-type]  # no API calls here


@pytest.fixture
def repo(git_server, request):
    name = request.node.name.replace("[", "-").replace("]", "")[:40]
    git_server.create(name, {"Dockerfile": "FROM scratch\n"})
    return name


async def test_one_poll_per_repository_shared_by_its_courses(git_server, repo):
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    url = git_server.url(repo)
    a = add_course(idx, "a", url)
    b = add_course(idx, "b", url.removesuffix(".git"))  # the same repository, written differently
    bc.sync(a)
    bc.sync(b)
    assert len(bc.groups) == 1
    (gkey,) = bc.groups
    before = git_server.requests[repo]
    await bc._poll(gkey)
    head = git_server.head(repo)
    assert idx.builds[a].latest == idx.builds[b].latest == head
    assert {k: r.commit for k, r in bc.queued.items()} == {a: head, b: head}
    one_poll = git_server.requests[repo] - before
    assert one_poll >= 1
    # Polled again with nothing new: no new build, the same cost as one poll for both courses.
    await bc._poll(gkey)
    assert git_server.requests[repo] - before == 2 * one_poll
    assert len(bc.queued) == 2


async def test_two_quick_commits_make_one_build_of_the_newest(git_server, repo):
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    k = add_course(idx, "c", git_server.url(repo))
    bc.sync(k)
    (gkey,) = bc.groups
    git_server.commit(repo, {"a": "1"})
    await bc._poll(gkey)
    newest = git_server.commit(repo, {"a": "2"})
    await bc._poll(gkey)
    assert {kk: r.commit for kk, r in bc.queued.items()} == {k: newest}
    assert idx.builds[k].current is not None and idx.builds[k].current.commit == newest


async def test_internal_hosts_are_refused_unless_allowed(git_server, repo):
    idx = Index()
    bc = controller(idx)  # no git_private_hosts
    k = add_course(idx, "d", git_server.url(repo))
    bc.sync(k)
    (gkey,) = bc.groups
    requests_before = git_server.requests[repo]
    await bc._poll(gkey)
    st = idx.builds[k]
    assert st.problem is not None and st.problem[0] == "SourceForbidden"
    assert "COURSEHUB_GIT_PRIVATE_HOSTS" in st.problem[1]
    assert git_server.requests[repo] == requests_before  # not even one request went there
    assert not bc.queued


async def test_a_missing_ref_names_the_field(git_server, repo):
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    k = add_course(idx, "e", git_server.url(repo), ref="nope")
    bc.sync(k)
    g = next(iter(bc.groups.values()))
    with pytest.raises(GitProblem, match=r"spec\.build\.git\.ref"):
        await bc.ls_remote(g)


async def test_a_private_repository_without_a_token_is_unauthorized(git_server, repo):
    git_server.token_for(repo, "t0ken-value")
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    k = add_course(idx, "f", git_server.url(repo))
    bc.sync(k)
    g = next(iter(bc.groups.values()))
    with pytest.raises(GitProblem) as e:
        await bc.ls_remote(g)
    assert e.value.reason == "SourceUnauthorized" and "t0ken-value" not in e.value.message


async def test_a_push_webhook_makes_the_repository_due(git_server, repo):
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    k = add_course(idx, "g", git_server.url(repo))
    bc.sync(k)
    g = next(iter(bc.groups.values()))
    g.due = 1e12
    assert bc.on_push(Push("github", (git_server.url(repo),), "refs/heads/other", None)) == 0
    assert g.due == 1e12
    assert bc.on_push(Push("github", (git_server.url(repo),), "refs/heads/main", None)) == 1
    assert g.due == 0.0


async def test_builds_off_without_an_image_say_so(git_server, repo):
    idx = Index()
    bc = BuildController(kube=None, index=idx, settings=Settings())  # type: ignore[arg-type]
    k = add_course(idx, "h", git_server.url(repo))
    bc.sync(k)
    assert idx.builds[k].problem is not None and idx.builds[k].problem[0] == "BuildsDisabled"


def test_rebuild_annotation_queues_the_known_commit(git_server, repo):
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    k = add_course(idx, "i", git_server.url(repo))
    bc.sync(k)
    from dataclasses import replace

    from coursehub.desired.build import BuildRecordData

    head = git_server.head(repo)
    idx.builds[k] = replace(
        idx.builds[k], latest=head, history=(BuildRecordData(commit=head, result="Failed", job="j1"),)
    )
    idx.raw_courses[k]["metadata"]["annotations"] = {"coursehub.dev/rebuild": "1"}
    bc.sync(k)
    assert bc.queued[k].commit == head
    bc.queued.clear()
    bc.sync(k)  # the same value again: nothing
    assert not bc.queued


async def test_a_rebuild_asked_before_the_first_poll_builds_the_known_commit_again(git_server, repo):
    from coursehub.desired.build import BuildRecordData, build_status

    head = git_server.head(repo)
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    k = add_course(idx, "j", git_server.url(repo))
    # After an operator restart: status says the head was built; the annotation is new.
    done = BuildRecordData(commit=head, result="Succeeded", job="j0", digest="sha256:" + "a" * 64)
    from coursehub.desired.build import BuildState

    idx.raw_courses[k]["status"] = {"build": build_status(BuildState(ref="main").finished(done))}
    idx.raw_courses[k]["metadata"]["annotations"] = {"coursehub.dev/rebuild": "again"}
    bc.sync(k)
    assert not bc.queued  # the commit is not known before the poll
    (gkey,) = bc.groups
    await bc._poll(gkey)
    assert bc.queued[k].commit == head and bc.queued[k].why.startswith("rebuild")


async def test_an_operator_without_git_says_so_and_blames_no_course_field(
    git_server, repo, tmp_path, monkeypatch
):
    idx = Index()
    bc = controller(idx, git_private_hosts=(git_server.host,))
    k = add_course(idx, "n", git_server.url(repo))
    bc.sync(k)
    (gkey,) = bc.groups
    monkeypatch.setenv("PATH", str(tmp_path))  # an operator image without git (the chart's was)
    await bc._poll(gkey)
    problem = idx.builds[k].problem
    assert problem is not None and problem[0] == "GitNotFound"
    assert "git and openssh-client" in problem[1] and "spec.build" not in problem[1]
    assert not bc.queued
