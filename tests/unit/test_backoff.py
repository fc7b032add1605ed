"""The retry back-off (``policy.backoff``) and its Trio shell (``adapters.retry``)."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from adapters.retry import Retry
from policy.backoff import Backoff

policies = st.builds(
    Backoff,
    initial_s=st.floats(0.001, 5.0),
    max_s=st.floats(5.0, 60.0),
    factor=st.floats(1.0, 4.0),
    jitter=st.floats(0.0, 1.0),
)
attempts = st.integers(0, 10**6)
uniform = st.floats(0.0, 1.0, exclude_max=True)


@given(policies, attempts, uniform)
def test_every_delay_lies_within_the_jitter_range_of_its_capped_base(p: Backoff, attempt: int, u: float) -> None:
    base = p.base(attempt)
    assert p.initial_s <= base <= p.max_s
    d = p.delay(attempt, u)
    assert (1 - p.jitter) * base - 1e-9 <= d <= (1 + p.jitter) * base + 1e-9
    assert d <= (1 + p.jitter) * p.max_s + 1e-9


@given(policies, attempts)
def test_the_base_never_shrinks_and_stays_at_the_cap_once_there(p: Backoff, attempt: int) -> None:
    assert p.base(attempt + 1) >= p.base(attempt)
    if p.base(attempt) == p.max_s:
        assert p.base(attempt + 1) == p.base(attempt + 1000) == p.max_s


@given(policies, attempts, uniform, uniform)
def test_jitter_is_uniform_in_u(p: Backoff, attempt: int, u1: float, u2: float) -> None:
    # Monotone in u, and the extremes of u give the extremes of the range.
    lo, hi = sorted((u1, u2))
    assert p.delay(attempt, lo) <= p.delay(attempt, hi)
    base = p.base(attempt)
    assert p.delay(attempt, 0.0) == pytest.approx((1 - p.jitter) * base)
    assert p.delay(attempt, 0.5) == pytest.approx(base)


def test_without_jitter_the_delays_double_up_to_the_cap() -> None:
    p = Backoff(initial_s=0.5, max_s=10.0, jitter=0.0)
    assert [p.delay(n, 0.99) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_nonsense_policies_are_refused() -> None:
    for kw in ({"initial_s": 0.0}, {"initial_s": 3.0, "max_s": 2.0}, {"factor": 0.5}, {"jitter": 1.5}):
        with pytest.raises(ValueError):
            Backoff(**kw)  # type: ignore[arg-type]


async def test_the_shell_sleeps_each_delay_and_a_reset_starts_over(autojump_clock: trio.abc.Clock) -> None:
    retry = Retry(Backoff(initial_s=0.1, max_s=0.4), rand=lambda: 0.5)  # u = 0.5: no jitter
    slept = []
    for _ in range(4):
        start = trio.current_time()
        said = await retry.sleep()
        assert said == pytest.approx(trio.current_time() - start)
        slept.append(round(said, 6))
    assert slept == [0.1, 0.2, 0.4, 0.4]
    retry.reset()
    assert retry.next_delay() == 0.1
