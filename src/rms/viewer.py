"""A viewer as the room sees it: somewhere to deliver pre-encoded bytes without waiting.

``SocketViewer`` (the lean path) writes a batch with one non-blocking ``send()``. Only
when the kernel buffer is full does the rest go to the viewer's bounded
``OutboundQueue`` and a drainer task start in the front door's nursery; that task
waits for the socket to become writable and exits when the queue is empty, or closes
the connection when the viewer makes no progress for ``stuck_s`` seconds.

``QueueViewer`` (Quart's SSE route, for a stream request on a connection Hypercorn
already owns) queues every batch and wakes the one task that writes through the
framework.

What goes to a viewer, and what happens when it does not fit:
- ``open``: the opening (backlog or replay), once, on a clear queue: never dropped;
- ``deliver``: batches of comments, and answers to what a client asked (replays,
  errors): dropped whole when they do not fit, counted as missed, told with ``gap``;
- ``control``: small server-originated frames (mode, goaway, remove for an author,
  close): never dropped, bounded by the queue's control slack; past it the viewer is
  closed (see ``OutboundQueue.push_control``);
- ``pong``: at most one waits; a newer one replaces it.

``QueueViewer``'s stuck rule is the connection's: the framework hands the bytes to
Hypercorn, which writes them in a shielded scope, and the stream under it
(``transport.handoff.GuardedStream``) aborts a write that makes no progress for
``stuck_s``; the queue only bounds what waits meanwhile (and drops).
"""

from __future__ import annotations

import socket
import struct

import trio

from backpressure.outbound import OutboundQueue
from domain.metrics import Metrics
from rms.frames import Encoding, gap_encoder

# After a partial send, a drainer waits this long before trying again (one busy flush
# interval): slow readers are written in fewer, larger sends.
DRAIN_PAUSE_S = 0.05

# SO_LINGER on, 0 s: close() sends a reset and drops the unsent bytes.
LINGER_RESET = struct.pack("ii", 1, 0)


class Viewer:
    """The base: identity, encoding, queue and the delivery counters."""

    __slots__ = ("closed", "encoding", "queue", "scope", "shard", "user_id")

    def __init__(self, user_id: str | None, encoding: Encoding, limit: int, stuck_s: float) -> None:
        self.user_id = user_id
        self.encoding = encoding
        self.shard = 0  # the shard of a spread video it came through (set by Room.join)
        self.queue = OutboundQueue(limit, stuck_s, gap_encoder(encoding))
        self.closed = False
        # The connection's cancel scope: closing the viewer ends its connection task.
        self.scope: trio.CancelScope | None = None

    def deliver(self, data: bytes, comments: int, now: float) -> None:
        raise NotImplementedError

    def open(self, data: bytes, now: float) -> None:
        """The opening bytes (backlog or replay): never dropped."""
        raise NotImplementedError

    def control(self, data: bytes, now: float) -> None:
        """A small server-originated frame that must not be dropped (mode, goaway, close);
        a viewer too far behind to take it is closed."""
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.scope is not None:
                self.scope.cancel()


