"""When ``cluster up`` restarts a process that died (``policy.restart``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.backoff import Backoff
from policy.restart import RestartPolicy

policies = st.builds(
    RestartPolicy,
    backoff=st.builds(
        Backoff,
        initial_s=st.floats(0.001, 2.0),
        max_s=st.floats(2.0, 60.0),
        factor=st.floats(1.0, 4.0),
        jitter=st.floats(0.0, 1.0),
    ),
    stable_s=st.floats(0.1, 600.0),
)
uniform = st.floats(0.0, 1.0, exclude_max=True)


@given(policies, st.integers(0, 10**6), st.floats(0.0, 10**6), uniform)
def test_every_delay_is_bounded_by_the_jittered_cap(p: RestartPolicy, attempt: int, uptime: float, u: float) -> None:
    delay, nxt = p.after_exit(attempt, uptime, u)
    b = p.backoff
    assert (1 - b.jitter) * b.initial_s - 1e-9 <= delay <= (1 + b.jitter) * b.max_s + 1e-9
    assert nxt >= 1


@given(policies, st.integers(0, 10**6), uniform)
def test_a_run_that_lasted_stable_s_starts_over_at_the_first_delay(p: RestartPolicy, attempt: int, u: float) -> None:
    delay, nxt = p.after_exit(attempt, p.stable_s, u)
    assert delay == p.backoff.delay(0, u)
    assert nxt == 1


@given(policies, st.integers(1, 40), uniform)
def test_quick_deaths_in_a_row_wait_longer_each_time_up_to_the_cap(p: RestartPolicy, deaths: int, u: float) -> None:
    attempt, delays = 0, []
    for _ in range(deaths):
        delay, attempt = p.after_exit(attempt, p.stable_s / 2, u)
        delays.append(delay)
    assert attempt == deaths  # no give-up: every death gets a restart
    assert delays == sorted(delays)
    assert delays[-1] == p.backoff.delay(deaths - 1, u)


def test_the_default_doubles_from_half_a_second_to_thirty() -> None:
    p = RestartPolicy()
    attempt, bases = 0, []
    for _ in range(9):
        delay, attempt = p.after_exit(attempt, 1.0, 0.5)  # u = 0.5: the un-jittered delay
        bases.append(delay)
    assert bases == pytest.approx([0.5, 1, 2, 4, 8, 16, 30, 30, 30])
    assert p.after_exit(attempt, 3600.0, 0.5) == (pytest.approx(0.5), 1)


def test_a_nonsense_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(stable_s=0)
