"""A delaying TCP proxy: the inter-region link of ``cluster up --regions N`` (dev tooling).

Each byte read from one side is written to the other ``delay_s`` later (both ways, so a
round trip costs twice the delay), in order. It counts the bytes it carried (the
regions test shows that cross-region traffic follows comments, not viewers), and can be
cut (``set_down(True)``: open connections are closed and new ones are closed at once,
as a link loss looks to a client) and restored.

Bounded: per connection and direction at most ``QUEUE_CHUNKS`` reads of up to
``CHUNK`` bytes wait for their time; when that is full the proxy stops reading that side
(TCP back-pressure does the rest). At most ``max_connections`` connections at a time;
more are closed at once. Owned by the caller's nursery (``run``).
"""

from __future__ import annotations

import logging

import trio

log = logging.getLogger("livecomments.delay_proxy")

CHUNK = 65536
QUEUE_CHUNKS = 64


class DelayProxy:
    def __init__(self, target_host: str, target_port: int, delay_s: float, *, max_connections: int = 256) -> None:
        if delay_s < 0 or max_connections < 1:
            raise ValueError("delay_s must be >= 0 and max_connections >= 1")
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.max_connections = max_connections
        self.port = 0
        self.bytes = 0  # carried, both directions
        self.connections = 0  # accepted and connected to the target, in all
        self.down = False
        self._live: set[trio.CancelScope] = set()

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            for scope in list(self._live):
                scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = int(listeners[0].socket.getsockname()[1])
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.down or len(self._live) >= self.max_connections:
                return
            try:
                server = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            self.connections += 1
            with trio.CancelScope() as scope:
                self._live.add(scope)
                try:
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pipe, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pipe, server, client, nursery.cancel_scope)
                finally:
                    self._live.discard(scope)

    async def _pipe(self, src: trio.SocketStream, dst: trio.SocketStream, conn: trio.CancelScope) -> None:
        """One direction; its end (EOF or an error on either side) ends the connection."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](QUEUE_CHUNKS)

        async def read() -> None:
            async with send:
                while True:
                    data = await src.receive_some(CHUNK)
                    if not data:
                        return
                    self.bytes += len(data)
                    await send.send((trio.current_time() + self.delay_s, data))  # full: stop reading

        async def write() -> None:
            async with receive:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    await dst.send_all(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                nursery.start_soon(write)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        conn.cancel()
