"""One viewer's outbound bytes: bounded, dropping whole batches when full.

The room hands every viewer the same pre-encoded batch. A viewer whose socket takes it
at once never touches this queue's buffer. A viewer whose socket is full gets the rest
queued here, up to ``limit`` bytes; a batch that does not fit is dropped *whole* for
that viewer and its comments are counted as missed. Before the next batch that fits,
the queue inserts a gap notice (encoded by the transport's ``encode_gap``) so the viewer
knows how many it missed. The room never waits for a viewer.

A viewer that makes no progress at all for ``stuck_after`` seconds while bytes are
waiting is stuck: the shell disconnects it (it may come back with Last-Event-ID).

Besides batches, three kinds of bytes come in, each bounded its own way:

- a batch that must not be dropped (``push_rest``): the unsent part of one the shell
  started writing itself while the queue was clear (the stream must stay well-formed,
  and nothing may go out before the rest of that frame), or a viewer's opening; at most
  one batch;
- small server-originated control frames (mode, goaway, close: ``push_control``): never
  dropped, but allowed only ``control_slack`` bytes beyond ``limit``; past that the push
  is refused and the shell closes the viewer (a viewer that far behind is gone anyway);
- a WebSocket pong (``push_pong``): at most one waits. A newer pong replaces one not yet
  started (RFC 6455 5.5.3 allows answering only the latest ping), and a waiting pong
  goes out at the next frame boundary, ahead of queued batches, so a ping flood from a
  client that does not read costs one frame of memory.

``full`` tells the shell to stop reading the viewer's input: it holds while anything
waits (bytes, or a gap notice owed). What a client sends is answered through this
queue, so a client that does not read its answers gets none of its input read either.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

# Bytes of control frames a queue takes beyond its limit (some mode, goaway and close
# frames; each is well under 200 bytes).
CONTROL_SLACK = 4096


@attrs.define
class OutboundQueue:
    limit: int
    stuck_after: float
    encode_gap: Callable[[int], bytes]
    control_slack: int = CONTROL_SLACK
    _chunks: list[bytes] | None = attrs.field(default=None, init=False)
    _pong: bytes | None = attrs.field(default=None, init=False)  # waiting, not started
    _offset: int = attrs.field(default=0, init=False)
    _size: int = attrs.field(default=0, init=False)
    _progress_at: float = attrs.field(default=0.0, init=False)
    missed: int = attrs.field(default=0, init=False)  # dropped, not yet told
    missed_total: int = attrs.field(default=0, init=False)
    gaps_sent: int = attrs.field(default=0, init=False)
    pongs_replaced: int = attrs.field(default=0, init=False)

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

    @property
    def full(self) -> bool:
        """The socket does not take what we have for this viewer (bytes wait, or a gap
        notice is owed): read nothing more from it until this clears."""
        return not self.clear

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

    def push_rest(self, data: bytes, now: float, written: int = 0) -> None:
        """Queue a batch that is never dropped: the stream must stay well-formed. With
        ``written`` > 0, the caller wrote that much of it straight to the socket, which
        it may only do on an empty queue; the rest is then the frame in progress (not
        even a pong goes before it)."""
        if written <= 0:
            self._append(data, now)
            return
        if self._size:
            raise ValueError("a batch partly written while bytes were waiting")
        if written < len(data):
            self._progress_at = now  # the stuck clock starts when bytes start waiting
            self._chunks = [data]
            self._offset = written
            self._size = len(data) - written

    def push_control(self, data: bytes, now: float) -> bool:
        """Queue a small server-originated control frame (mode, goaway, close) that must
        not be dropped: up to ``control_slack`` bytes beyond the limit. False when it does
        not fit even so: nothing is queued, and the caller closes the viewer."""
        if self._size + len(data) > self.limit + self.control_slack:
            return False
        self._append(data, now)
        return True

    def push_pong(self, data: bytes, now: float) -> None:
        """Queue a pong: it replaces a waiting one that has not started going out, and goes
        out at the next frame boundary, ahead of queued chunks."""
        if not data:
            return
        if self._pong is not None:
            self._size -= len(self._pong)
            self.pongs_replaced += 1
        elif self._size == 0:
            self._progress_at = now  # the stuck clock starts when bytes start waiting
        self._pong = data
        self._size += len(data)

    def peek(self) -> bytes | memoryview:
        """The next bytes to write (a view into the first chunk)."""
        if self._pong is not None and self._offset == 0:
            return self._pong
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
        pong = self._pong
        if pong is not None and self._offset == 0:
            # peek() offered the waiting pong. Partly written, it becomes the chunk in
            # progress (no longer replaceable); a later pong waits in the slot again.
            self._pong = None
            if n < len(pong):
                if self._chunks is None:
                    self._chunks = [pong]
                else:
                    self._chunks.insert(0, pong)
                self._offset = n
            return
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
        if self._size == 0:
            self._progress_at = now  # the stuck clock starts when bytes start waiting
        if self._chunks is None:
            self._chunks = [data]
        else:
            self._chunks.append(data)
        self._size += len(data)
