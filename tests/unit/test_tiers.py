"""The tier controller: thresholds, hysteresis, dwell time, determinism."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backpressure.tiers import MODES, Thresholds, TierController, target

T = Thresholds(sampled_at=50, sampled_below=40, cdn_at=100, cdn_below=80, min_dwell_s=10)


RANK = {"push": 0, "sampled": 1, "cdn": 2}


@st.composite
def thresholds(draw: st.DrawFn) -> Thresholds:
    """Any valid thresholds: each *_below at most its *_at, cdn's at least sampled's."""
    sampled_below = draw(st.integers(1, 60))
    sampled_at = draw(st.integers(sampled_below, 90))
    cdn_below = draw(st.integers(sampled_below, 120))
    cdn_at = draw(st.integers(max(sampled_at, cdn_below), 150))
    dwell = draw(st.sampled_from([0.0, 1.0, 10.0]))
    return Thresholds(sampled_at, sampled_below, cdn_at, cdn_below, dwell)


@settings(max_examples=300)
@given(thresholds(), st.lists(st.tuples(st.sampled_from([0.0, 0.5, 1.0, 4.0, 12.0]), st.integers(0, 160)), max_size=60))
def test_up_at_the_at_thresholds_down_only_below_the_below_ones(t: Thresholds, steps: list[tuple[float, int]]) -> None:
    """Every change is justified by the count (up at ``*_at``, down only below ``*_below``),
    none comes within ``min_dwell_s`` of the last, and once the dwell is over the mode is
    never one the count rules out."""
    c = TierController(t)
    now, last_change = 0.0, float("-inf")
    for dt, viewers in steps:
        now += dt
        before = c.mode
        change = c.observe(viewers, now)
        if change is None:
            assert c.mode == before
        else:
            assert c.mode == change != before
            assert now - last_change >= t.min_dwell_s, "two changes within the dwell time"
            last_change = now
            if RANK[change] > RANK[before]:
                assert viewers >= (t.cdn_at if change == "cdn" else t.sampled_at)
            else:
                assert viewers < (t.cdn_below if before == "cdn" else t.sampled_below)
                if change == "push":
                    assert viewers < t.sampled_below
        if now - last_change >= t.min_dwell_s:
            if viewers >= t.cdn_at:
                assert c.mode == "cdn"
            elif viewers >= t.sampled_at:
                assert c.mode != "push"
            if viewers < t.sampled_below:
                assert c.mode == "push"
            elif viewers < t.cdn_below:
                assert c.mode != "cdn"


@pytest.mark.parametrize(
    ("mode", "viewers", "want"),
    [
        ("push", 49, "push"),
        ("push", 50, "sampled"),
        ("push", 100, "cdn"),
        ("sampled", 40, "sampled"),
        ("sampled", 39, "push"),
        ("sampled", 99, "sampled"),
        ("sampled", 100, "cdn"),
        ("cdn", 80, "cdn"),
        ("cdn", 79, "sampled"),
        ("cdn", 39, "push"),
    ],
)
def test_target_switches_up_at_and_down_below(mode: str, viewers: int, want: str) -> None:
    assert target(mode, viewers, T) == want  # type: ignore[arg-type]


def test_dwell_time_holds_a_mode() -> None:
    c = TierController(T)
    assert c.observe(60, now=0) == "sampled"
    assert c.observe(10, now=5) is None  # too soon to go back
    assert c.mode == "sampled"
    assert c.observe(10, now=10) == "push"


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ValueError):
        Thresholds(sampled_at=10, sampled_below=20)
    with pytest.raises(ValueError):
        Thresholds(sampled_at=50, sampled_below=40, cdn_at=30, cdn_below=20)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(0, 30), st.integers(0, 200)), max_size=60))
def test_never_two_changes_within_the_dwell_time(steps: list[tuple[float, int]]) -> None:
    c = TierController(T)
    now, last_change = 0.0, None
    for dt, viewers in steps:
        now += dt
        if c.observe(viewers, now) is not None:
            if last_change is not None:
                assert now - last_change >= T.min_dwell_s
            last_change = now
        assert c.mode in MODES


@settings(max_examples=300)
@given(st.integers(41, 99), st.lists(st.integers(-1, 1), max_size=40))
def test_oscillation_inside_the_band_never_flaps(start: int, moves: list[int]) -> None:
    """Viewers wandering between *_below and *_at after a switch up never switch back."""
    c = TierController(Thresholds(50, 40, 100, 80, min_dwell_s=0))
    assert c.observe(50, 0) == "sampled"
    v = start
    for i, m in enumerate(moves, start=1):
        v = min(99, max(40, v + m))
        assert c.observe(v, float(i)) is None
    assert c.mode == "sampled"


@given(st.lists(st.tuples(st.floats(0, 30), st.integers(0, 200)), max_size=40))
def test_two_controllers_fed_the_same_counts_agree(steps: list[tuple[float, int]]) -> None:
    a, b = TierController(T), TierController(T)
    now = 0.0
    for dt, viewers in steps:
        now += dt
        assert a.observe(viewers, now) == b.observe(viewers, now)
        assert a.mode == b.mode
