"""When a hub round runs (desired.hub_round.round_delay) and which course Events are posted."""

from __future__ import annotations

import bisect

import pytest

from coursehub.conditions import events_for
from coursehub.desired.hub_round import changes_still_coming, round_delay

D, MAX = 0.5, 3.0


def delay(now, *, busy, first, last, debounce=D, debounce_max=MAX):
    return round_delay(
        now=now, busy=busy, first_change=first, last_change=last, debounce=debounce, debounce_max=debounce_max
    )


def test_a_change_that_finds_the_hub_at_rest_is_written_at_once():
    assert delay(100.0, busy=False, first=100.0, last=100.0) == 0.0


def test_changes_that_came_during_a_round_wait_for_a_quiet_window():
    # The round started at 10; changes came while it ran; it is now 10.2, the last change at 10.2.
    assert delay(10.2, busy=True, first=10.0, last=10.2) == pytest.approx(D)
    # another change at 10.5 pushes the window on
    assert delay(10.5, busy=True, first=10.0, last=10.5) == pytest.approx(D)
    # quiet for the whole window: run
    assert delay(11.0, busy=True, first=10.0, last=10.5) == 0.0


def test_a_stream_of_changes_is_still_written_every_debounce_max():
    # changes every 0.1 s forever: the window never closes, the cap does
    assert delay(12.8, busy=True, first=10.0, last=12.8) == pytest.approx(0.2)
    assert delay(13.0, busy=True, first=10.0, last=13.0) == 0.0


def test_debounce_off_never_waits():
    assert delay(10.2, busy=True, first=10.0, last=10.2, debounce=0, debounce_max=0) == 0.0


def test_a_round_after_the_quiet_window_ends_the_burst_but_one_at_the_cap_does_not():
    # changes stopped at 10.5; the quiet window passed at 11.0: the burst is over, pullers are
    # written in this round (not held for one more window)
    assert delay(11.0, busy=True, first=10.0, last=10.5) == 0.0
    assert not changes_still_coming(now=11.0, last_change=10.5, debounce=D)
    # a stream of changes hit the cap at 13.0 with the last change at 12.9: still a burst
    assert delay(13.0, busy=True, first=10.0, last=12.9) == 0.0
    assert changes_still_coming(now=13.0, last_change=12.9, debounce=D)
    # debounce off: never a burst
    assert not changes_still_coming(now=13.0, last_change=13.0, debounce=0)


def rounds_for(changes: list[float], round_time: float) -> int:
    """The loop of reconcile.hub.HubReconciler, driven by round_delay alone: how many rounds
    a stream of change times (sorted) takes when each round lasts `round_time`."""
    rounds, seen, now, busy, last_start = 0, 0, 0.0, False, 0.0
    while seen < len(changes):
        if not busy:
            now = max(now, changes[seen])  # woken by the next change
        first, last = (last_start if busy else now), now
        while (d := delay(now, busy=busy, first=first, last=last)) > 0:
            nxt = bisect.bisect_right(changes, now)
            if nxt < len(changes) and changes[nxt] <= now + d:
                now = last = changes[nxt]  # another change restarts the quiet window
            else:
                now += d
        last_start = now
        seen = bisect.bisect_right(changes, now)  # the round sees every change so far
        now += round_time
        rounds += 1
        busy = seen < len(changes) and changes[seen] <= now
    return rounds


def test_a_burst_becomes_a_handful_of_rounds():
    burst = [i * 0.008 for i in range(1000)]  # 1,000 changes over 8 s
    assert rounds_for(burst, round_time=0.3) <= 6


def test_lone_changes_get_a_round_each_at_once():
    lone = [i * 2.0 for i in range(10)]  # one change every 2 s, rounds of 0.1 s
    assert rounds_for(lone, round_time=0.1) == 10


def c(t, st, reason):
    return {"type": t, "status": st, "reason": reason, "message": "m"}


def test_a_course_s_first_ready_posts_no_event_but_a_recovery_does():
    first = events_for([c("Ready", "Unknown", "Pending")], [c("Ready", "True", "Ready")], first_ready=False)
    assert first == []
    assert events_for(None, [c("Ready", "True", "Ready")], first_ready=False) == []
    recovered = events_for(
        [c("Ready", "False", "ImageNotFound")], [c("Ready", "True", "Ready")], first_ready=False
    )
    assert [(t, r) for t, r, _ in recovered] == [("Normal", "Ready")]
    # failures are still Warnings
    failed = events_for(
        [c("Ready", "True", "Ready")], [c("Ready", "False", "ImageNotFound")], first_ready=False
    )
    assert [(t, r) for t, r, _ in failed] == [("Warning", "ImageNotFound")]
    # the default (hubs) keeps the first Ready Event
    assert events_for(None, [c("Ready", "True", "Ready")]) != []


def test_ready_after_pulling_is_no_event_but_after_a_failure_it_is():
    pulled = events_for([c("Ready", "False", "Pulling")], [c("Ready", "True", "Ready")], first_ready=False)
    assert pulled == []
    publishing = events_for(
        [c("Ready", "Unknown", "Publishing")], [c("Ready", "True", "Ready")], first_ready=False
    )
    assert publishing == []
    fixed = events_for([c("Ready", "False", "NoHub")], [c("Ready", "True", "Ready")], first_ready=False)
    assert [(t, r) for t, r, _ in fixed] == [("Normal", "Ready")]


