"""Retry pauses: one exponential formula for every retry loop of the operator."""

from __future__ import annotations

import asyncio

__all__ = ["delay", "sleep"]

# 2**62 already exceeds any cap; a larger exponent would overflow float() after days of retries.
_MAX_EXPONENT = 62


def delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry number `attempt` (0, 1, 2, ...): base * 2**attempt, at most cap."""
    return min(cap, base * 2 ** min(max(attempt, 0), _MAX_EXPONENT))


async def sleep(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> None:
    await asyncio.sleep(delay(attempt, base=base, cap=cap))
