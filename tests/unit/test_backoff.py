"""The one retry-pause formula."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from coursehub import backoff


def test_doubles_from_base_up_to_cap():
    assert [backoff.delay(a) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [backoff.delay(a, base=2.0, cap=300.0) for a in range(9)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_a_long_outage_stays_at_the_cap():
    # Retry loops count attempts for as long as an outage lasts; 0.5 * 2**1100 overflows a float.
    assert backoff.delay(10_000) == 30.0


@given(st.integers(min_value=0, max_value=100_000), st.floats(0.01, 10), st.floats(0.01, 1000))
def test_never_negative_never_above_cap_and_monotonic(attempt, base, cap):
    d = backoff.delay(attempt, base=base, cap=cap)
    assert 0 < d <= cap
    assert backoff.delay(attempt + 1, base=base, cap=cap) >= d


def test_sleep_waits_the_delay():
    asyncio.run(backoff.sleep(0, base=0.001))
