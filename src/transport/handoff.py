"""Handing a connection the front door has started reading to Hypercorn.

Hypercorn's per-connection server (``hypercorn.trio.tcp_server.TCPServer``) serves any
Trio stream; we give it the accepted socket wrapped so that the bytes the front door
already read come out first. The ASGI lifespan runs once, as Hypercorn's own worker
does it.

The wrapper (``GuardedStream``) also enforces the connection's timeouts, because
Hypercorn's own cannot work here: it re-arms its keep-alive timer (``Updated(idle=True)``
-> ``TrioSingleTask.restart``) from inside the request's task, after the response's
last byte, and quart-trio cancels that task at exactly that moment (the
``http.disconnect`` that ends the stream makes it cancel the request's nursery), so the
timer never starts and an idle or half-sent connection stays open for ever. Hypercorn's
``read_timeout`` is no help either: it limits every read, also while a long-poll or an
event stream is being answered and the client rightly sends nothing. The wrapper knows
which part of the request/response cycle the connection is in (a per-connection ASGI
wrapper, ``_Tracked``, tells it when the app starts, has the whole body and has
answered) and gives each read a deadline:

- ``HEAD``: a request head is expected or arriving: ``HEAD_TIMEOUT_S`` from the
  connection's start (its first request) or from the first byte of a later one;
- ``BODY``: the app runs and its request body is still arriving: ``BODY_TIMEOUT_S``
  from the end of the head;
- ``ANSWER``: the body is in and the app answers: no read deadline (a long-poll, an
  event stream);
- ``IDLE``: answered, nothing of a next request yet: ``IDLE_TIMEOUT_S``.

A read past its deadline raises ``BrokenResourceError``, which Hypercorn's read loop
takes as the end of the connection: it closes the stream (the app, if any, gets
``http.disconnect``) and the socket, without answering and without a traceback.

Every write must make progress within ``STUCK_S``: a client that takes no byte for that
long is stuck, and the connection is aborted with a reset (what a stalled lean-path
viewer gets too; a FIN would queue behind the bytes it does not read). Hypercorn writes
inside a shielded cancel scope, so nothing else could ever end such a write.
"""

from __future__ import annotations

import enum
import logging
import math
import socket
import struct
from collections.abc import Callable
from typing import Any

import h11
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

from domain.settings import Settings
from transport.http1 import HEAD_LIMIT, LINGER_BYTES, LINGER_S, HeadLimitedConnection

log = logging.getLogger("transport.handoff")

# The key of the connection's GuardedStream in an ASGI scope's "extensions".
TRANSPORT = "livecomments.transport"
RECV = 65536
# A client may half-close after its request: its EOF is kept from Hypercorn (which would
# cancel the app) until the answer is out, for at most this long (a closed event stream
# still stops counting as a viewer within the contract's 5 s).
EOF_HOLD_S = 2.0
# SO_LINGER on, 0 s: close() sends a reset and drops the unsent bytes.
LINGER_RESET = struct.pack("ii", 1, 0)


class Phase(enum.Enum):
    HEAD = "head"
    BODY = "body"
    ANSWER = "answer"
    IDLE = "idle"


