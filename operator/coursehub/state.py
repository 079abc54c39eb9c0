"""The operator's in-memory picture of the cluster, fed by watch events and by its own loops.

Everything here can be rebuilt from the API server (watch events replay the world on
start), so an operator restart loses nothing: the last good digests live in each
CourseImage's status and the published set in each hub's allowlist ConfigMap.

The resolver, the hub rounds and the ECR retention loop record their results here and call
`course_changed`; the one CourseImage status writer (reconcile.course_status) turns them
into one status write per course carrying everything known.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .desired.build import BuildState
from .desired.courses import CourseRecord, HubRecord
from .desired.status import Publication, Resolution, RetentionResult

Key = tuple[str, str]


@dataclass
class Index:
    courses: dict[Key, CourseRecord] = field(default_factory=dict)
    hubs: dict[Key, HubRecord] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    resolutions: dict[Key, Resolution] = field(default_factory=dict)
    # course key -> hub ref -> how that hub treats the course
    publications: dict[Key, dict[str, Publication]] = field(default_factory=dict)
    retention: dict[Key, RetentionResult] = field(default_factory=dict)
    # course key -> its builds (spec.build; reconcile/build.py keeps them, the status writer reports)
    builds: dict[Key, BuildState] = field(default_factory=dict)
    # raw objects as last seen (for Events, owner references and status writes)
    raw_courses: dict[Key, dict] = field(default_factory=dict)
    raw_hubs: dict[Key, dict] = field(default_factory=dict)
    # hub key -> event set whenever something it may care about changed
    hub_wakeups: dict[Key, asyncio.Event] = field(default_factory=dict)
    # courses whose status may differ from what was last written, and the writer's wake-up
    status_dirty: set[Key] = field(default_factory=set)
    status_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # bumped on any course change; the ECR retention loop waits on it
    courses_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # hub key -> monotonic deadline: hubs that have not published yet in this process. Course
    # statuses that such a hub may concern wait for it (until the deadline), so that an operator
    # restart does not flap every course to Published=False/NoHub and back.
    hubs_starting: dict[Key, float] = field(default_factory=dict)
    # hub key -> monotonic time since when a round is due (woken, not yet run to its end), and
    # the courses whose status waits for that round: a status then carries the resolution and
    # the publication together (one write instead of two).
    hubs_due: dict[Key, float] = field(default_factory=dict)
    held_for: dict[Key, set[Key]] = field(default_factory=dict)
    # hub key -> monotonic time of its latest wake-up (a wake during a round keeps it due)
    hubs_woken: dict[Key, float] = field(default_factory=dict)
    # hub key -> monotonic time of its latest wake-up by a change (what the quiet window of a
    # burst counts from; a puller's rollout or a finished Helm release is news, not a change)
    hubs_changed: dict[Key, float] = field(default_factory=dict)
    # hubs running a round now: courses held for one wait until that round
    # ends however long it takes (a 1,000-course round may outlast the hold; its end marks them)
    hubs_running: set[Key] = field(default_factory=set)
    # hub key -> monotonic deadline: a burst's pre-pull in progress. The statuses of courses
    # that hub publishes and still pulls wait for the pull until then (desired.hub_round.
    # burst_pull_deadline): one write instead of "Published", then "PrePulled".
    burst_pulls: dict[Key, float] = field(default_factory=dict)
    burst_held: dict[Key, set[Key]] = field(default_factory=dict)  # hub -> the courses it holds
    # The start-up barrier. kopf delivers the watch's initial list one object at a time, and a
    # hub's event may come before its courses': a first round then would write an allowlist
    # missing courses published before the restart. Hub rounds wait for `listed`, set once every
    # object the API server listed at start has been through its watch handler.
    listed: asyncio.Event = field(default_factory=asyncio.Event)
    seen_at_start: set[tuple[str, str, str]] | None = field(default_factory=set)
    unseen_at_start: set[tuple[str, str, str]] | None = None

    def saw(self, kind: str, key: Key) -> None:
        """A watch event for (kind, key) went through its handler."""
        if self.seen_at_start is not None:
            self.seen_at_start.add((kind, *key))
        elif self.unseen_at_start is not None:
            self.unseen_at_start.discard((kind, *key))
            if not self.unseen_at_start:
                self.mark_listed()

    def expect_at_start(self, listed: set[tuple[str, str, str]]) -> None:
        """What the API server listed at start; `listed` is set once each has been seen."""
        self.unseen_at_start = listed - (self.seen_at_start or set())
        self.seen_at_start = None
        if not self.unseen_at_start:
            self.mark_listed()

    def mark_listed(self) -> None:
        self.seen_at_start = self.unseen_at_start = None
        self.listed.set()

    def hub_starting_for(self, course_key: Key) -> float:
        """Seconds until the last hub that may publish this course and has not had its first
        round yet stops holding the course's status back (0: none holds it)."""
        now = time.monotonic()
        wait = 0.0
        for key, deadline in list(self.hubs_starting.items()):
            hub = self.hubs.get(key)
            if hub is None or hub.deleting or now > deadline:
                continue
            mode = hub.spec.courses.namespaces if hub.spec.courses else "Same"
            if mode != "Same" or hub.namespace == course_key[0]:
                wait = max(wait, deadline - now)
        return wait

    def course_changed(self, *keys: Key) -> None:
        """What is known about these courses changed: the status writer looks at them."""
        if keys:
            self.status_dirty.update(keys)
            self.status_wakeup.set()

    def set_publications(self, hub_ref: str, pubs: dict[Key, Publication]) -> list[Key]:
        """Record how hub `hub_ref` treats each course (absent: not at all); returns the courses
        whose publication changed."""
        changed = []
        for key in set(self.publications) | set(pubs):
            per_hub = self.publications.setdefault(key, {})
            new = pubs.get(key)
            if per_hub.get(hub_ref) != new:
                if new is None:
                    per_hub.pop(hub_ref, None)
                else:
                    per_hub[hub_ref] = new
                changed.append(key)
            if not per_hub:
                self.publications.pop(key, None)
        self.course_changed(*changed)
        return changed

    def wake_hub(self, key: Key, *, change: bool = True) -> None:
        """Wake a hub's loop. `change=False`: news of work the hub started (a puller rolled
        out, a Helm release finished), which its next round reports at once: it never waits
        out the quiet window of a burst (HubReconciler._coalesce)."""
        now = time.monotonic()
        self.hubs_due.setdefault(key, now)
        self.hubs_woken[key] = now
        if change:
            self.hubs_changed[key] = now
        self.hub_wakeups.setdefault(key, asyncio.Event()).set()

    def hub_round_started(self, key: Key) -> None:
        self.hubs_running.add(key)

    def hub_round_ended(self, key: Key) -> None:
        """The round stopped, done or failed: holds count from the round's due time again."""
        self.hubs_running.discard(key)

    def hub_round_done(self, key: Key, started: float) -> None:
        """A round that started at `started` ran to its end: courses held for it are looked at
        again (the writer holds those this round did not cover yet for the next one)."""
        self.hub_round_ended(key)
        woken = self.hubs_woken.get(key)
        if woken is not None and woken > started:
            # Woken again while it ran (a burst): the next round is due from then.
            self.hubs_due[key] = woken
        elif self.hubs_due.get(key, started + 1) <= started:
            self.hubs_due.pop(key, None)
        self.course_changed(*self.held_for.pop(key, ()))

    def hold_for_due_hub(self, course_key: Key, hubs: list[Key], max_wait: float) -> float:
        """Hold a course's status for the due rounds of `hubs` (the hubs that select it), at most
        `max_wait` seconds after a round became due, or for as long as one of them runs a round
        (its end marks the course again); returns when to look again (0: not held)."""
        now = time.monotonic()
        wait = 0.0
        for key in hubs:
            due = self.hubs_due.get(key)
            if due is None:
                continue
            if key in self.hubs_running:
                # A round in progress ends (API calls time out) and marks what it held; the
                # timer only re-checks. Without this, a round longer than max_wait released
                # its courses first without their publication: one more write each.
                self.held_for.setdefault(key, set()).add(course_key)
                wait = max(wait, max_wait)
            elif now - due < max_wait:
                self.held_for.setdefault(key, set()).add(course_key)
                wait = max(wait, max_wait - (now - due))
        return wait

    def set_burst_pull(self, hub: Key, deadline: float | None) -> None:
        """Record until when hub's burst pull holds course statuses (None: it does not). A held
        course is marked when its publication changes (Pulling -> PrePulled) or by the writer's
        timer at the deadline it was held for; a deadline that comes sooner (the puller was
        written) or goes away marks the courses held for it now, so the writer looks again."""
        previous = self.burst_pulls.get(hub)
        if deadline is None:
            self.burst_pulls.pop(hub, None)
        else:
            self.burst_pulls[hub] = deadline
        if previous is not None and (deadline is None or deadline < previous):
            self.course_changed(*self.burst_held.pop(hub, ()))

    def hold_for_burst_pull(self, course_key: Key, hubs: list[Key], now: float | None = None) -> float:
        """Seconds a course's status waits for the burst pulls of `hubs` (the hubs that publish
        it and still pull it; 0: not held)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for h in hubs:
            deadline = self.burst_pulls.get(h)
            if deadline is not None and deadline > now:
                self.burst_held.setdefault(h, set()).add(course_key)
                wait = max(wait, deadline - now)
        return wait

    def wake_all_hubs(self) -> None:
        for key in self.hubs:
            self.wake_hub(key)
        self.courses_changed.set()

    def wake_hubs_for_namespace(self, namespace: str) -> None:
        """A course in `namespace` changed: hubs that might select it must look again."""
        for key, hub in self.hubs.items():
            mode = hub.spec.courses.namespaces if hub.spec.courses else "Same"
            if mode != "Same" or hub.namespace == namespace:
                self.wake_hub(key)
        self.courses_changed.set()

    def publications_for(self, key: Key) -> list[Publication]:
        return list(self.publications.get(key, {}).values())
