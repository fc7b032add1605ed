"""Snowflake ids: strictly increasing whatever the clock does, time and worker in their bits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.ids import (
    EPOCH_MS,
    MAX_SEQUENCE,
    MAX_WORKER,
    SEQUENCE_BITS,
    TIME_SHIFT,
    SnowflakeGenerator,
    lowest_id_at,
    snowflake_ms,
)

workers = st.integers(0, MAX_WORKER)
# Clocks from before the epoch to decades after it; repeats and steps back are common.
ms_values = st.integers(EPOCH_MS - 10**6, EPOCH_MS + 2 * 10**12)
clocks = st.lists(
    st.one_of(ms_values, st.integers(EPOCH_MS - 3, EPOCH_MS + 3)),
    min_size=1,
    max_size=60,
)


def worker_of(comment_id: int) -> int:
    return (comment_id >> SEQUENCE_BITS) & MAX_WORKER


def sequence_of(comment_id: int) -> int:
    return comment_id & MAX_SEQUENCE


@settings(max_examples=100, deadline=None)
@given(workers, clocks)
def test_ids_strictly_increase_for_any_clock(worker: int, now_ms: list[int]) -> None:
    g = SnowflakeGenerator(worker)
    issued = [g.next_id(ms) for ms in now_ms]
    assert all(a < b for a, b in itertools.pairwise(issued))


@settings(max_examples=10, deadline=None)
@given(workers, st.lists(st.tuples(ms_values, st.sampled_from([1, 2, 4095, 4096, 4097, 8193])), min_size=1, max_size=3))
def test_ids_strictly_increase_through_more_than_4096_in_one_millisecond(
    worker: int, runs: list[tuple[int, int]]
) -> None:
    g = SnowflakeGenerator(worker)
    last = -1
    for ms, count in runs:
        for _ in range(count):
            i = g.next_id(ms)
            assert i > last
            assert worker_of(i) == worker
            assert 0 <= sequence_of(i) <= MAX_SEQUENCE
            last = i


@settings(max_examples=60, deadline=None)
@given(workers, clocks)
def test_worker_bits_are_in_place_and_time_never_runs_behind_the_clock(worker: int, now_ms: list[int]) -> None:
    g = SnowflakeGenerator(worker)
    for ms in now_ms:
        i = g.next_id(ms)
        assert worker_of(i) == worker
        assert snowflake_ms(i) >= max(ms, EPOCH_MS)  # borrowed from the future at worst, never the past
        assert i >= lowest_id_at(ms)


@settings(max_examples=60, deadline=None)
@given(workers, st.lists(st.integers(EPOCH_MS + 1, EPOCH_MS + 2 * 10**12), min_size=1, max_size=40, unique=True))
def test_snowflake_ms_round_trips_on_a_clock_that_moves_forward(worker: int, now_ms: list[int]) -> None:
    g = SnowflakeGenerator(worker)
    for ms in sorted(now_ms):
        i = g.next_id(ms)
        assert snowflake_ms(i) == ms
        assert sequence_of(i) == 0


def test_the_same_millisecond_counts_up_the_sequence() -> None:
    g = SnowflakeGenerator(5)
    t = EPOCH_MS + 1000
    ids = [g.next_id(t) for _ in range(3)]
    assert [sequence_of(i) for i in ids] == [0, 1, 2]
    assert {snowflake_ms(i) for i in ids} == {t}


def test_the_4097th_id_in_a_millisecond_borrows_the_next_millisecond() -> None:
    g = SnowflakeGenerator(1)
    t = EPOCH_MS + 1000
    ids = [g.next_id(t) for _ in range(MAX_SEQUENCE + 2)]
    assert snowflake_ms(ids[MAX_SEQUENCE]) == t
    assert snowflake_ms(ids[-1]) == t + 1
    assert sequence_of(ids[-1]) == 0
    # the clock then reaching t + 1 does not reissue what was borrowed
    assert g.next_id(t + 1) > ids[-1]


def test_a_clock_step_back_stays_on_the_last_millisecond() -> None:
    g = SnowflakeGenerator(0)
    a = g.next_id(EPOCH_MS + 5000)
    b = g.next_id(EPOCH_MS + 4000)
    assert b > a
    assert snowflake_ms(b) == EPOCH_MS + 5000


def test_layout() -> None:
    g = SnowflakeGenerator(MAX_WORKER)
    i = g.next_id(EPOCH_MS + 1)
    assert i == (1 << TIME_SHIFT) | (MAX_WORKER << SEQUENCE_BITS)
    assert lowest_id_at(EPOCH_MS + 1) == 1 << TIME_SHIFT
    assert lowest_id_at(EPOCH_MS - 100) == 0


@settings(max_examples=75)
@given(st.integers(EPOCH_MS, EPOCH_MS + 2 * 10**12), workers)
def test_lowest_id_at_is_a_time_cursor(ms: int, worker: int) -> None:
    """Every id issued at ms or later is >= lowest_id_at(ms); every id issued before is below."""
    before, after = SnowflakeGenerator(worker), SnowflakeGenerator(worker)
    assert after.next_id(ms) >= lowest_id_at(ms)
    if ms - 1 > EPOCH_MS:
        assert before.next_id(ms - 1) < lowest_id_at(ms)


@pytest.mark.parametrize("worker", [-1, MAX_WORKER + 1, 10**6])
def test_a_worker_out_of_range_is_refused(worker: int) -> None:
    with pytest.raises(ValueError, match="worker"):
        SnowflakeGenerator(worker)


def test_a_worker_out_of_range_is_refused_on_assignment_too() -> None:
    g = SnowflakeGenerator(3)
    with pytest.raises(ValueError, match="worker"):
        g.worker = MAX_WORKER + 1
    assert g.worker == 3


@pytest.mark.parametrize("worker", [0, 1, MAX_WORKER])
def test_workers_in_range_are_accepted(worker: int) -> None:
    assert SnowflakeGenerator(worker).worker == worker


@settings(max_examples=50, deadline=None)
@given(st.lists(ms_values, min_size=1, max_size=30), st.integers(0, MAX_WORKER - 1))
def test_two_workers_never_collide(now_ms: list[int], worker: int) -> None:
    a, b = SnowflakeGenerator(worker), SnowflakeGenerator(worker + 1)
    assert not {a.next_id(ms) for ms in now_ms} & {b.next_id(ms) for ms in now_ms}