def test_a_wake_during_a_round_keeps_the_hub_due_for_the_courses_it_did_not_see():
    import time

    from coursehub.state import Index

    idx = Index()
    hub = ("jupyter", "learn")
    idx.wake_hub(hub)  # course a resolved: the round is due
    assert idx.hold_for_due_hub(("jupyter", "a"), [hub], 5.0) > 0
    started = time.monotonic()
    time.sleep(0.01)
    idx.wake_hub(hub)  # course b resolved while the round ran
    idx.hub_round_done(hub, started)
    assert idx.status_dirty == {("jupyter", "a")}  # a is looked at again now
    assert idx.hubs_due[hub] > started  # and b's status still waits for the next round
    assert idx.hold_for_due_hub(("jupyter", "b"), [hub], 5.0) > 0
    idx.hub_round_done(hub, time.monotonic())
    assert hub not in idx.hubs_due


def test_a_course_waits_only_for_hubs_that_have_not_published_what_is_known():
    from dataclasses import replace

    from test_hub_round import course, hub

    from coursehub.desired.hub_round import publication_current
    from coursehub.desired.status import Publication

    h = hub()
    new = course("a")  # resolved to pinned("a")
    assert not publication_current(h, new, None)  # never seen by this hub
    pub = Publication(h.ref, h.spec.domain, "Published", "published", new.resolved_image)
    assert publication_current(h, new, pub)
    moved = replace(new, resolved_image=new.resolved_image.replace("@sha256:0", "@sha256:1"))
    assert not publication_current(h, moved, pub)  # the digest moved: its round is due
    waiting = Publication(h.ref, h.spec.domain, "NotResolved", "waiting")
    assert not publication_current(h, new, waiting)
    assert publication_current(h, replace(new, resolved_image=None), waiting)
    after_pull = hub(prePull={"publishAfterPull": True})
    assert publication_current(after_pull, moved, pub)  # offers the old digest until pulled


def test_a_new_course_s_status_waits_for_its_first_resolution_but_not_for_ever():
    # test_write_counts under load: a hub round that ran before a new course resolved reported
    # it "NotResolved", and writing that first cost the course a third status write.
    from coursehub.reconcile.course_status import CourseStatusWriter
    from coursehub.state import Index

    writer = CourseStatusWriter(kube=None, index=Index(), hold_max=5.0)  # type: ignore[arg-type]
    key = ("jupyter", "c1")
    assert writer.first_resolution_wait(key, resolved=False, now=100.0) == pytest.approx(5.0)
    assert writer.first_resolution_wait(key, resolved=False, now=103.0) == pytest.approx(2.0)
    # a slow registry: "Resolving" is written once the hold is over
    assert writer.first_resolution_wait(key, resolved=False, now=105.0) == 0.0
    # resolved: written at once, and forgotten
    assert writer.first_resolution_wait(key, resolved=True, now=106.0) == 0.0
    assert key not in writer.unresolved_since


def test_a_course_in_a_burst_s_pull_is_written_once_pulled_not_published_then_pulled():
    import asyncio
    import time

    from test_hub_round import RESOLVED, course, hub

    from coursehub.desired.status import Publication
    from coursehub.reconcile.course_status import CourseStatusWriter
    from coursehub.state import Index

    def write_with(c, prepull: str, burst_pull: bool) -> None:
        h = hub()
        idx = Index()
        idx.hubs[h.key] = h
        idx.courses[c.key] = c
        idx.raw_courses[c.key] = {
            "kind": "CourseImage",
            "metadata": {"name": c.name, "namespace": c.namespace},
        }
        idx.resolutions[c.key] = RESOLVED
        idx.set_publications(
            h.ref,
            {c.key: Publication(h.ref, h.spec.domain, "Published", "published", c.resolved_image, prepull)},
        )
        if burst_pull:
            idx.set_burst_pull(h.key, time.monotonic() + 10)
        # kube=None: a status write would fail on it, so returning quietly means it was held.
        writer = CourseStatusWriter(kube=None, index=idx, hold_max=6.0)  # type: ignore[arg-type]
        asyncio.run(writer.write(c.key))

    write_with(course("c1"), "Pulling", burst_pull=True)  # held for the pull
    # the controls: each of these is written at once
    for c, prepull, burst_pull in [
        (course("c1"), "Pulling", False),  # a lone change: "Published" first
        (course("c1"), "PrePulled", True),  # already pulled
        (course("c1", prePull=False), "Pulling", True),  # not pre-pulled at all
    ]:
        with pytest.raises(AttributeError):
            write_with(c, prepull, burst_pull)


@pytest.mark.parametrize("news", [True, False])
def test_news_during_a_round_starts_the_next_at_once_but_a_change_waits_for_the_quiet_window(news):
    """A puller that rolled out (or a Helm release that finished) while a round ran is reported
    by the next round at once; a course change then waits for the burst's quiet window."""
    import asyncio
    import time

    from coursehub.reconcile.hub import HubReconciler
    from coursehub.settings import Settings
    from coursehub.state import Index

    async def coalesce() -> tuple[bool, bool]:
        idx = Index()
        hub = ("jupyter", "learn")
        reconciler = HubReconciler.__new__(HubReconciler)  # only what _coalesce reads
        reconciler.index, reconciler.key = idx, hub
        reconciler.settings = Settings(debounce=30, debounce_max=60)
        wake = idx.hub_wakeups.setdefault(hub, asyncio.Event())
        idx.hubs_changed[hub] = time.monotonic() - 60  # the burst's last change, a minute ago
        idx.wake_hub(hub, change=not news)  # arrives while a round runs
        task = asyncio.ensure_future(reconciler._coalesce(wake, True, first_change=time.monotonic() - 1))
        done, _ = await asyncio.wait([task], timeout=2)
        task.cancel()
        return bool(done), task.result() if done else True

    finished, coming = asyncio.run(coalesce())
    # news: no wait at all (not a bound on speed: the window it skips is 30 s); a change: waits
    assert finished is news
    assert coming is not news
