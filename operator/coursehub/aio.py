"""Waiting with a timeout without losing a cancellation.

On Python 3.11 (the operator image's), `asyncio.wait_for` returns the inner result when the task
is cancelled in the same loop iteration as the inner awaitable finishes, and the cancellation is
lost: a reconciler loop cancelled just as a watch event woke it ran on for ever, and whoever
awaited its end (a hub's deletion) waited for ever. `asyncio.timeout` keeps the cancellation, so
every timed wait of the operator goes through here (ruff bans `asyncio.wait_for`: TID251).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["wait_event", "within"]

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`await awaitable`, raising TimeoutError after `seconds` (None: no limit)."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until `event` is set or `seconds` pass; True when it is set."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()
