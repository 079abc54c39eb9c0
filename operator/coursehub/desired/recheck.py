"""Pure: when to look at a course's tag again (the adaptive re-resolve interval).

A tag whose digest just moved is likely to move again soon (a course team fixing its build);
one unchanged for a day rarely does. So the interval grows with how long the digest has been
unchanged: `shortest` right after a change, `longest` once it has been unchanged for
`settle` seconds, linearly in between. A failed resolution is retried at `shortest`.
"""

from __future__ import annotations

from datetime import datetime

DAY = 86400.0


def recheck_interval(
    unchanged_for: float | None, *, shortest: float, longest: float, settle: float = DAY
) -> float:
    """Seconds until the next resolution of a tag whose digest has been the same for
    `unchanged_for` seconds (None: not resolved, or it failed)."""
    longest = max(longest, shortest)  # a shortest above the longest wins: never below it
    if unchanged_for is None or unchanged_for <= 0 or settle <= 0:
        return shortest
    share = min(unchanged_for, settle) / settle
    return shortest + (longest - shortest) * share


def seconds_since(rfc3339: str | None, now: datetime) -> float | None:
    """Seconds from an RFC 3339 time (status.resolvedAt) to `now`; None if absent or unreadable."""
    if not rfc3339:
        return None
    try:
        then = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    except ValueError:
        return None
    if then.tzinfo is None:
        return None
    return max(0.0, (now - then).total_seconds())
