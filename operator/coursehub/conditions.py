"""Pure helpers for metav1.Condition lists: set, merge, summarise."""

from __future__ import annotations

from dataclasses import dataclass

from .api.common import now_rfc3339


@dataclass(frozen=True)
class Cond:
    """A condition as computed (no timestamps yet)."""

    type: str
    status: bool | None  # None is Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def merge(
    old: list[dict] | None, new: list[Cond], generation: int | None, now: str | None = None
) -> list[dict]:
    """The new condition list; lastTransitionTime moves only when a status flips.

    Exactly the types in `new`: each kind has one status writer, which computes every
    condition, so a type it no longer computes is dropped.
    """
    now = now or now_rfc3339()
    by_type = {c["type"]: c for c in (old or [])}
    out: dict[str, dict] = {}
    for c in new:
        prev = by_type.get(c.type)
        ltt = prev["lastTransitionTime"] if prev and prev.get("status") == c.status_text else now
        entry = {
            "type": c.type,
            "status": c.status_text,
            "reason": c.reason,
            "message": c.message,
            "lastTransitionTime": ltt,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out[c.type] = entry
    return sorted(out.values(), key=lambda c: (c["type"] != "Ready", c["type"]))


def same_ignoring_time(a: list[dict] | None, b: list[dict] | None) -> bool:
    def strip(cs):
        return sorted(
            ({k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or []),
            key=lambda c: c["type"],
        )

    return strip(a) == strip(b)


def summary(conds: list[Cond], *, required: tuple[str, ...], ready_message: str) -> Cond:
    """Ready is True when every required condition is True; else the first failing one explains it."""
    by_type = {c.type: c for c in conds}
    for t in required:
        c = by_type.get(t)
        if c is None:
            return Cond("Ready", None, "Pending", f"{t} not evaluated yet")
        if c.status is not True:
            return Cond("Ready", False if c.status is False else None, c.reason, f"{t}: {c.message}")
    return Cond("Ready", True, "Ready", ready_message)


def find(conditions: list[dict] | None, type_: str) -> dict | None:
    for c in conditions or []:
        if c.get("type") == type_:
            return c
    return None


# Reasons that settle by themselves: not worth an Event, never a Warning.
TRANSIENT_REASONS = frozenset(
    {
        "Pending",
        "Resolving",
        "Pulling",
        "NotPublished",
        "Publishing",
        "NotResolved",
        "WaitingForPull",
        "Progressing",
        # Builds (desired/build.py): queued and running builds settle by themselves.
        "BuildQueued",
        "Building",
        "WaitingForBuild",
    }
)


def events_for(old: list | None, new: list, *, first_ready: bool = True) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events a status change deserves.

    One when Ready flips, and one when another condition turns False for a reason someone
    must act on (or changes that reason); sub-conditions turning True are covered by Ready.
    `first_ready=False`: no Event when Ready turns True after nothing, Unknown or a transient
    False (still pulling, publishing), only when it recovers from a real failure: a burst of
    new objects posts no Event each.
    """
    before = {c["type"]: c for c in old or []}
    out = []
    for c in new:
        prev = before.get(c["type"]) or {}
        if prev.get("status") == c["status"] and prev.get("reason") == c["reason"]:
            continue
        transient = c["reason"] in TRANSIENT_REASONS
        if c["type"] == "Ready":
            if not first_ready and c["status"] == "True" and _never_ready_for_cause(prev):
                continue
            if prev.get("status") != c["status"] and not (transient and c["status"] != "True"):
                warn = c["status"] == "False"
                out.append(
                    ("Warning" if warn else "Normal", c["reason"], f"Ready={c['status']}: {c['message']}")
                )
        elif c["status"] == "False" and not transient:
            out.append(("Warning", c["reason"], f"{c['type']}=False: {c['message']}"))
    return out


def _never_ready_for_cause(prev: dict) -> bool:
    """Ready was absent, Unknown, or False only while things settle (a transient reason)."""
    status = prev.get("status")
    return status in (None, "Unknown") or (status == "False" and prev.get("reason") in TRANSIENT_REASONS)
