"""The one `free_port` and the one `wait_until` of the dev cluster, the tests and the benchmarks."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A wait ran out: an AssertionError for pytest's report, a TimeoutError for scripts."""


# Free ports are looked for from here up to the ephemeral range, but below Kubernetes'
# NodePort range (30000-32767), which a real node's kube-proxy may claim.
_LOWEST_PORT = 10000
_NODE_PORTS = 30000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local end of outbound connections (Linux; the usual default
    elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on at the moment of the call, outside the
    kernel's ephemeral range.

    A port the kernel picks (bind to 0) comes from the ephemeral range, so between this call and
    the server's own bind any outbound connection on the machine may take it as its local end:
    a bench's etcd once failed with "bind: address already in use" that way. Outside the range
    only another listener can take it.
    """
    low, high = ephemeral_ports()
    ranges = [
        r for r in (range(_LOWEST_PORT, min(low, _NODE_PORTS)), range(high + 1, 65536)) if len(r) >= 1000
    ]
    rng = random.SystemRandom()
    for _ in range(200):
        if not ranges:
            break
        port = rng.choice(rng.choice(ranges))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # no room outside: any port
        s.bind((host, 0))
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
