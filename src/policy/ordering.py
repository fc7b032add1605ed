"""Publishing a process's comments in id order.

Ids are issued in increasing order, but the stores finish in any order (a group commit
wakes its posters in no particular order; a CQL write may be retried), so publishing
each comment when its own store call returns would let a viewer see a newer comment
before an older one. ``PublishOrder`` holds a finished comment back until every comment
with a lower id issued by this process has finished too (stored, or failed and never to
be published). Sans-IO: the caller owns the waiting.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class PublishOrder(Generic[T]):
    def __init__(self) -> None:
        self._inflight: deque[int] = deque()  # ids begun and not yet released, ascending
        self._finished: dict[int, T | None] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def begin(self, item_id: int) -> None:
        """Call as the id is issued, before any await, so ids enter in ascending order."""
        if self._inflight and item_id <= self._inflight[-1]:
            raise ValueError("ids must be begun in ascending order")
        self._inflight.append(item_id)

    def finish(self, item_id: int, item: T | None) -> list[T]:
        """``item`` is ready (None: it failed). Returns what may now be published, in order."""
        self._finished[item_id] = item
        out: list[T] = []
        while self._inflight and self._inflight[0] in self._finished:
            ready = self._finished.pop(self._inflight.popleft())
            if ready is not None:
                out.append(ready)
        return out
