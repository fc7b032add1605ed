"""Spread (``backpressure.spread``): how many shards a video's audience gets, with
hysteresis and a shrink delay, and which shard a viewer takes."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backpressure.spread import SpreadController, SpreadThresholds, choose_shard, shard_weights, shards_for

T = SpreadThresholds(viewers_per_shard=100, max_shards=8, shrink_ratio=0.75, shrink_after_s=10)

counts = st.integers(1, 12)
viewers = st.integers(0, 2000)


@pytest.mark.parametrize(
    ("current", "n", "want"),
    [
        (1, 0, 1),
        (1, 100, 1),
        (1, 101, 2),  # one more viewer than a shard holds: two shards
        (1, 250, 3),  # a surge jumps straight to what it needs
        (3, 201, 3),
        (3, 151, 3),  # would fit in 2 shards, but they would be more than 75 % full
        (3, 150, 2),  # 2 shards at 75 %: shrink
        (3, 0, 1),
        (1, 10_000, 8),  # capped
        (20, 50, 1),  # a count above the cap (settings changed) is brought back
    ],
)
def test_grows_with_the_audience_and_shrinks_below_the_line(current: int, n: int, want: int) -> None:
    assert shards_for(current, n, T) == want


@given(counts, viewers)
def test_always_enough_shards_and_within_bounds(current: int, n: int) -> None:
    k = shards_for(current, n, T)
    assert 1 <= k <= T.max_shards
    assert k * T.viewers_per_shard >= min(n, T.max_shards * T.viewers_per_shard)


@given(counts, viewers)
def test_a_decision_is_stable_where_it_was_made(current: int, n: int) -> None:
    # Whatever it moved to, the same audience keeps it there: no flapping back.
    k = shards_for(current, n, T)
    assert shards_for(k, n, T) == k


@given(counts, viewers, viewers)
def test_more_viewers_never_mean_fewer_shards(current: int, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert shards_for(current, lo, T) <= shards_for(current, hi, T)


@given(st.integers(2, 8), st.data())
def test_anything_inside_the_band_keeps_the_count(k: int, data: st.DataObject) -> None:
    floor = math.floor((k - 1) * T.viewers_per_shard * T.shrink_ratio)
    n = data.draw(st.integers(floor + 1, k * T.viewers_per_shard))
    assert shards_for(k, n, T) == k


def test_growth_is_immediate_and_a_shrink_waits() -> None:
    c = SpreadController(T)
    assert c.observe(350, now=0.0) == 4
    assert c.observe(0, now=1.0) is None  # everyone left: wait shrink_after_s
    assert c.observe(0, now=10.9) is None
    assert c.observe(0, now=11.0) == 1
    assert c.changes == 2


def test_a_dip_shorter_than_the_delay_does_not_shrink() -> None:
    c = SpreadController(T)
    c.observe(400, now=0.0)
    assert c.observe(50, now=1.0) is None  # a node died: its viewers are reconnecting
    assert c.observe(390, now=5.0) is None  # back: the low spell is over
    assert c.observe(50, now=12.0) is None  # a new low spell starts its own clock
    assert c.shards == 4 and c.observe(50, now=22.0) == 1


def test_the_cluster_decision_is_adopted() -> None:
    c = SpreadController(T)
    assert c.observe(150, now=0.0) == 2
    c.settle(3)  # another node's proposal won
    assert c.shards == 3 and c.observe(150, now=1.0) is None
    c.settle(99)
    assert c.shards == T.max_shards


def test_bad_thresholds_are_refused() -> None:
    for kwargs in ({"viewers_per_shard": 0}, {"max_shards": 0}, {"shrink_ratio": 0.0}, {"shrink_ratio": 1.5}, {"shrink_after_s": -1}):
        with pytest.raises(ValueError):
            SpreadThresholds(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(0, 8), viewers), max_size=80))
def test_shrinks_only_after_a_whole_low_spell_and_never_under_provisions(steps: list[tuple[float, int]]) -> None:
    c = SpreadController(T)
    now = 0.0
    low_since: float | None = None  # the test's own account of the current low spell
    for dt, n in steps:
        now += dt
        before = c.shards
        wants_less = shards_for(before, n, T) < before
        low_since = (low_since if low_since is not None else now) if wants_less else None
        change = c.observe(n, now)
        if change is not None:
            assert change != before and c.shards == change
            if change < before:
                assert low_since is not None and now - low_since >= T.shrink_after_s
                low_since = None
        else:
            assert c.shards == before
        # Whatever happened, the audience it saw fits (growth never waits).
        assert c.shards * T.viewers_per_shard >= min(n, T.max_shards * T.viewers_per_shard)


@given(st.lists(st.integers(101, 200), min_size=1, max_size=50), st.floats(0, 100))
def test_a_count_oscillating_inside_the_band_never_changes_it(seq: list[int], step: float) -> None:
    c = SpreadController(T)
    assert c.observe(150, now=0.0) == 2
    for i, n in enumerate(seq):
        assert c.observe(n, now=1.0 + i * step) is None


# -- the client's pick ------------------------------------------------------------------------


@given(st.integers(1, 1000), st.one_of(st.none(), st.integers(-5, 1100)), st.floats(0, 1, exclude_max=True))
def test_a_viewer_gets_a_shard_in_range_and_keeps_its_own(shards: int, current: int | None, draw: float) -> None:
    s = choose_shard(shards, current, draw)
    assert 0 <= s < shards
    if current is not None and 0 <= current < shards:
        assert s == current


@given(st.integers(1, 64))
def test_picks_are_uniform_over_the_shards(shards: int) -> None:
    draws = 64 * shards
    picked = Counter(choose_shard(shards, None, (i + 0.5) / draws) for i in range(draws))
    assert set(picked) == set(range(shards)) and set(picked.values()) == {64}


def test_a_shrunk_count_moves_a_viewer_of_a_gone_shard() -> None:
    assert choose_shard(1, 2, 0.9) == 0
    assert choose_shard(2, 5, 0.9) == 1
    assert choose_shard(0, None, 0.5) == 0  # nonsense from a server: shard 0


def test_weights_prefer_emptier_shards_and_are_even_when_loads_are() -> None:
    assert shard_weights([]) == []
    assert shard_weights([7, 7, 7]) == [1, 1, 1]
    assert shard_weights([219, 63, 18]) == [1, 157, 202]


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=64))
def test_weights_are_positive_and_ordered_by_load(loads: list[int]) -> None:
    w = shard_weights(loads)
    assert len(w) == len(loads) and min(w) >= 1
    for a in range(len(loads)):
        for b in range(len(loads)):
            if loads[a] < loads[b]:
                assert w[a] > w[b]


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=16), st.floats(0, 1, exclude_max=True))
def test_a_weighted_pick_is_a_shard_and_never_the_full_one_when_others_are_empty(loads: list[int], draw: float) -> None:
    s = choose_shard(len(loads), None, draw, loads)
    assert 0 <= s < len(loads)
    # Loads of another count (a stale answer) are not used: uniform instead.
    assert choose_shard(len(loads) + 1, None, draw, loads) == min(len(loads), int(draw * (len(loads) + 1)))


def grow(seed: int, weighted: bool, stale: int, churn: float = 0.0) -> tuple[int, float]:
    """3,000 joins one at a time (and, with ``churn``, leaves) under the controller, each
    viewer picking from the count and loads as they were ``stale`` joins ago (what the
    edge's cache and the presence interval do): (the fullest shard's viewers, its share)."""
    rng = random.Random(seed)
    t = SpreadThresholds(viewers_per_shard=100, max_shards=30, shrink_after_s=60)
    c = SpreadController(t)
    loads = [0] * t.max_shards
    seen: tuple[int, list[int]] = (1, [0])
    total = 0
    for i in range(3000):
        if i % stale == 0:
            seen = (c.shards, loads[: c.shards])
        k, known = seen
        loads[choose_shard(k, None, rng.random(), known if weighted else None)] += 1
        total += 1
        if churn and rng.random() < churn:  # someone leaves, from anywhere
            j = rng.choices(range(c.shards), weights=loads[: c.shards])[0]
            loads[j] -= 1
            total -= 1
        c.observe(total, float(i))
    return max(loads[: c.shards]), total / c.shards


@pytest.mark.parametrize(("stale", "churn"), [(10, 0.0), (100, 0.0), (300, 0.0), (100, 0.3)])
def test_weighted_picks_fill_new_shards_first(stale: int, churn: float) -> None:
    for seed in range(3):
        uniform, share = grow(seed, False, stale, churn)
        weighted, _ = grow(seed, True, stale, churn)
        assert weighted <= 0.7 * uniform, (seed, weighted, uniform)
        assert weighted <= 3.2 * share, (seed, weighted, share)
