"""The adaptive re-resolve interval (desired.recheck) and the resolver's due list."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from coursehub.api.courseimage import CourseImageSpec
from coursehub.desired.courses import CourseRecord
from coursehub.desired.recheck import DAY, recheck_interval, seconds_since
from coursehub.desired.status import Resolution
from coursehub.reconcile.resolver import Resolver
from coursehub.settings import Settings
from coursehub.state import Index


def interval(age):
    return recheck_interval(age, shortest=300, longest=3600)


def test_a_digest_that_just_moved_is_checked_at_the_shortest_interval():
    assert interval(0) == 300
    assert interval(None) == 300  # not resolved yet, or failed: retried often


def test_a_digest_unchanged_for_a_day_is_checked_at_the_longest_interval():
    assert interval(DAY) == 3600
    assert interval(30 * DAY) == 3600


def test_the_interval_grows_with_the_age_and_stays_within_its_bounds():
    ages = [0, 60, 3600, 6 * 3600, 12 * 3600, DAY, 2 * DAY]
    got = [interval(a) for a in ages]
    assert got == sorted(got)
    assert all(300 <= g <= 3600 for g in got)
    assert interval(DAY / 2) == pytest.approx(1950)


def test_a_longest_below_the_shortest_means_the_shortest():
    assert recheck_interval(DAY, shortest=7200, longest=3600) == 7200
    assert recheck_interval(0, shortest=7200, longest=3600) == 7200


def test_seconds_since_reads_status_resolved_at():
    now = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    assert seconds_since("2026-11-30T11:00:00Z", now) == 3600
    assert seconds_since("2026-11-30T13:00:00Z", now) == 0  # clock skew: never negative
    assert seconds_since(None, now) is None
    assert seconds_since("yesterday", now) is None
    assert seconds_since("2026-11-30T11:00:00", now) is None  # no zone: unknown, not guessed


def course(name: str) -> CourseRecord:
    spec = CourseImageSpec(course=name, image=f"r.example.edu/x:{name}")
    return CourseRecord("jupyter", name, "u", "2026-01-01T00:00:00Z", 1, (), spec)


def test_the_resolver_queues_only_the_courses_that_are_due():
    idx = Index()
    for n in ("a", "b", "c"):
        idx.courses[("jupyter", n)] = course(n)
    r = Resolver(None, idx, Settings(resolve_interval=300, resolve_interval_max=3600))  # type: ignore[arg-type]
    r.next_due = {("jupyter", "a"): 100.0, ("jupyter", "b"): 500.0, ("jupyter", "gone"): 1.0}
    # "c" was never scheduled: due at once; "gone" is no course any more: forgotten
    assert r.schedule_due(200.0) == 2
    assert r.queued == {("jupyter", "a"), ("jupyter", "c")}
    assert ("jupyter", "gone") not in r.next_due


def test_the_next_check_of_an_old_digest_is_later_than_that_of_a_new_one():
    r = Resolver(None, Index(), Settings(resolve_interval=300, resolve_interval_max=3600))  # type: ignore[arg-type]
    old = Resolution(
        1, True, "Resolved", "", "sha256:" + "a" * 64, "r/x@sha256:" + "a" * 64, "2020-01-01T00:00:00Z"
    )
    new = Resolution(1, True, "Resolved", "", "sha256:" + "a" * 64, "r/x@sha256:" + "a" * 64, now_text())
    failed = Resolution(1, False, "ImageNotFound", "no")
    assert r.due_in(old) == 3600
    assert r.due_in(new) == pytest.approx(300, abs=1)
    assert r.due_in(failed) == 300


def now_text() -> str:
    from coursehub.api.common import now_rfc3339

    return now_rfc3339()


def test_a_new_course_wakes_its_hubs_with_its_first_resolution_even_a_failed_one():
    """The handler leaves a new, unresolved course's hubs asleep; the first resolution wakes
    them, so their round sees it resolved (or failed) instead of running twice."""
    import asyncio

    from coursehub.api.jupyterhubdeployment import JupyterHubDeploymentSpec
    from coursehub.desired.courses import HubRecord

    spec = CourseImageSpec(course="c1", image="r.example.edu/x:1").model_copy(
        update={"image": "ex.com:99999/x:1"}  # refused by the grammar: no request is made
    )
    c = CourseRecord("jupyter", "c1", "u", "2026-01-01T00:00:00Z", 1, (), spec)
    hub_spec = JupyterHubDeploymentSpec.model_validate(
        {
            "chart": {
                "repository": "https://hub.jupyter.org/helm-chart/",
                "name": "jupyterhub",
                "version": "4.4.1",
            },
            "domain": "learn.example.edu",
            "database": {"type": "sqlite-memory"},
            "auth": {"mode": "tmp", "allowUngated": True},
        }
    )
    idx = Index()
    idx.courses[c.key] = c
    idx.hubs[("jupyter", "learn")] = HubRecord("jupyter", "learn", "uid", "2026-01-01T00:00:00Z", 1, hub_spec)
    r = Resolver(None, idx, Settings())  # type: ignore[arg-type]
    asyncio.run(r.resolve_one(c.key))
    assert ("jupyter", "learn") in idx.hubs_due  # woken by the first result
    idx.hubs_due.clear()
    asyncio.run(r.resolve_one(c.key))
    assert not idx.hubs_due  # the same failure again: nothing new for the hub
    assert r.next_due[c.key] > 0
