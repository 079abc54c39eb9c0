"""The one `free_port` and the one `wait_until` of the dev cluster, the tests and the benchmarks."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A wait ran out: an AssertionError for pytest's report, a TimeoutError for scripts."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on at the moment of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 60,
    what: str = "condition",
    interval: float = 0.2,
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    An exception from `predicate` counts as "not yet" (the object may not exist yet, the
    server may not listen yet) and is shown in the timeout's message. `abort` is asked before
    every try; a non-empty answer (say, "etcd exited with 1") stops the wait at once with a
    RuntimeError, so a dead process does not cost the whole timeout.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        if abort is not None:
            reason = abort()
            if reason:
                raise RuntimeError(f"{reason} while waiting for {what}")
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:
            last = e
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
