"""The ring: bounded, ordered by id, last(n), since(id) with TooOld, forget_before, remove."""

from __future__ import annotations

import itertools

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ringbuf import Ring, TooOld


@attrs.frozen
class Item:
    id: int
    tag: str = ""


def ids(items: object) -> list[int]:
    return [i.id for i in items]  # type: ignore[attr-defined]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Ring(0)
    assert Ring(1).capacity == 1


def test_an_empty_ring_answers_every_cursor() -> None:
    r: Ring[Item] = Ring(3)
    assert len(r) == 0
    assert r.newest_id is None
    assert r.last(5) == []
    assert r.since(-1) == []
    assert r.since(10**9) == []
    assert r.get(1) is None
    assert r.remove(1) is None


def test_appending_past_capacity_evicts_the_oldest() -> None:
    r: Ring[Item] = Ring(3)
    for i in range(1, 6):
        assert r.append(Item(i))
    assert ids(r) == [3, 4, 5]
    assert r.evicted_max == 2
    assert r.newest_id == 5


def test_out_of_order_items_are_inserted_in_place() -> None:
    r: Ring[Item] = Ring(10)
    for i in (5, 1, 9, 3, 7):
        assert r.append(Item(i))
    assert ids(r) == [1, 3, 5, 7, 9]


def test_duplicates_are_refused_and_keep_the_first_item() -> None:
    r: Ring[Item] = Ring(10)
    assert r.append(Item(5, "first"))
    assert r.append(Item(7))
    assert not r.append(Item(5, "second"))
    assert not r.append(Item(7, "second"))
    assert r.get(5) == Item(5, "first")
    assert len(r) == 2


def test_items_older_than_an_evicted_item_are_refused() -> None:
    r: Ring[Item] = Ring(2)
    r.extend([Item(10), Item(20), Item(30)])  # 10 is evicted
    assert not r.append(Item(5))
    assert not r.append(Item(10))
    assert ids(r) == [20, 30]
    assert r.evicted_max == 10


def test_an_item_older_than_all_of_a_full_ring_is_accepted_and_evicted_at_once() -> None:
    r: Ring[Item] = Ring(2)
    r.extend([Item(10), Item(20), Item(30)])  # 10 is evicted
    assert r.append(Item(15))  # new (newer than anything evicted), but the oldest: it goes first
    assert ids(r) == [20, 30]
    assert r.evicted_max == 15
    with pytest.raises(TooOld):
        r.since(14)


def test_last_returns_the_newest_n_oldest_first() -> None:
    r: Ring[Item] = Ring(10)
    r.extend([Item(i) for i in range(1, 8)])
    assert ids(r.last(3)) == [5, 6, 7]
    assert ids(r.last(100)) == list(range(1, 8))
    assert r.last(0) == []
    assert r.last(-4) == []


def test_since_returns_everything_after_the_cursor() -> None:
    r: Ring[Item] = Ring(10)
    r.extend([Item(i) for i in (2, 4, 6, 8)])
    assert ids(r.since(4)) == [6, 8]
    assert ids(r.since(5)) == [6, 8]
    assert ids(r.since(0)) == [2, 4, 6, 8]
    assert r.since(8) == []


def test_since_raises_too_old_once_something_after_the_cursor_was_evicted() -> None:
    r: Ring[Item] = Ring(3)
    r.extend([Item(i) for i in range(1, 6)])  # 1 and 2 evicted
    with pytest.raises(TooOld):
        r.since(1)
    with pytest.raises(TooOld):
        r.since(0)
    assert ids(r.since(2)) == [3, 4, 5]  # nothing after 2 was lost


def test_forget_before_makes_older_cursors_too_old() -> None:
    r: Ring[Item] = Ring(10)
    r.extend([Item(i) for i in (101, 102, 103)])
    r.forget_before(100)
    assert ids(r.since(100)) == [101, 102, 103]
    with pytest.raises(TooOld):
        r.since(99)
    assert not r.append(Item(50))
    r.forget_before(10)  # never lowers the bar
    assert r.evicted_max == 100


def test_remove_takes_an_item_out_without_making_cursors_too_old() -> None:
    r: Ring[Item] = Ring(10)
    r.extend([Item(i) for i in (1, 2, 3)])
    assert r.remove(2) == Item(2)
    assert r.remove(2) is None
    assert ids(r.since(0)) == [1, 3]
    assert r.get(2) is None
    assert r.append(Item(2))  # it may come back: nothing was evicted
    assert ids(r) == [1, 2, 3]


