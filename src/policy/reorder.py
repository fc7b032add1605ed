"""Per-key hold-and-release in id order: the cluster bus's reorder buffer (sans-IO).

Items (comments) carry increasing ids whose embedded time (``stamp_ms``, the Snowflake
time) says when they were issued; publishers on several hosts finish out of order. An
item is held until the caller's clock passes ``stamp_ms + hold_ms`` and then released
with everything else due, in (release time, id) order, so within one key in id order.
``adapters.redis.bus`` explains why that is enough (Redis refuses ids outside a
window of its own clock) and owns the timer: it calls ``due(now_ms)`` at
``next_release_ms()`` and after every ``add``.

A key is open (``open``) while somebody listens to it; items for other keys are refused.
Each key remembers the last ``seen_kept`` ids it released or dropped, to refuse
duplicates (the live feed and a backfill may bring the same item). An item that arrives
after a higher id of its key was released is still released (late, counted in
``late``): losing it would be worse than delivering it out of order.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Generic, TypeVar

import attrs

T = TypeVar("T")

SEEN_KEPT = 4096  # ids released (or dropped) per key remembered for de-duplication


@attrs.define
class Channel(Generic[T]):
    """One open key. Ids up to ``cursor`` reach its listeners by other means (a read of the
    store); the buffer brings what comes after (``read_from``)."""

    cursor: int
    seen_kept: int = SEEN_KEPT
    held: dict[int, T] = attrs.field(factory=dict)  # id -> item, waiting for release
    seen: set[int] = attrs.field(factory=set)
    seen_order: deque[int] = attrs.field(factory=deque)
    last_released: int | None = None

    def read_from(self) -> int:
        """Listeners read the store up to here; the buffer brings what comes after."""
        return self.cursor if self.last_released is None else max(self.cursor, self.last_released)

    def remember(self, item_id: int) -> None:
        self.seen.add(item_id)
        self.seen_order.append(item_id)
        if len(self.seen_order) > self.seen_kept:
            self.seen.discard(self.seen_order.popleft())


class ReorderBuffer(Generic[T]):
    """Hold items per key until ``stamp_ms + hold_ms``, release them in id order."""

    def __init__(self, hold_ms: int, *, seen_kept: int = SEEN_KEPT) -> None:
        if hold_ms < 0 or seen_kept < 1:
            raise ValueError("hold_ms must be >= 0 and seen_kept positive")
        self.hold_ms = hold_ms
        self.seen_kept = seen_kept
        self.channels: dict[str, Channel[T]] = {}
        self._heap: list[tuple[int, int, str]] = []  # (release at ms, id, key)
        self.late = 0  # items released after a higher id of their key

    def open(self, key: str, cursor: int) -> Channel[T]:
        """Start holding items of ``key`` (a fresh channel: nothing held, nothing seen)."""
        ch = self.channels[key] = Channel(cursor, self.seen_kept)
        return ch

    def close(self, key: str) -> None:
        """Stop: what is held for ``key`` is never released."""
        self.channels.pop(key, None)

    @property
    def held(self) -> int:
        """Entries waiting in the timer heap (dropped and closed ones leave at their time)."""
        return len(self._heap)

    def add(self, key: str, item_id: int, stamp_ms: int, item: T) -> bool:
        """Hold an item; False if it is a duplicate or the key is not open."""
        ch = self.channels.get(key)
        if ch is None or item_id in ch.held or item_id in ch.seen:
            return False
        ch.held[item_id] = item
        heapq.heappush(self._heap, (stamp_ms + self.hold_ms, item_id, key))
        return True

    def drop(self, key: str, item_id: int) -> None:
        """A removal: an item still held is never released (nor accepted again)."""
        ch = self.channels.get(key)
        if ch is not None and ch.held.pop(item_id, None) is not None:
            ch.remember(item_id)

    def next_release_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def due(self, now_ms: int) -> list[tuple[str, T]]:
        """Items whose hold is over at ``now_ms``, in (time, id) order: per key, id order."""
        out: list[tuple[str, T]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            _, item_id, key = heapq.heappop(heap)
            ch = self.channels.get(key)
            if ch is None:
                continue
            item = ch.held.pop(item_id, None)
            if item is None:
                continue
            if ch.last_released is not None and item_id < ch.last_released:
                self.late += 1
            else:
                ch.last_released = item_id
            ch.remember(item_id)
            out.append((key, item))
        return out
