"""A hub's pre-puller DaemonSets as last seen, so a round need not LIST them.

At 1,000 courses a hub's pullers are ~1.3 MB of JSON: one LIST per round cost 0.3-0.5 s of
every round at the end of a burst (each rollout wakes one), most of it the API server's.
Between LISTs the bodies come from the watch (handlers.puller_event) and from our own
applies' answers; a LIST still comes when the view is older than `max_age` (a watch that
reconnected may have missed a deletion) and after a failed round.

Ordering rules (the watch is ordered per object, our answers and LISTs are not ordered
against it):
- a body of a lower generation than the one kept never replaces it (a watch event from
  before our apply arriving after its answer);
- at the same generation a watch event replaces what is kept (it is at least as new), an
  apply's answer does not (the event of that apply follows);
- a body of another uid (the object was re-created) replaces what is kept; a deletion
  removes only the uid it names;
- a LIST keeps, for each name, what the watch or an apply brought after the LIST began.
"""

from __future__ import annotations

from collections.abc import Iterable


def _meta(body: dict) -> dict:
    return body.get("metadata") or {}


def replaces(kept: dict | None, seen: dict, *, from_watch: bool) -> bool:
    """Whether `seen` (a watch event's body or an apply's answer) replaces the body kept."""
    if kept is None or _meta(kept).get("uid") != _meta(seen).get("uid"):
        return True
    kept_gen, seen_gen = _meta(kept).get("generation", 0), _meta(seen).get("generation", 0)
    return seen_gen > kept_gen or (seen_gen == kept_gen and from_watch)


def _slim(body: dict) -> dict:
    """The body without managedFields (a third of a DaemonSet's size, never read here)."""
    meta = _meta(body)
    if "managedFields" not in meta:
        return body
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


class PullerCache:
    def __init__(self, max_age: float):
        self.max_age = max_age
        self.bodies: dict[str, dict] = {}
        self.listed_at: float | None = None  # monotonic time of the LIST the view rests on
        self._notes = 0  # notes so far (watch events, answers, our deletions)
        self._touched: dict[str, int] = {}  # name -> number of the last note about it

    def needs_list(self, now: float) -> bool:
        return self.listed_at is None or now - self.listed_at >= self.max_age

    def forget(self) -> None:
        """The next round lists again (after a failed round: what it saw may be wrong)."""
        self.listed_at = None

    def list_begins(self) -> int:
        """A mark to pass to `listed` with the LIST's answer."""
        return self._notes

    def listed(self, items: Iterable[dict], mark: int, now: float) -> None:
        """A LIST's answer; what was noted since `mark` (after the LIST began) stays."""
        fresh = {name: body for name, body in self.bodies.items() if self._touched.get(name, 0) > mark}
        for body in items:
            name = _meta(body)["name"]
            if self._touched.get(name, 0) <= mark:
                fresh[name] = _slim(body)
        self.bodies = fresh
        self.listed_at = now

    def note(self, body: dict, *, from_watch: bool) -> None:
        """A body seen on the watch, or an apply's answer."""
        name = _meta(body)["name"]
        self._touch(name)
        if replaces(self.bodies.get(name), body, from_watch=from_watch):
            self.bodies[name] = _slim(body)

    def note_deleted(self, body: dict) -> None:
        name = _meta(body)["name"]
        self._touch(name)
        kept = self.bodies.get(name)
        if kept is not None and _meta(kept).get("uid") == _meta(body).get("uid"):
            del self.bodies[name]

    def dropped(self, name: str) -> None:
        """We deleted it."""
        self._touch(name)
        self.bodies.pop(name, None)

    def _touch(self, name: str) -> None:
        self._notes += 1
        self._touched[name] = self._notes
