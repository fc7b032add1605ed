"""Comment velocity: a steady stream reads its rate; an idle one halves every half-life."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backpressure.velocity import Velocity


def test_nothing_observed_reads_zero() -> None:
    assert Velocity().rate(1000.0) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.floats(0.5, 10.0), st.floats(1.0, 200.0), st.floats(0.0, 1e5))
def test_a_steady_rate_converges_to_that_rate(half_life: float, per_second: float, start: float) -> None:
    """Events every 1/r s for 12 half-lives: the reading is r, up to the discreteness of
    single events (relative error about ln 2 / (2 r h), kept small by r * h >= 10)."""
    if per_second * half_life < 10:
        per_second = 10 / half_life
    v = Velocity(half_life)
    step = 1.0 / per_second
    n = math.ceil(12 * half_life / step)
    for k in range(n):
        v.observe(start + k * step)
    last = start + (n - 1) * step
    just_after, just_before = v.rate(last), v.rate(last + step * 0.999)
    assert just_after == pytest.approx(per_second, rel=0.1)
    assert just_before == pytest.approx(per_second, rel=0.1)
    # it dips below r between events and peaks above it at each (the transient left is 2^-12)
    assert just_before <= per_second * 1.001
    assert just_after >= per_second * 0.999


@settings(max_examples=40, deadline=None)
@given(st.floats(0.5, 10.0), st.floats(1.0, 500.0), st.integers(1, 20))
def test_batched_observations_count_like_single_ones(half_life: float, per_second: float, batch: int) -> None:
    """observe(now, n) every ``step`` seconds reads n / step events per second."""
    v = Velocity(half_life)
    step = min(1.0 / per_second, half_life / 50)  # fine-grained against the half-life
    for k in range(math.ceil(12 * half_life / step)):
        v.observe(k * step, batch)
    assert v.rate(12 * half_life) == pytest.approx(batch / step, rel=0.15)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.1, 60.0), st.integers(1, 1000), st.floats(0.0, 1e5), st.integers(1, 6))
def test_an_idle_stream_halves_every_half_life(half_life: float, n: int, start: float, k: int) -> None:
    v = Velocity(half_life)
    v.observe(start, n)
    r0 = v.rate(start)
    assert r0 == pytest.approx(n * math.log(2) / half_life)
    for i in range(1, k + 1):
        assert v.rate(start + i * half_life) == pytest.approx(r0 / 2**i, rel=1e-6)


def test_reading_does_not_change_the_value() -> None:
    a, b = Velocity(5.0), Velocity(5.0)
    a.observe(0.0, 10)
    b.observe(0.0, 10)
    for t in (1.0, 2.0, 3.0):
        a.rate(t)
    assert a.rate(4.0) == pytest.approx(b.rate(4.0))


def test_a_clock_that_steps_back_neither_grows_nor_decays() -> None:
    v = Velocity(5.0)
    v.observe(100.0, 10)
    r = v.rate(100.0)
    assert v.rate(90.0) == r
    v.observe(95.0, 10)  # counted, without decay
    assert v.rate(100.0) == pytest.approx(2 * r)