class SocketViewer(Viewer):
    __slots__ = ("_drained", "draining", "nursery", "sock", "stats")

    def __init__(
        self,
        sock: socket.socket,
        nursery: trio.Nursery,
        user_id: str | None,
        encoding: Encoding,
        limit: int,
        stuck_s: float,
        stats: Metrics,
    ) -> None:
        super().__init__(user_id, encoding, limit, stuck_s)
        self.sock = sock
        self.nursery = nursery
        self.draining = False
        self.stats = stats
        self._drained: trio.Event | None = None  # set when the queue clears (the reader waits on it)

    def deliver(self, data: bytes, comments: int, now: float) -> None:
        if self.closed:
            return
        q = self.queue
        if not q.clear:
            if not q.push(data, comments, now):
                self.stats.dropped(comments)
            self._drain()
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        if n < len(data):
            q.push_rest(data, now, written=n)
            self._drain()

    def open(self, data: bytes, now: float) -> None:
        if self.queue.clear:
            self.deliver(data, 0, now)  # written at once; an unsent tail is queued whole
        elif not self.closed:
            self.queue.push_rest(data, now)
            self._drain()

    def control(self, data: bytes, now: float) -> None:
        if self.closed or not data:
            return
        if self.queue.clear:
            self.deliver(data, 0, now)
        elif self.queue.push_control(data, now):
            self._drain()
        else:
            # Even a control frame does not fit: this viewer has not read for a long
            # while. Nothing more would reach it in order; reconnecting is its way back.
            self.stats.overflow()
            self.abort()

    def pong(self, data: bytes, now: float) -> None:
        """A WebSocket pong: at once if nothing waits, else the one waiting pong."""
        if self.closed or not data:
            return
        if self.queue.clear:
            self.deliver(data, 0, now)
        else:
            self.queue.push_pong(data, now)
            self._drain()

    async def wait_drained(self) -> None:
        """Return once the socket took everything queued for this viewer (at once when it
        did already). The connection's reader waits here before it reads more input:
        a client that does not read our answers gets nothing more read."""
        if self.queue.full and not self.closed:
            self.stats.reads_paused()
        while self.queue.full and not self.closed:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    def abort(self) -> None:
        """Close with a reset, not a FIN. A FIN would queue behind the unsent bytes of a
        reader that no longer reads, so it would never arrive, and the kernel would keep
        the orphaned socket and its buffers for minutes; a reset frees both at once."""
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            except OSError:
                pass
        self.close()

    def _drain(self) -> None:
        if not self.draining and not self.closed:
            self.draining = True
            self.nursery.start_soon(self._drain_task)

    async def _drain_task(self) -> None:
        q, sock = self.queue, self.sock
        try:
            while not self.closed:
                if q.empty and not q.flush_gap(trio.current_time()):
                    return
                try:
                    with trio.move_on_at(q.stuck_deadline()):
                        await trio.lowlevel.wait_writable(sock)
                except (trio.ClosedResourceError, OSError, ValueError):
                    self.close()  # the connection closed the socket under us
                    return
                now = trio.current_time()
                if q.is_stuck(now):
                    self.stats.stuck()
                    self.abort()
                    return
                data = q.peek()
                try:
                    n = sock.send(data)
                except BlockingIOError:
                    continue
                except OSError:
                    self.close()
                    return
                q.consume(n, now)
                if n < len(data):
                    # The kernel buffer is full again: give the reader time to catch up
                    # instead of waking for every few bytes it frees (a slow reader would
                    # otherwise cost the loop a wakeup and a send per read it makes).
                    await trio.sleep(DRAIN_PAUSE_S)
        finally:
            self.draining = False
            if self._drained is not None:
                self._drained.set()
                self._drained = None


class QueueViewer(Viewer):
    """Everything goes through the queue; one framework task writes it out."""

    __slots__ = ("stats", "wake")

    def __init__(self, user_id: str | None, encoding: Encoding, limit: int, stuck_s: float, stats: Metrics) -> None:
        super().__init__(user_id, encoding, limit, stuck_s)
        self.wake = trio.Event()
        self.stats = stats

    def deliver(self, data: bytes, comments: int, now: float) -> None:
        if self.closed:
            return
        if not self.queue.push(data, comments, now):
            self.stats.dropped(comments)
        self.wake.set()

    def open(self, data: bytes, now: float) -> None:
        if not self.closed and data:
            self.queue.push_rest(data, now)  # the one opening: never dropped
            self.wake.set()

    def control(self, data: bytes, now: float) -> None:
        if self.closed or not data:
            return
        if not self.queue.push_control(data, now):
            self.stats.overflow()
            self.close()
        self.wake.set()

    def close(self) -> None:
        super().close()
        self.wake.set()

    async def next_bytes(self) -> bytes | None:
        """Everything waiting (waits for some); None once the viewer is closed."""
        q = self.queue
        while True:
            if q.empty:
                q.flush_gap(trio.current_time())
            if not q.empty:
                parts = []
                while not q.empty:
                    part = bytes(q.peek())
                    q.consume(len(part), trio.current_time())
                    parts.append(part)
                return b"".join(parts)
            if self.closed:
                return None
            self.wake = trio.Event()
            await self.wake.wait()
