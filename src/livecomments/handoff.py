"""Handing a connection the front door has started reading to Hypercorn.

Hypercorn's per-connection server (``hypercorn.trio.tcp_server.TCPServer``) serves any
Trio stream; we give it the accepted socket wrapped so that the bytes the front door
already read come out first. The ASGI lifespan runs once, as Hypercorn's own worker
does it.

Hypercorn parses HTTP/1.1 with h11, whose head limit (``h11_max_incomplete_size``) holds
only for a head that arrives in pieces: a larger head in one read would be served. Each
connection's parser is swapped for ``HeadLimitedConnection`` before Hypercorn reads a
byte, so that a head over ``HEAD_LIMIT`` gets 431 on a kept-alive connection too.
"""

from __future__ import annotations

import socket
from typing import Any

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from livecomments.http1 import HEAD_LIMIT, HeadLimitedConnection


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream that first returns ``prefix``, then what the socket receives."""

    def __init__(self, inner: trio.SocketStream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._inner.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    # Shielded: Hypercorn may close the connection from a task the app is cancelling;
    # an unshielded close would be cancelled too and leave the connection hanging open.
    async def send_eof(self) -> None:
        with trio.CancelScope(shield=True):
            await self._inner.send_eof()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._inner.aclose()


def hypercorn_config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = "-"
    config.keep_alive_timeout = 5
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = HEAD_LIMIT
    return config


class HeadLimitedTCPServer(TCPServer):
    """Hypercorn's per-connection server, with the request-head limit on every head.

    ``run`` builds the protocol and then reads; ``_read_data`` is where reading starts,
    so the parser is swapped there, while it has seen nothing yet."""

    async def _read_data(self) -> None:
        protocol = self.protocol.protocol
        if isinstance(protocol, H11Protocol) and isinstance(protocol.connection, h11.Connection):
            fresh = protocol.connection
            if fresh.their_state is h11.IDLE and not fresh.trailing_data[0]:
                protocol.connection = HeadLimitedConnection(self.config.h11_max_incomplete_size)
        await super()._read_data()


class AsgiHandoff:
    def __init__(self, app: Any, config: Config | None = None) -> None:
        self.app = ASGIWrapper(app)
        self.config = config or hypercorn_config()
        self.context = WorkerContext(None)
        self.state: dict[str, Any] = {}
        self._lifespan = Lifespan(self.app, self.config, self.state)

    async def start(self, nursery: trio.Nursery) -> None:
        """Run the app's startup in ``nursery`` (which then owns the lifespan task)."""
        await nursery.start(self._lifespan.handle_lifespan)
        await self._lifespan.wait_for_startup()

    async def terminate(self) -> None:
        """Ask Hypercorn's connections to close once their current request is done."""
        await self.context.terminated.set()

    async def __call__(self, sock: socket.socket, prefix: bytes) -> None:
        stream = PrefixedStream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)), prefix)
        await HeadLimitedTCPServer(self.app, self.config, self.context, self.state, stream).run()  # type: ignore[arg-type]
