"""The bus's reorder buffer (``policy.reorder``): hold until stamp + hold, release per key
in id order, refuse duplicates, never release a dropped item or a closed key's items."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from policy.reorder import ReorderBuffer

HOLD = 10


@attrs.frozen
class Item:
    key: str
    id: int
    serial: int


def test_an_item_waits_for_its_stamp_plus_the_hold() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(HOLD)
    buf.open("v", cursor=0)
    assert buf.add("v", 7, 100, "seven")
    assert buf.next_release_ms() == 110
    assert buf.due(109) == []
    assert buf.due(110) == [("v", "seven")]
    assert buf.next_release_ms() is None


def test_out_of_order_arrivals_leave_in_id_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(HOLD)
    buf.open("v", cursor=0)
    for i in (5, 3, 4, 1):
        assert buf.add("v", i, i, i)
    assert [item for _, item in buf.due(100)] == [1, 3, 4, 5]
    assert buf.channels["v"].read_from() == 5 and buf.late == 0


def test_unopened_keys_duplicates_and_dropped_items_are_refused() -> None:
    buf: ReorderBuffer[str] = ReorderBuffer(HOLD)
    assert not buf.add("v", 1, 0, "x")  # nobody listens
    buf.open("v", cursor=0)
    assert buf.add("v", 1, 0, "x")
    assert not buf.add("v", 1, 0, "again")  # held
    buf.drop("v", 1)
    assert not buf.add("v", 1, 0, "again")  # dropped: remembered
    assert buf.due(100) == []
    assert buf.add("v", 2, 0, "y") and buf.due(100) == [("v", "y")]
    assert not buf.add("v", 2, 0, "y")  # released: remembered


def test_a_late_item_is_still_released_and_counted() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(HOLD)
    buf.open("v", cursor=0)
    buf.add("v", 9, 0, 9)
    assert buf.due(HOLD) == [("v", 9)]
    buf.add("v", 4, 0, 4)
    assert buf.due(HOLD) == [("v", 4)]
    assert buf.late == 1 and buf.channels["v"].last_released == 9


def test_a_closed_key_releases_nothing() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(HOLD)
    buf.open("v", cursor=0)
    buf.add("v", 1, 0, 1)
    buf.close("v")
    assert buf.due(100) == [] and buf.held == 0


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        ReorderBuffer(-1)
    with pytest.raises(ValueError):
        ReorderBuffer(10, seen_kept=0)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_items_that_arrive_within_the_hold_are_released_in_id_order_per_key(data: st.DataObject) -> None:
    """The guarantee the bus relies on: ids whose stamps increase with them, each arriving
    before its stamp + hold (any order, any key), leave each key in id order, none late."""
    ids = data.draw(st.lists(st.integers(0, 500), min_size=1, max_size=60, unique=True))
    arrivals = []
    for i in ids:
        key = data.draw(st.sampled_from("abc"))
        arrive_at = i + data.draw(st.integers(0, HOLD - 1))  # stamp = id; before stamp + HOLD
        arrivals.append((arrive_at, i, key))
    arrivals.sort()
    buf: ReorderBuffer[int] = ReorderBuffer(HOLD)
    for k in "abc":
        buf.open(k, cursor=-1)
    released: dict[str, list[int]] = {k: [] for k in "abc"}
    for arrive_at, i, key in arrivals:
        for k, item in buf.due(arrive_at):
            released[k].append(item)
        assert buf.add(key, i, i, i)
    for k, item in buf.due(10**9):
        released[k].append(item)
    for k in "abc":
        assert released[k] == sorted(i for _, i, key in arrivals if key == k)
    assert buf.late == 0


class ReorderModel(RuleBasedStateMachine):
    """The buffer against a reference: the held items, their release times, what each key
    has seen (a bounded memory), and the heap entries still to come due."""

    @initialize(seen_kept=st.integers(1, 6))
    def start(self, seen_kept: int) -> None:
        self.buf: ReorderBuffer[Item] = ReorderBuffer(HOLD, seen_kept=seen_kept)
        self.seen_kept = seen_kept
        self.now = 0
        self.serial = 0
        self.open: dict[str, dict[int, tuple[int, Item]]] = {}  # key -> id -> (release at, item)
        self.seen: dict[str, list[int]] = {}  # key -> ids remembered, oldest first
        self.last: dict[str, int | None] = {}
        self.entries: list[tuple[int, int, str]] = []  # heap entries not due yet
        self.late = 0

    def _remember(self, key: str, item_id: int) -> None:
        seen = self.seen[key]
        seen.append(item_id)
        if len(seen) > self.seen_kept:
            seen.pop(0)

    @rule(dt=st.integers(0, 8))
    def tick(self, dt: int) -> None:
        self.now += dt

    @rule(key=st.sampled_from("abc"), cursor=st.integers(0, 5))
    def open_key(self, key: str, cursor: int) -> None:
        self.buf.open(key, cursor)
        self.open[key], self.seen[key], self.last[key] = {}, [], None
        assert self.buf.channels[key].read_from() == cursor

    @rule(key=st.sampled_from("abc"))
    def close_key(self, key: str) -> None:
        self.buf.close(key)
        self.open.pop(key, None)

    @rule(key=st.sampled_from("abcd"), item_id=st.integers(0, 30), back=st.integers(-5, 15))
    def add(self, key: str, item_id: int, back: int) -> None:
        stamp = self.now - back  # mostly in the past, sometimes ahead (clock skew)
        self.serial += 1
        item = Item(key, item_id, self.serial)
        expect = key in self.open and item_id not in self.open[key] and item_id not in self.seen[key]
        assert self.buf.add(key, item_id, stamp, item) == expect
        if expect:
            self.open[key][item_id] = (stamp + HOLD, item)
            self.entries.append((stamp + HOLD, item_id, key))

    @rule(key=st.sampled_from("abcd"), item_id=st.integers(0, 30))
    def drop(self, key: str, item_id: int) -> None:
        self.buf.drop(key, item_id)
        if key in self.open and self.open[key].pop(item_id, None) is not None:
            self._remember(key, item_id)

    @rule()
    def release(self) -> None:
        got = self.buf.due(self.now)
        due = sorted(e for e in self.entries if e[0] <= self.now)
        self.entries = [e for e in self.entries if e[0] > self.now]
        expected: list[tuple[str, Item]] = []
        for _at, item_id, key in due:
            held = self.open.get(key, {}).pop(item_id, None)
            if held is None:
                continue  # dropped, released by an earlier entry, or its key was closed
            last = self.last[key]
            if last is not None and item_id < last:
                self.late += 1
            else:
                self.last[key] = item_id
            self._remember(key, item_id)
            expected.append((key, held[1]))
        assert got == expected
        for key, item in got:
            assert item.key == key

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def read_from_follows_the_last_release(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.open)))
        ch = self.buf.channels[key]
        last = self.last[key]
        assert ch.read_from() == (ch.cursor if last is None else max(ch.cursor, last))

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.buf.late == self.late
        assert self.buf.held == len(self.entries)
        assert self.buf.next_release_ms() == (min(self.entries)[0] if self.entries else None)
        assert set(self.buf.channels) == set(self.open)
        for key, held in self.open.items():
            assert self.buf.channels[key].held == {i: item for i, (_, item) in held.items()}
            assert self.buf.channels[key].seen == set(self.seen[key])


ReorderModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestReorderModel = ReorderModel.TestCase
