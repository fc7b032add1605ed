"""Sliding-window rate: never more than ``count`` in any ``period``, a burst of ``count``
from fresh, exact retry_after, refusals count nothing, parse_rate."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policy.rate import EPS, Events, Rate, RateGate, parse_rate

# Times as the shells pass them: trio.current_time() starts at a large random offset.
times = st.floats(0.0, 2e5, allow_nan=False, allow_infinity=False)
rules = st.builds(
    Rate,
    count=st.integers(1, 50),
    period=st.sampled_from([0.001, 0.5, 1.0, 10.0, 60.0, 3600.0]) | st.floats(0.01, 1000.0),
)
gaps = st.lists(st.one_of(st.just(0.0), st.floats(0.0, 5.0), st.floats(0.0, 100.0)), max_size=50)

# The window's edge is fuzzy by rate.EPS (1 ns) on purpose, so that a retry at exactly
# now + retry_after is never refused by a rounding error; plus float rounding of sums of
# times up to ~2e5 s (an ulp there is ~3e-11 s).
SLACK = 2 * EPS


def run(rule: Rate, start: float, steps: list[float]) -> tuple[list[float], list[tuple[Events | None, float, float]]]:
    """Arrivals at start + cumulative steps -> allowed times, and (events, now, retry) per refusal."""
    events: Events | None = None
    now = start
    allowed: list[float] = []
    refused: list[tuple[Events | None, float, float]] = []
    for dt in steps:
        now += dt
        ok, new_events, retry = rule.check(events, now)
        assert len(new_events) <= rule.count  # the state stays bounded
        if ok:
            allowed.append(now)
            assert retry == 0.0
            assert new_events[-1] == now
            events = new_events
        else:
            assert new_events == (events or ())  # a refusal counts nothing
            refused.append((events, now, retry))
    return allowed, refused


@settings(max_examples=150, deadline=None)
@example(rule=Rate(5, 10.0), start=0.0, steps=[0.0] * 5 + [2.0] * 4)  # GCRA let 9 through in 10 s here
@example(rule=Rate(5, 10.0), start=0.0, steps=[0.0] * 5 + [2.0] * 4 + [2.0 - 1e-6, 1e-6])
@example(rule=Rate(3, 0.5), start=112025.489, steps=[0.0] * 4 + [0.5] * 4)
@given(rules, times, gaps)
def test_never_more_than_count_allowed_in_any_window_of_one_period(
    rule: Rate, start: float, steps: list[float]
) -> None:
    allowed, _ = run(rule, start, steps)
    for i in range(len(allowed) - rule.count):
        # count+1 arrivals in a half-open window [t, t + period) break "count per period"
        assert allowed[i + rule.count] - allowed[i] >= rule.period - SLACK


def brute_force(rule: Rate, allowed: list[float], now: float) -> tuple[bool, float]:
    """The definition, over the whole history: allowed iff fewer than ``count`` allowed
    events are still inside the window; else wait until enough of them have left it."""
    inside = sorted(t for t in allowed if t + rule.period - now > EPS)
    if len(inside) < rule.count:
        return True, 0.0
    return False, max(inside[len(inside) - rule.count] + rule.period - now, EPS)


@settings(max_examples=150, deadline=None)
@example(rule=Rate(5, 10.0), start=0.0, steps=[0.0] * 5 + [2.0] * 5 + [10.0] * 3)
@given(rules, times, gaps)
def test_decisions_are_the_sliding_window_over_the_whole_history(rule: Rate, start: float, steps: list[float]) -> None:
    """Keeping only the last ``count`` events loses nothing: as strict as needed and no stricter."""
    events: Events | None = None
    history: list[float] = []
    now = start
    for dt in steps:
        now += dt
        ok, events_after, retry = rule.check(events, now)
        assert (ok, retry) == brute_force(rule, history, now)
        if ok:
            history.append(now)
            events = events_after


@settings(max_examples=100, deadline=None)
@example(rule=Rate(30, 10.0), now=1000.0)  # the default reaction limit: GCRA refused the 30th
@example(rule=Rate(3, 0.5), now=112025.489)  # GCRA refused the 3rd (rounding)
@example(rule=Rate(5, 10.0), now=0.0)
@given(rules, times)
def test_a_fresh_key_gets_a_burst_of_count_at_one_instant_then_is_refused(rule: Rate, now: float) -> None:
    events: Events | None = None
    for _ in range(rule.count):
        ok, events, retry = rule.check(events, now)
        assert ok
        assert retry == 0.0
    assert events == (now,) * rule.count
    ok, after, retry = rule.check(events, now)
    assert not ok
    assert after == events
    assert retry == pytest.approx(rule.period, abs=SLACK)  # the whole burst leaves at now + period


@settings(max_examples=100, deadline=None)
@example(period=30.0, now=25.507)  # slow mode: GCRA refused a key never seen
@example(period=10.0, now=2.3007136062907434)
@example(period=60.0, now=16341.656)
@example(period=1.0, now=1e-9)
@example(period=576.7078057360847, now=0.36828970871546135)
@given(st.floats(0.001, 1000.0), times)
def test_one_per_period_allows_one_then_refuses_for_the_period(period: float, now: float) -> None:
    rule = Rate(1, period)
    assert rule.check(None, now) == (True, (now,), 0.0)
    assert rule.check((), now) == (True, (now,), 0.0)
    ok, _, retry = rule.check((now,), now)
    assert not ok
    assert retry == pytest.approx(period, abs=SLACK)
    assert rule.check((now,), now + retry)[0]


@pytest.mark.parametrize(
    ("rule", "now"),
    [(Rate(1, 30.0), 25.507), (Rate(1, 10.0), 2.3007136062907434), (Rate(1, 60.0), 16341.656), (Rate(1, 1.0), 1e-9)],
)
def test_a_key_never_seen_is_always_allowed(rule: Rate, now: float) -> None:
    """Regression: with count=1 the GCRA refused these by ~4e-15 s."""
    assert rule.check(None, now)[0]


@settings(max_examples=150, deadline=None)
@given(rules, times, gaps)
def test_retrying_exactly_at_now_plus_retry_after_is_allowed_and_not_before(
    rule: Rate, start: float, steps: list[float]
) -> None:
    _, refused = run(rule, start, steps)
    for events, now, retry in refused:
        assert 0.0 < retry <= rule.period + SLACK
        assert rule.check(events, now + retry)[0]
        if retry > 1e-6:
            ok, after, still = rule.check(events, now + retry - 1e-6)
            assert not ok
            assert after == events
            assert still == pytest.approx(1e-6, abs=SLACK)


def test_retrying_exactly_at_now_plus_retry_after_is_allowed() -> None:
    """Regression: the GCRA refused this retry again by ~1e-13 s."""
    rule = Rate(1, 576.7078057360847)
    ok, events, _ = rule.check(None, 0.36828970871546135)
    assert ok
    now = 0.36828970871546135 + 64.50927506742248
    ok, _, retry = rule.check(events, now)
    assert not ok
    assert rule.check(events, now + retry)[0]


@settings(max_examples=100, deadline=None)
@given(rules, times, st.lists(st.floats(-1100.0, 0.0), max_size=60))
def test_a_refusal_leaves_the_events_as_they_were(rule: Rate, now: float, ages: list[float]) -> None:
    """From any state (even one with more than ``count`` events): a refusal counts nothing
    and drops only events that already left the window; an allowed event is appended."""
    events = tuple(sorted(now + a for a in ages))
    ok, after, retry = rule.check(events, now)
    recent = rule.recent(events, now)
    assert recent == tuple(t for t in events if t + rule.period - now > EPS)
    if not ok:
        assert after == recent
        assert retry > 0.0
        assert len(recent) >= rule.count
        for later in (now, now + retry / 2, now + retry, now + rule.period + 1.0):  # and behaves the same after
            assert rule.check(after, later) == rule.check(events, later)
    else:
        assert len(recent) < rule.count
        assert after == (*recent, now)[-rule.count :]
        assert retry == 0.0


@settings(max_examples=100, deadline=None)
@given(rules, times, gaps)
def test_a_key_whose_events_all_left_the_window_is_the_same_as_a_fresh_key(
    rule: Rate, start: float, steps: list[float]
) -> None:
    events: Events | None = None
    now = start
    for dt in steps:
        now += dt
        result = rule.check(events, now)
        if events and rule.recent(events, now) == ():
            assert result == rule.check(None, now)
        if result[0]:
            events = result[1]


def test_a_key_whose_events_left_the_window_exactly_is_fresh() -> None:
    rule = Rate(2, 10.0)
    assert rule.recent((100.0, 105.0), 115.0) == ()
    assert rule.check((100.0, 105.0), 115.0) == rule.check(None, 115.0) == (True, (115.0,), 0.0)
    assert rule.recent((100.0, 105.0), 114.999) == (105.0,)


def test_five_per_ten_seconds_means_five_in_any_ten_seconds() -> None:
    """The case the GCRA got wrong: 5 at t=0 and one at t=2, 4, 6, 8 made 9 in 10 s."""
    rule = Rate(5, 10.0)  # the default comment limit
    events: Events | None = None
    for _ in range(5):
        ok, events, _ = rule.check(events, 0.0)
        assert ok
    for t in (2.0, 4.0, 6.0, 8.0, 9.999):
        ok, _, retry = rule.check(events, t)
        assert not ok
        assert retry == pytest.approx(10.0 - t)
    ok, events, _ = rule.check(events, 10.0)
    assert ok
    assert events == (10.0,)  # the whole burst left the window together


def test_spaced_events_leave_the_window_one_by_one() -> None:
    rule = Rate(5, 10.0)
    events: Events | None = None
    for t in (100.0, 101.0, 102.0, 103.0, 104.0):
        ok, events, _ = rule.check(events, t)
        assert ok
    ok, _, retry = rule.check(events, 105.0)
    assert not ok
    assert retry == 5.0  # when the one at 100 leaves
    assert not rule.check(events, 109.9)[0]
    ok, events, _ = rule.check(events, 110.0)
    assert ok
    assert events == (101.0, 102.0, 103.0, 104.0, 110.0)
    assert rule.check(events, 110.0) == (False, events, 1.0)


def test_steady_arrivals_at_period_over_count_are_all_allowed() -> None:
    rule = Rate(5, 10.0)
    events: Events | None = None
    for k in range(100):
        ok, events, _ = rule.check(events, 1000.0 + 2.0 * k)
        assert ok


def test_from_text() -> None:
    assert Rate.from_text("20/m") == Rate(20, 60.0)
    assert Rate.from_text("5/10s") == Rate(5, 10.0)
    with pytest.raises(ValueError):
        Rate.from_text("5/")


@settings(max_examples=100)
@given(st.floats(1e-12, 1e6, allow_nan=False))
def test_retry_after_header_is_whole_seconds_at_least_one_and_rounded_up(seconds: float) -> None:
    h = Rate.retry_after_header(seconds)
    assert isinstance(h, int)
    assert h >= 1
    assert h >= seconds - EPS  # never tells a client to come back too early (beyond the window's 1 ns)
    assert h == 1 or h - 1 < seconds  # the smallest such whole number


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(1e-9, 1), (0.2, 1), (1.0, 1), (1.0 + 1e-12, 1), (1.0000001, 2), (1.5, 2), (2.0, 2), (59.01, 60)],
)
def test_retry_after_header_examples(seconds: float, header: int) -> None:
    assert Rate.retry_after_header(seconds) == header


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("5/10s", (5, 10.0)),
        ("20/m", (20, 60.0)),
        ("1000000/1s", (1000000, 1.0)),
        ("3/500ms", (3, 0.5)),
        ("30/10s", (30, 10.0)),
        ("2/h", (2, 3600.0)),
        ("5/10", (5, 10.0)),
        ("5/s", (5, 1.0)),
        ("2/0.5s", (2, 0.5)),
        ("5/.5s", (5, 0.5)),
        ("5/1.5m", (5, 90.0)),
        (" 5 / 10 s ", (5, 10.0)),
    ],
)
def test_parse_rate_accepts(text: str, want: tuple[int, float]) -> None:
    count, period = parse_rate(text)
    assert count == want[0]
    assert period == pytest.approx(want[1])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "5",
        "5/",
        " 5 / ",
        "/s",
        "abc",
        "5/x",
        "5/10x",
        "5/10S",
        "0/s",
        "0/1s",
        "0/10s",
        "5/0s",
        "5/0ms",
        "5/0.0s",
        "-1/s",
        "5/-1s",
        "1.5/s",
        "5/s/s",
        "5//s",
        "5/10s extra",
        "5 10s",
        "5/1e3s",
        "5/.",
        "5/1_0s",
        "\u0665/\u0661\u0660s",  # "5/10s" in Arabic-Indic digits: int() and float() would take them
        "5/\u0661\u0660s",
        "\uff15/10s",  # fullwidth 5
        "5\u00a0/10s",  # a non-ASCII space
    ],
)
def test_parse_rate_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_parse_rate_rejects_an_infinite_period() -> None:
    with pytest.raises(ValueError):
        parse_rate("5/1" + "0" * 400 + "s")


@settings(max_examples=75)
@given(
    st.integers(1, 10**7),
    st.integers(1, 10**5),
    st.sampled_from([("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("", 1.0)]),
)
def test_parse_rate_round_trips_what_it_documents(count: int, amount: int, unit: tuple[str, float]) -> None:
    c, p = parse_rate(f"{count}/{amount}{unit[0]}")
    assert c == count
    assert math.isclose(p, amount * unit[1])


@settings(max_examples=200)
@given(st.text(max_size=12) | st.text(alphabet="0123456789./ msh\u0665\u0661\uff15\u00a0", max_size=10))
def test_parse_rate_either_parses_to_a_positive_rate_or_raises_value_error(text: str) -> None:
    try:
        count, period = parse_rate(text)
    except ValueError:
        return
    assert text.isascii()
    assert count >= 1 and period > 0 and math.isfinite(period)


@settings(max_examples=150, deadline=None)
@example(rule=Rate(5, 10.0), start=0.0, steps=[0.0] * 8 + [2.0] * 8)  # the WebSocket resume default
@given(rules, times, gaps)
def test_a_gate_is_the_sliding_window_of_its_one_owner(rule: Rate, start: float, steps: list[float]) -> None:
    """RateGate (a connection's resumes): the same decisions as the definition over its
    whole history, never more than ``count`` in a period, a bounded state, and a wait
    that is honest (retrying exactly then is allowed)."""
    gate = RateGate(rule)
    history: list[float] = []
    now = start
    for dt in steps:
        now += dt
        ok, retry = brute_force(rule, history, now)
        wait = gate.take(now)
        assert wait == retry
        assert (wait == 0.0) == ok
        if ok:
            history.append(now)
        else:
            assert wait > 0.0
            assert copy.copy(gate).take(now + wait) == 0.0
        assert len(gate._events) <= rule.count
    for i in range(len(history) - rule.count):
        assert history[i + rule.count] - history[i] >= rule.period - SLACK