def test_iterating_is_a_snapshot() -> None:
    r: Ring[Item] = Ring(10)
    r.extend([Item(1), Item(2)])
    seen = []
    for item in r:
        seen.append(item.id)
        r.append(Item(item.id + 10))
    assert seen == [1, 2]


class RingModel(RuleBasedStateMachine):
    """The ring against a reference: every item ever accepted, the ids evicted, the held set.

    The reference keeps no order tricks: held items in a dict, ``since`` by filtering, and
    the too-old bar as the highest evicted (or forgotten) id.
    """

    @initialize(capacity=st.integers(1, 8))
    def start(self, capacity: int) -> None:
        self.ring: Ring[Item] = Ring(capacity)
        self.capacity = capacity
        self.held: dict[int, Item] = {}
        self.evicted: set[int] = set()
        self.bar = -1  # highest id evicted or forgotten
        self.serial = 0

    def _evict_if_full(self) -> None:
        if len(self.held) > self.capacity:
            oldest = min(self.held)
            del self.held[oldest]
            self.evicted.add(oldest)
            self.bar = max(self.bar, oldest)

    @rule(item_id=st.integers(0, 60))
    def append(self, item_id: int) -> None:
        self.serial += 1
        item = Item(item_id, str(self.serial))
        accepted = self.ring.append(item)
        want = item_id > self.bar and item_id not in self.held
        assert accepted == want
        if want:
            self.held[item_id] = item
            self._evict_if_full()

    @rule(item_ids=st.lists(st.integers(0, 60), max_size=6))
    def extend(self, item_ids: list[int]) -> None:
        items = []
        for i in item_ids:
            self.serial += 1
            items.append(Item(i, str(self.serial)))
        self.ring.extend(items)
        for item in items:
            if item.id > self.bar and item.id not in self.held:
                self.held[item.id] = item
                self._evict_if_full()

    @rule(n=st.integers(-2, 12))
    def last(self, n: int) -> None:
        want = [self.held[i] for i in sorted(self.held)]
        want = want[-n:] if n > 0 else []
        assert self.ring.last(n) == want

    @rule(after=st.integers(-2, 62))
    def since(self, after: int) -> None:
        lost_after = any(e > after for e in self.evicted) or self.bar > after
        if lost_after:
            with pytest.raises(TooOld):
                self.ring.since(after)
        else:
            assert self.ring.since(after) == [self.held[i] for i in sorted(self.held) if i > after]

    @rule(item_id=st.integers(-2, 62))
    def forget_before(self, item_id: int) -> None:
        self.ring.forget_before(item_id)
        self.bar = max(self.bar, item_id)

    @rule(item_id=st.integers(0, 60))
    def remove(self, item_id: int) -> None:
        assert self.ring.remove(item_id) == self.held.pop(item_id, None)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data())
    def remove_held(self, data: st.DataObject) -> None:
        item_id = data.draw(st.sampled_from(sorted(self.held)))
        assert self.ring.remove(item_id) == self.held.pop(item_id)

    @rule(item_id=st.integers(0, 60))
    def get(self, item_id: int) -> None:
        assert self.ring.get(item_id) == self.held.get(item_id)

    @invariant()
    def matches_the_reference(self) -> None:
        # bounded, sorted, unique, exactly the held items, and the same too-old bar
        got = ids(self.ring)
        assert len(got) <= self.capacity
        assert all(a < b for a, b in itertools.pairwise(got))
        assert list(self.ring) == [self.held[i] for i in sorted(self.held)]
        assert not (self.evicted & set(self.held))
        assert self.ring.newest_id == (max(self.held) if self.held else None)
        assert self.ring.evicted_max == self.bar


RingModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestRingModel = RingModel.TestCase


@settings(max_examples=75, deadline=None)
@given(st.integers(1, 20), st.lists(st.integers(0, 10**6), max_size=80))
def test_random_appends_keep_the_newest_capacity_items_of_what_was_accepted(capacity: int, stream: list[int]) -> None:
    """Appending in any order keeps the ring a sorted, bounded suffix of everything accepted."""
    r: Ring[Item] = Ring(capacity)
    accepted: set[int] = set()
    for i in stream:
        if r.append(Item(i)):
            accepted.add(i)
    held = ids(r)
    assert held == sorted(accepted)[-capacity:]
    # every refused id is a duplicate or at most the bar
    for i in set(stream) - accepted:
        assert i <= r.evicted_max
