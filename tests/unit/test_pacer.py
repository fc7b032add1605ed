"""The flush pacer: a burst of immediate flushes, then at most ``rate`` per second, and cost backs off."""

from __future__ import annotations

import itertools

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


def flush_on_demand(p: FlushPacer, start: float, gaps: list[float]) -> list[float]:
    """A comment arrives ``gap`` seconds after each flush; each flush runs as soon as the
    pacer allows (at zero cost). Returns the flush times."""
    now, times = start, []
    for gap in gaps:
        now = max(now + gap, p.ready_at(now + gap))
        times.append(now)
        p.flushed(now)
    return times


@settings(max_examples=100, deadline=None)
@given(pacers, starts, st.lists(st.floats(0.0, 3.0), max_size=20))
def test_after_a_quiet_spell_a_whole_burst_is_immediate_again(p: FlushPacer, start: float, gaps: list[float]) -> None:
    """Whatever came before, a room that has not flushed for ``burst / rate`` seconds
    flushes ``burst`` times at once, and the next one waits."""
    times = flush_on_demand(p, start, gaps)
    quiet = (times[-1] if times else start) + p.burst / p.rate
    for _ in range(p.burst):
        assert p.ready_at(quiet) == quiet
        p.flushed(quiet)
    assert p.ready_at(quiet) > quiet


@settings(max_examples=100, deadline=None)
@given(pacers, starts, st.integers(1, 40))
def test_a_busy_room_flushes_once_per_interval_after_its_burst(p: FlushPacer, start: float, n: int) -> None:
    """Comments all the time: the burst at once, then exactly one flush per ``1 / rate``."""
    times = flush_on_demand(p, start, [0.0] * (p.burst + n))
    assert times[: p.burst] == [start] * p.burst
    for a, b in itertools.pairwise(times[p.burst - 1 :]):
        assert b - a == pytest.approx(1.0 / p.rate, rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(pacers, starts, st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_no_span_holds_more_than_the_burst_plus_the_rate(p: FlushPacer, start: float, gaps: list[float]) -> None:
    """Any pattern of arrivals: between any two flushes, at most ``burst + rate * span`` flushes."""
    times = flush_on_demand(p, start, gaps)
    for i, a in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= p.burst + (times[j] - a) * p.rate + 1e-6, (i, j)


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
