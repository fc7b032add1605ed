"""The recent-comments ring of one video: sans-IO, bounded, ordered by id.

``Ring`` keeps the newest ``capacity`` items in id order. It answers the three cursor
questions that the stream endpoints ask: the last N (backlog), everything after an id
(``Last-Event-ID`` replay), and whether an id is too old to replay from the ring (some
item after it was already evicted). Items are any objects with an ``id: int``.

When full, appending evicts the oldest item; that decision is the point of a ring.
Items arriving out of order (ids from several ingest nodes) are inserted in place; an
item older than everything the ring has evicted is refused (``append`` returns False),
since keeping it would break the too-old rule.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Generic, Protocol, TypeVar


class HasId(Protocol):
    @property
    def id(self) -> int: ...


T = TypeVar("T", bound=HasId)


class TooOld(Exception):
    """Items after the cursor were evicted: the ring cannot replay from it."""


class Ring(Generic[T]):
    __slots__ = ("_capacity", "_evicted_max", "_ids", "_items")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._ids: list[int] = []
        self._items: list[T] = []
        self._evicted_max = -1  # the highest id ever evicted or refused; -1: none

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    @property
    def newest_id(self) -> int | None:
        return self._ids[-1] if self._ids else None

    @property
    def evicted_max(self) -> int:
        return self._evicted_max

    def append(self, item: T) -> bool:
        """Add an item; False if it was a duplicate or older than an evicted item."""
        i = item.id
        if i <= self._evicted_max:
            return False
        if not self._ids or i > self._ids[-1]:
            self._ids.append(i)
            self._items.append(item)
        else:
            pos = bisect.bisect_left(self._ids, i)
            if pos < len(self._ids) and self._ids[pos] == i:
                return False
            self._ids.insert(pos, i)
            self._items.insert(pos, item)
        if len(self._ids) > self._capacity:
            self._evicted_max = max(self._evicted_max, self._ids[0])
            del self._ids[0]
            del self._items[0]
        return True

    def extend(self, items: Sequence[T]) -> None:
        for item in items:
            self.append(item)

    def last(self, n: int) -> list[T]:
        """The newest ``n`` items, oldest first."""
        if n <= 0:
            return []
        return self._items[-n:]

    def since(self, after_id: int) -> list[T]:
        """Every item with id > after_id, oldest first; TooOld if the ring lost some."""
        if after_id < self._evicted_max:
            raise TooOld(after_id)
        pos = bisect.bisect_right(self._ids, after_id)
        return self._items[pos:]

    def forget_before(self, item_id: int) -> None:
        """Declare that items with id <= ``item_id`` may exist but are not held (a ring
        seeded with the newest part of a longer history): cursors below it are too old."""
        self._evicted_max = max(self._evicted_max, item_id)

    def get(self, item_id: int) -> T | None:
        pos = bisect.bisect_left(self._ids, item_id)
        if pos < len(self._ids) and self._ids[pos] == item_id:
            return self._items[pos]
        return None

    def remove(self, item_id: int) -> T | None:
        """Take an item out (moderation). Later cursors still work: nothing was evicted."""
        pos = bisect.bisect_left(self._ids, item_id)
        if pos < len(self._ids) and self._ids[pos] == item_id:
            del self._ids[pos]
            return self._items.pop(pos)
        return None
