"""The operator's in-memory picture of the cluster, fed by watch events.

Everything here can be rebuilt from the API server (watch events replay the world on
start), so an operator restart loses nothing: the last good digests live in each
CourseImage's status and the published set in each hub's allowlist ConfigMap.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .desired.courses import CourseRecord, HubRecord
from .desired.status import Publication, Resolution, Retention


@dataclass
class Index:
    courses: dict[tuple[str, str], CourseRecord] = field(default_factory=dict)
    hubs: dict[tuple[str, str], HubRecord] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    resolutions: dict[tuple[str, str], Resolution] = field(default_factory=dict)
    # course key -> hub ref -> how that hub treats the course
    publications: dict[tuple[str, str], dict[str, Publication]] = field(default_factory=dict)
    retention: dict[tuple[str, str], Retention] = field(default_factory=dict)
    # raw objects as last seen (for Events, owner references and status writes)
    raw_courses: dict[tuple[str, str], dict] = field(default_factory=dict)
    raw_hubs: dict[tuple[str, str], dict] = field(default_factory=dict)
    # hub key -> event set whenever something it may care about changed
    hub_wakeups: dict[tuple[str, str], asyncio.Event] = field(default_factory=dict)
    # one status writer at a time per course
    course_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    # bumped on any course change; the ECR retention loop waits on it
    courses_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # hub key -> monotonic deadline: hubs that have not published yet in this process. Course
    # statuses that such a hub may concern wait for it (until the deadline), so that an operator
    # restart does not flap every course to Published=False/NoHub and back.
    hubs_starting: dict[tuple[str, str], float] = field(default_factory=dict)

    def hub_starting_for(self, course_key: tuple[str, str]) -> bool:
        import time

        now = time.monotonic()
        for key, deadline in list(self.hubs_starting.items()):
            hub = self.hubs.get(key)
            if hub is None or hub.deleting or now > deadline:
                continue
            mode = hub.spec.courses.namespaces if hub.spec.courses else "Same"
            if mode != "Same" or hub.namespace == course_key[0]:
                return True
        return False

    def wake_hub(self, key: tuple[str, str]) -> None:
        self.hub_wakeups.setdefault(key, asyncio.Event()).set()

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

    def course_lock(self, key: tuple[str, str]) -> asyncio.Lock:
        return self.course_locks.setdefault(key, asyncio.Lock())

    def publications_for(self, key: tuple[str, str]) -> list[Publication]:
        return list(self.publications.get(key, {}).values())
