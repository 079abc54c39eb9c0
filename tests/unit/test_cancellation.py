"""A cancellation that arrives with a wake-up is never lost (coursehub.aio).

Python 3.11's `asyncio.wait_for` returned the inner result when the task was cancelled in the
same loop iteration as its wait ended: a hub's loop, stopped for the hub's deletion just as a
watch event woke it (a namespace's deletion brings both at once), ran on, and the deletion
awaited its end for ever (the namespace stayed Terminating; seen in CI). The bounds below only
tell a hang from an end: none is near what an end takes.
"""

from __future__ import annotations

import asyncio

import pytest

from coursehub import aio
from coursehub.reconcile.hub import HubReconciler
from coursehub.settings import Settings
from coursehub.state import Index

HANG = 5.0


async def _settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


@pytest.mark.parametrize("wait", ["wait_event", "within"])
def test_a_wait_cancelled_as_its_event_is_set_is_cancelled(wait):
    async def scenario() -> str:
        event = asyncio.Event()

        async def waiter() -> str:
            while True:  # a loop like the operator's: woken, it waits again
                if wait == "wait_event":
                    await aio.wait_event(event, 100)
                else:
                    await aio.within(event.wait(), 100)
                event.clear()

        task = asyncio.ensure_future(waiter())
        await _settle()
        event.set()
        task.cancel()  # the same loop iteration as the wake-up
        done, _ = await asyncio.wait([task], timeout=HANG)
        return "cancelled" if done and task.cancelled() else "ran on"

    assert asyncio.run(scenario()) == "cancelled"


def test_wait_event_says_whether_the_event_came():
    async def scenario() -> tuple[bool, bool]:
        event = asyncio.Event()
        timed_out = await aio.wait_event(event, 0.01)
        event.set()
        return timed_out, await aio.wait_event(event, 0.01)

    assert asyncio.run(scenario()) == (False, True)


def test_a_hub_loop_stopped_as_a_watch_event_wakes_it_ends():
    """HubReconciler.stop() (a hub's deletion) right after Index.wake_hub (a puller deleted
    with the namespace): the loop ends, so the deletion goes on."""

    async def scenario() -> bool:
        idx = Index()
        idx.mark_listed()
        key = ("jupyter", "learn")
        rec = HubReconciler(None, idx, Settings(), key, helm=None)  # type: ignore[arg-type]
        rec.task = asyncio.create_task(rec._loop())  # no hub in the index: each round is a no-op
        await _settle()
        assert not rec.task.done()
        idx.wake_hub(key)
        try:
            await aio.within(rec.stop(), HANG)
        except TimeoutError:
            return False
        return rec.task.done()

    assert asyncio.run(scenario())
