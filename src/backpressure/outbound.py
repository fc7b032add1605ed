"""One viewer's outbound bytes: bounded, dropping whole batches when full.

The room hands every viewer the same pre-encoded batch. A viewer whose socket takes it
at once never touches this queue's buffer. A viewer whose socket is full gets the rest
queued here, up to ``limit`` bytes; a batch that does not fit is dropped *whole* for
that viewer and its comments are counted as missed. Before the next batch that fits,
the queue inserts a gap notice (encoded by the transport's ``encode_gap``) so the viewer
knows how many it missed. The room never waits for a viewer.

A viewer that makes no progress at all for ``stuck_after`` seconds while bytes are
waiting is stuck: the shell disconnects it (it may come back with Last-Event-ID).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs


@attrs.define
class OutboundQueue:
    limit: int
    stuck_after: float
    encode_gap: Callable[[int], bytes]
    _chunks: list[bytes] | None = attrs.field(default=None, init=False)
    _offset: int = attrs.field(default=0, init=False)
    _size: int = attrs.field(default=0, init=False)
    _progress_at: float = attrs.field(default=0.0, init=False)
    missed: int = attrs.field(default=0, init=False)  # dropped, not yet told
    missed_total: int = attrs.field(default=0, init=False)
    gaps_sent: int = attrs.field(default=0, init=False)

    @property
    def empty(self) -> bool:
        return self._size == 0

    @property
    def size(self) -> int:
        """Bytes waiting."""
        return self._size

    @property
    def clear(self) -> bool:
        """Nothing waiting and nothing missed: a batch may be written straight to the socket."""
        return self._size == 0 and self.missed == 0

    def push(self, data: bytes, comments: int, now: float) -> bool:
        """Queue a whole batch, or drop it (False) when it does not fit."""
        gap = self.encode_gap(self.missed) if self.missed else b""
        if self._size + len(gap) + len(data) > self.limit:
            self.missed += comments
            self.missed_total += comments
            return False
        if gap:
            self._append(gap, now)
            self.missed = 0
            self.gaps_sent += 1
        self._append(data, now)
        return True

    def push_rest(self, data: bytes, now: float) -> None:
        """Queue the unsent tail of a batch already partly written: never dropped,
        since the stream must stay well-formed (a tail is at most one batch)."""
        self._append(data, now)

    def push_control(self, data: bytes, now: float) -> None:
        """Queue a small control frame (goaway, mode) regardless of the limit."""
        self._append(data, now)

    def peek(self) -> bytes | memoryview:
        """The next bytes to write (a view into the first chunk)."""
        if not self._chunks:
            return b""
        first = self._chunks[0]
        return memoryview(first)[self._offset :] if self._offset else first

    def consume(self, n: int, now: float) -> None:
        """``n`` bytes of ``peek()`` were written."""
        if n <= 0:
            return
        self._progress_at = now
        self._size -= n
        chunks = self._chunks
        assert chunks is not None
        self._offset += n
        while chunks and self._offset >= len(chunks[0]):
            self._offset -= len(chunks[0])
            del chunks[0]
        if not chunks:
            self._chunks = None
            self._offset = 0

    def flush_gap(self, now: float) -> bool:
        """After draining: queue the gap notice for what was missed (True if queued)."""
        if self._size == 0 and self.missed:
            self._append(self.encode_gap(self.missed), now)
            self.missed = 0
            self.gaps_sent += 1
            return True
        return False

    def stuck_deadline(self) -> float:
        """When the viewer counts as stuck if it makes no progress until then."""
        return self._progress_at + self.stuck_after

    def is_stuck(self, now: float) -> bool:
        return self._size > 0 and now >= self.stuck_deadline()

    def _append(self, data: bytes, now: float) -> None:
        if not data:
            return
        if self._chunks is None:
            self._chunks = [data]
            self._progress_at = now  # the stuck clock starts when bytes start waiting
        else:
            self._chunks.append(data)
        self._size += len(data)
