"""The flush pacer: a burst of immediate flushes, then at most ``rate`` per second, and cost backs off."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backpressure.pacer import FlushPacer

EPS = 1e-9  # float slack for lower bounds on sums of intervals (ready_at returns exactly now when due)

pacers = st.builds(
    FlushPacer,
    rate=st.sampled_from([1.0, 4.0, 20.0, 50.0]) | st.floats(0.5, 200.0),
    burst=st.integers(1, 10),
    cost_factor=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
)
starts = st.floats(0.0, 2e5, allow_nan=False)


def test_defaults() -> None:
    p = FlushPacer()
    assert (p.rate, p.burst, p.cost_factor) == (20.0, 4, 1.0)


def test_a_fresh_pacer_flushes_at_once() -> None:
    assert FlushPacer().ready_at(123.0) <= 123.0


def test_the_first_burst_flushes_are_immediate_then_one_per_interval() -> None:
    p = FlushPacer(rate=10.0, burst=3)
    for _ in range(3):
        assert p.ready_at(100.0) <= 100.0
        p.flushed(100.0)
    assert p.ready_at(100.0) == pytest.approx(100.1)


@settings(max_examples=100, deadline=None)
@given(pacers, starts)
def test_the_first_burst_flushes_are_immediate(p: FlushPacer, start: float) -> None:
    for _ in range(p.burst):
        assert p.ready_at(start) <= start  # exactly: a rounding error is not a reason to wait
        p.flushed(start)
    assert p.ready_at(start) >= start + 1.0 / p.rate - EPS  # the next one waits an interval


@settings(max_examples=100, deadline=None)
@given(pacers, starts, st.floats(1.0, 10.0))
def test_under_continuous_demand_the_rate_converges_to_at_most_rate(
    p: FlushPacer, start: float, horizon: float
) -> None:
    """Flush as soon as allowed (zero cost) for ``horizon`` seconds."""
    now = start
    times = []
    while now < start + horizon:
        now = max(now, p.ready_at(now))
        times.append(now)
        p.flushed(now)
    steady = times[p.burst :]
    for i, t in enumerate(steady):  # the (burst + i + 1)th flush waits i + 1 intervals
        assert i + 1 <= (t - start) * p.rate + 1e-3  # slack: float sums over ~1000 intervals
    # and it does not fall behind: burst + rate * elapsed flushes, give or take one
    elapsed = times[-1] - start
    assert p.burst + elapsed * p.rate - 1 <= len(times) <= p.burst + elapsed * p.rate + 1e-3


@settings(max_examples=75, deadline=None)
@given(pacers, starts, st.floats(0.0, 2.0))
def test_cost_holds_the_next_flush_back(p: FlushPacer, now: float, cost: float) -> None:
    p.flushed(now, cost)
    assert p.ready_at(now) >= now + cost + cost * p.cost_factor - EPS
    assert p.ready_at(now + cost) >= now + cost + cost * p.cost_factor - EPS


def test_cost_example() -> None:
    p = FlushPacer(rate=20.0, burst=4, cost_factor=1.0)
    p.flushed(10.0, cost=0.3)  # a fan-out that took 300 ms
    assert p.ready_at(10.3) == pytest.approx(10.6)  # the loop gets as long again for everything else
    q = FlushPacer(rate=20.0, burst=4, cost_factor=0.0)
    q.flushed(10.0, cost=0.3)
    assert q.ready_at(10.3) == pytest.approx(10.3)


def test_quiet_rooms_flush_at_once_again_after_a_pause() -> None:
    p = FlushPacer(rate=20.0, burst=4)
    for _ in range(4):
        p.flushed(0.0)
    assert p.ready_at(0.0) > 0.0
    # after burst * interval of quiet, the whole burst is back
    for _ in range(4):
        assert p.ready_at(0.2) <= 0.2
        p.flushed(0.2)


def test_the_whole_burst_is_immediate_exactly() -> None:
    """Regression: the 4th ready_at(10.0) was 10.000000000000004 (sum of intervals rounded up)."""
    p = FlushPacer(rate=20.0, burst=4)
    for _ in range(4):
        assert p.ready_at(10.0) <= 10.0
        p.flushed(10.0)