class GuardedStream(trio.abc.HalfCloseableStream):
    """A socket stream that first returns ``prefix``, then what the socket receives, and
    that enforces the head, body, idle and stuck timeouts (see the module docstring)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> GuardedStream:
        # It rides in the ASGI scope, which middleware may deep-copy (hypercorn's
        # ProxyFixMiddleware does, behind PROXY_HOPS): a connection has one stream.
        return self

    def __init__(self, raw: socket.socket, prefix: bytes, settings: Settings) -> None:
        self._raw = raw  # the same socket, for a non-blocking peek
        self._sock = trio.socket.from_stdlib_socket(raw)
        self._prefix = prefix
        self._settings = settings
        self._phase = Phase.HEAD  # the first request: its head is in prefix, or due
        self._deadline = trio.current_time() + settings.head_timeout_s
        self._read_scope: trio.CancelScope | None = None
        self._early = False  # bytes of a next request arrived while the app answered
        self._request = 0  # the app's current request (an older one's end must not count)
        self._unanswered = bool(prefix)  # request bytes came in since the last answer
        self._answer_out = trio.Event()  # set (and replaced) when an answer ends
        # Called when a write is given up as stuck (the ASGI event stream counts its viewer).
        self.on_stuck: Callable[[], None] | None = None

    @property
    def socket(self) -> trio.socket.SocketType:
        return self._sock

    @property
    def phase(self) -> Phase:
        return self._phase

    # -- where the connection is in its request/response cycle ------------------------

    def _enter(self, phase: Phase, timeout_s: float) -> None:
        self._phase = phase
        self._deadline = trio.current_time() + timeout_s
        if self._read_scope is not None:
            self._read_scope.deadline = self._deadline  # a read waiting now gets it too

    def begin(self, websocket: bool) -> int:
        """The app starts on a request whose head is complete; returns its number."""
        self._request += 1
        self._early = False
        if websocket:
            self._enter(Phase.ANSWER, math.inf)  # no body: the app talks from now on
        else:
            self._enter(Phase.BODY, self._settings.body_timeout_s)
        return self._request

    def body_received(self, request: int) -> None:
        if request == self._request and self._phase is Phase.BODY:
            self._enter(Phase.ANSWER, math.inf)

    def answered(self, request: int) -> None:
        """The app sent the response's last byte (or ended)."""
        if request != self._request or self._phase in (Phase.HEAD, Phase.IDLE):
            return
        self._answer_out.set()
        self._answer_out = trio.Event()
        self._unanswered = self._early
        if self._early:
            self._enter(Phase.HEAD, self._settings.head_timeout_s)  # a next head has begun
        else:
            self._enter(Phase.IDLE, self._settings.idle_timeout_s)

    # -- the stream ---------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        with trio.CancelScope(deadline=self._deadline) as scope:
            self._read_scope = scope
            try:
                data = await self._sock.recv(max_bytes or RECV)
            except OSError as e:
                raise trio.BrokenResourceError from e
            finally:
                self._read_scope = None
        if scope.cancelled_caught:
            log.debug("closing a connection: %s timeout", self._phase.value)
            raise trio.BrokenResourceError(f"{self._phase.value} timeout")
        if not data and (self._phase in (Phase.BODY, Phase.ANSWER) or (self._phase is Phase.HEAD and self._unanswered)):
            # Half-closed after a request: its answer first (see EOF_HOLD_S).
            with trio.move_on_after(EOF_HOLD_S):
                await self._answer_out.wait()
            return data
        if data:
            self._unanswered = True
            if self._phase is Phase.IDLE:
                self._enter(Phase.HEAD, self._settings.head_timeout_s)
            elif self._phase is Phase.ANSWER:
                self._early = True
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            # Each send returns as soon as the kernel takes some bytes: the stuck clock
            # restarts with every bit of progress, so a slow reader is never cut off.
            with trio.move_on_after(self._settings.stuck_s) as scope:
                try:
                    n = await self._sock.send(view)
                except OSError as e:
                    raise trio.BrokenResourceError from e
            if scope.cancelled_caught:
                self._abort()
                raise trio.BrokenResourceError("the client took nothing for stuck_s")
            view = view[n:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    def _abort(self) -> None:
        """Close with a reset: a FIN would queue behind the unsent bytes of a reader that
        no longer reads, and the kernel would keep the socket and its buffers."""
        log.debug("aborting a connection: stuck")
        if self.on_stuck is not None:
            self.on_stuck()
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass
        self._sock.close()  # a read waiting on it gets ClosedResourceError

    # Neither closing method has a point where it could be cancelled: Hypercorn may close
    # the connection from a task the app is cancelling, and a cancelled close would leave
    # the connection hanging open.
    async def send_eof(self) -> None:
        if self._sock.fileno() == -1:
            raise trio.ClosedResourceError
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            raise trio.BrokenResourceError from e

    async def aclose(self) -> None:
        """Close; when the client's bytes are still unread (a body refused with 413, a
        request after a ``Connection: close`` answer), a lingering close first (see
        ``transport.http1.LINGER_S``): a reset could destroy the answer just sent."""
        with trio.CancelScope(shield=True):
            if self._sock.fileno() != -1 and self._unread():
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                else:
                    left = LINGER_BYTES
                    with trio.move_on_after(LINGER_S):
                        while left > 0:
                            try:
                                data = await self._sock.recv(RECV)
                            except OSError:
                                break
                            if not data:
                                break
                            left -= len(data)
            self._sock.close()
            await trio.lowlevel.checkpoint()

    def _unread(self) -> bool:
        try:
            return bool(self._raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False


class _Tracked:
    """The app as one connection's Hypercorn runs it: tells the connection's stream when
    a request's app starts, has the whole body and has answered, and puts the stream in
    the scope's extensions (``TRANSPORT``)."""

    def __init__(self, app: ASGIWrapper, stream: GuardedStream) -> None:
        self.app = app
        self.stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any) -> None:
        stream = self.stream
        request = stream.begin(scope["type"] == "websocket")
        scope = {**scope, "extensions": {**(scope.get("extensions") or {}), TRANSPORT: stream}}

        async def tracked_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                stream.body_received(request)
            return message

        async def tracked_send(message: Any) -> None:
            try:
                await send(message)
            finally:
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    stream.answered(request)

        try:
            await self.app(scope, tracked_receive, tracked_send, sync_spawn, call_soon)
        finally:
            stream.answered(request)


def transport_of(scope: Any) -> GuardedStream | None:
    """The stream of the connection an ASGI request came on (None outside AsgiHandoff)."""
    found = (scope.get("extensions") or {}).get(TRANSPORT)
    return found if isinstance(found, GuardedStream) else None


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = "-"
    # Hypercorn's own keep-alive timer never starts under quart-trio (see above); the
    # stream enforces IDLE_TIMEOUT_S instead. Set to the same value all the same.
    config.keep_alive_timeout = settings.idle_timeout_s
    config.graceful_timeout = 5
    config.h11_max_incomplete_size = HEAD_LIMIT
    return config


class HeadLimitedTCPServer(TCPServer):
    """Hypercorn's per-connection server, with the request-head limit on every head.

    Hypercorn parses HTTP/1.1 with h11, whose head limit (``h11_max_incomplete_size``)
    holds only for a head that arrives in pieces: a larger head in one read would be
    served. ``run`` builds the protocol and then reads; ``_read_data`` is where reading
    starts, so the parser is swapped there for ``HeadLimitedConnection``, while it has
    seen nothing yet, and a head over ``HEAD_LIMIT`` gets 431 on a kept-alive connection
    too."""

    async def _read_data(self) -> None:
        protocol = self.protocol.protocol
        if isinstance(protocol, H11Protocol) and isinstance(protocol.connection, h11.Connection):
            fresh = protocol.connection
            if fresh.their_state is h11.IDLE and not fresh.trailing_data[0]:
                protocol.connection = HeadLimitedConnection(self.config.h11_max_incomplete_size)
        await super()._read_data()


class AsgiHandoff:
    def __init__(self, app: Any, settings: Settings | None = None, config: Config | None = None) -> None:
        self.settings = settings or Settings()
        self.app = ASGIWrapper(app)
        self.config = config or hypercorn_config(self.settings)
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
        stream = GuardedStream(sock, prefix, self.settings)
        try:
            server = HeadLimitedTCPServer(_Tracked(self.app, stream), self.config, self.context, self.state, stream)  # type: ignore[arg-type]
            await server.run()
        finally:
            await stream.aclose()
