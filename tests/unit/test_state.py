"""The index's bookkeeping between the loops and the one CourseImage status writer."""

from __future__ import annotations

import time

from coursehub.desired.status import Publication
from coursehub.state import Index

HUB, OTHER = ("jupyter", "learn"), ("jupyter", "other")
C1, C2 = ("jupyter", "c1"), ("jupyter", "c2")


def pub(state="Published") -> Publication:
    return Publication("jupyter/learn", "nb.example.edu", state, "published")


def test_publications_mark_only_the_courses_that_changed():
    idx = Index()
    assert sorted(idx.set_publications("jupyter/learn", {C1: pub(), C2: pub()})) == [C1, C2]
    idx.status_dirty.clear()
    assert idx.set_publications("jupyter/learn", {C1: pub(), C2: pub("WaitingForPull")}) == [C2]
    assert idx.status_dirty == {C2} and idx.status_wakeup.is_set()
    # A hub that stops selecting a course drops its publication; the last one drops the key.
    assert idx.set_publications("jupyter/learn", {C1: pub()}) == [C2]
    assert C2 not in idx.publications


def test_a_status_waits_for_the_due_round_of_a_hub_that_selects_the_course_then_is_marked():
    idx = Index()
    idx.wake_hub(HUB)
    assert idx.hold_for_due_hub(C1, [HUB], max_wait=5) > 0
    assert idx.hold_for_due_hub(C2, [OTHER], max_wait=5) == 0  # that hub has nothing due
    idx.status_dirty.clear()
    idx.hub_round_done(HUB, started=time.monotonic())
    assert idx.status_dirty == {C1} and HUB not in idx.hubs_due
    assert idx.hold_for_due_hub(C1, [HUB], max_wait=5) == 0


def test_a_round_that_started_before_the_wake_keeps_the_hub_due():
    idx = Index()
    started = time.monotonic()
    time.sleep(0.01)
    idx.wake_hub(HUB)
    idx.hub_round_done(HUB, started)
    assert HUB in idx.hubs_due


def test_a_hold_never_outlasts_its_bound():
    idx = Index()
    idx.wake_hub(HUB)
    idx.hubs_due[HUB] -= 10  # due for 10 s: that round is not coming soon
    assert idx.hold_for_due_hub(C1, [HUB], max_wait=5) == 0


def test_a_round_in_progress_holds_past_the_bound_and_its_end_marks_the_course():
    # bench_scale, 1,000 courses: a round that wrote a 700-image DaemonSet took 7.5 s; with a
    # 6 s bound 481 courses were written "Publishing" first and again once published.
    idx = Index()
    idx.wake_hub(HUB)
    idx.hubs_due[HUB] -= 10
    started = time.monotonic()
    idx.hub_round_started(HUB)
    assert idx.hold_for_due_hub(C1, [HUB], max_wait=5) == 5  # a re-check, not a release
    idx.status_dirty.clear()
    idx.hub_round_done(HUB, started)
    assert idx.status_dirty == {C1} and HUB not in idx.hubs_running


def test_a_failed_round_stops_holding_beyond_the_bound():
    idx = Index()
    idx.wake_hub(HUB)
    idx.hubs_due[HUB] -= 10
    idx.hub_round_started(HUB)
    idx.hub_round_ended(HUB)  # it raised: no hub_round_done
    assert idx.hold_for_due_hub(C1, [HUB], max_wait=5) == 0


# -- the start-up barrier: hub rounds wait until the watches replayed the start-up list ------


def test_listed_waits_for_every_object_listed_at_start():
    idx = Index()
    idx.saw("CourseImage", ("ns", "early"))  # a watch event before the list answered
    idx.expect_at_start(
        {("CourseImage", "ns", "early"), ("CourseImage", "ns", "late"), ("JupyterHubDeployment", "ns", "h")}
    )
    assert not idx.listed.is_set()
    idx.saw("JupyterHubDeployment", ("ns", "h"))
    assert not idx.listed.is_set(), "a course listed at start has not come through its watch yet"
    idx.saw("CourseImage", ("ns", "late"))
    assert idx.listed.is_set()
    assert idx.seen_at_start is None and idx.unseen_at_start is None  # nothing kept afterwards


def test_listed_at_once_when_the_watches_were_first():
    idx = Index()
    idx.saw("CourseImage", ("ns", "a"))
    idx.expect_at_start({("CourseImage", "ns", "a")})
    assert idx.listed.is_set()
    idx.expect_at_start(set())  # an empty cluster
    assert idx.listed.is_set()


def test_a_kind_does_not_stand_in_for_another():
    idx = Index()
    idx.expect_at_start({("CourseImage", "ns", "x")})
    idx.saw("JupyterHubDeployment", ("ns", "x"))
    assert not idx.listed.is_set()
    idx.mark_listed()  # the timeout's way out
    assert idx.listed.is_set()


def test_a_burst_pull_holds_statuses_until_its_deadline_and_no_longer():
    # bench_scale, 1,000 courses: each course's status was written twice, "Published" and then
    # "PrePulled" a few seconds later, about a third of the API server's work in the burst.
    idx = Index()
    idx.set_burst_pull(HUB, 110.0)
    assert idx.hold_for_burst_pull(C1, [HUB], now=100.0) == 10.0
    assert idx.hold_for_burst_pull(C2, [OTHER], now=100.0) == 0.0  # that hub is not pulling a burst
    assert idx.hold_for_burst_pull(C2, [HUB], now=110.0) == 0.0  # bounded: written as it is then
    idx.set_burst_pull(HUB, None)  # pulled
    assert HUB not in idx.burst_pulls
    assert idx.hold_for_burst_pull(C1, [HUB], now=100.0) == 0.0


def test_a_sooner_deadline_or_none_marks_the_courses_held_for_the_later_one():
    # The puller is written: its rollout gets rollout_wait from then, sooner than the burst's
    # own bound the courses were held for; without a mark they would wait for their old timers.
    idx = Index()
    idx.set_burst_pull(HUB, 116.0)
    assert idx.hold_for_burst_pull(C1, [HUB], now=101.0) == 15.0
    idx.status_dirty.clear()
    idx.set_burst_pull(HUB, 116.0)  # the same deadline: nothing to look at again
    assert idx.status_dirty == set()
    idx.set_burst_pull(HUB, 111.0)
    assert idx.status_dirty == {C1}
    assert idx.hold_for_burst_pull(C1, [HUB], now=105.0) == 6.0  # held again, for the new deadline
    idx.status_dirty.clear()
    idx.set_burst_pull(HUB, None)  # the hub stopped (or pulled): the course is looked at now
    assert idx.status_dirty == {C1}
