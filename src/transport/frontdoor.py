"""The lean front door: one port per process, h11 and wsproto on plain non-blocking sockets.

Every role mounts it. Every connection starts here: h11 reads each request head, and

- ``GET /v1/videos/{id}/events`` (SSE) and ``/ws`` (WebSocket), where the process has
  rooms (all-in-one, rms): served here, the room writing each viewer's batches with one
  non-blocking ``send()`` (``rms.viewer``);
- ``POST /v1/videos/{id}/comments``, where the process takes posts (all-in-one,
  ingest): answered here through ``ingest.posting.PostPipeline``, and the connection may
  carry the next request;
- anything else (and HTTP/1.0, or any request while draining): handed to Hypercorn with
  the bytes already read, and Hypercorn serves the connection from then on. Quart's own
  SSE route serves a stream request that arrives on a connection Hypercorn already owns.
"""

from __future__ import annotations

import base64
import binascii
import errno
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from domain.errors import BadRequest, LivecommentsError, PayloadTooLarge
from domain.identity import TokenIssuer
from domain.ids import MAX_ID
from domain.metrics import Metrics
from domain.params import content_length, parse_id, stream_params
from domain.settings import Settings
from ingest.posting import PostPipeline, parse_json
from policy.rate import Rate, RateGate
from rms.frames import Encoding, chunk, control, join
from rms.room import Room, Rooms
from rms.viewer import DRAIN_PAUSE_S, SocketViewer
from transport.http1 import HEAD_LIMIT, LINGER_BYTES, LINGER_S, HeadLimitedConnection

log = logging.getLogger("livecomments.frontdoor")

STREAM_PATH = re.compile(r"^/v1/videos/([^/]*)/(events|ws)$")
POST_PATH = re.compile(r"^/v1/videos/([^/]*)/comments$")
WS_MESSAGE_LIMIT = 4096  # bytes (UTF-8) of one client message, its fragments together; past it: close 1009
WS_MAX_FRAGMENTS = 64  # frames of one client message; past it: close 1008 (an empty frame costs work too)
WS_EVENTS_PER_ROUND = 64  # client frames handled before the reader yields and waits for its answers to drain
WS_VERSION = b"13"
RECV = 65536
ACCEPT_BURST = 512  # connections taken from the backlog before yielding to the loop
ACCEPT_PAUSE_S = 0.1
ACCEPT_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})  # that connection is gone

Handoff = Callable[[socket.socket, bytes], Awaitable[None]]
# What a lean stream needs once its head is answered: room, user, encoding, first bytes, ws.
# room, user id, encoding, the opening bytes, the WebSocket (None for SSE), the shard
Opened = tuple["Room", str | None, Encoding, bytes, WSConnection | None, int]


class FrontDoor:
    """The lean HTTP/1.1 front door of every role: ``rooms`` where the process serves
    streams (all-in-one, rms), ``pipeline`` where it takes posts (all-in-one, ingest).
    What it does not serve goes to ``handoff``."""

    def __init__(
        self,
        settings: Settings,
        issuer: TokenIssuer,
        metrics: Metrics,
        handoff: Handoff,
        *,
        rooms: Rooms | None = None,
        pipeline: PostPipeline | None = None,
    ) -> None:
        self.settings = settings
        self.rooms = rooms
        self.pipeline = pipeline
        self.issuer = issuer
        self.metrics = metrics
        self.handoff = handoff
        self.accepting = True
        self._listeners: list[socket.socket] = []
        self._nursery: trio.Nursery | None = None
        self.draining = False
        self.open_connections = 0
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until no connection is open (a graceful stop waits for this, bounded)."""
        await self._idle.wait()

    async def serve(
        self, listeners: list[socket.socket], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept on ``listeners`` (bound, listening sockets) until cancelled."""
        self._listeners = listeners
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for lsock in listeners:
                lsock.setblocking(False)
                nursery.start_soon(self._accept_loop, lsock, nursery)
            task_status.started()

    def stop_accepting(self) -> None:
        """Close the listening sockets: new connections are refused from now on."""
        self.accepting = False
        for lsock in self._listeners:
            trio.lowlevel.notify_closing(lsock)
            lsock.close()

    async def _accept_loop(self, lsock: socket.socket, nursery: trio.Nursery) -> None:
        """Accept until the listener closes. As trio's ``serve_listeners``: out of file
        descriptors or memory, log and pause (the connections we have go on); a
        connection that died in the backlog, skip; anything else is a bug, raised."""
        while self.accepting:
            try:
                await trio.lowlevel.wait_readable(lsock)
            except (trio.ClosedResourceError, OSError, ValueError):
                return
            # Take what the backlog holds (bounded, so one burst cannot starve the loop).
            for _ in range(ACCEPT_BURST):
                try:
                    conn, _addr = lsock.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if lsock.fileno() == -1:
                        return  # stop_accepting closed it
                    if e.errno in ACCEPT_PAUSE_ERRNOS:
                        log.error("accept: %s; pausing accepts for %.0f ms", e, ACCEPT_PAUSE_S * 1000)
                        await trio.sleep(ACCEPT_PAUSE_S)
                        break
                    if e.errno in ACCEPT_SKIP_ERRNOS:
                        continue
                    raise
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self._connection, conn)
            await trio.lowlevel.checkpoint()

    async def _connection(self, sock: socket.socket) -> None:
        handed_off = False
        self.open_connections += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            opened = await self._open(sock)
            # Everything the request head needed (h11 state, raw bytes, headers) is gone
            # by now: a long-lived viewer keeps only what streaming needs.
            if isinstance(opened, bytes):
                handed_off = True
                await self.handoff(sock, opened)
            elif opened is not None:
                await self._stream(sock, *opened)
        except (OSError, trio.ClosedResourceError):
            pass
        except Exception:
            # One connection's surprise must never take the server down with it.
            log.exception("connection failed")
        finally:
            if not handed_off:
                trio.lowlevel.notify_closing(sock)
                sock.close()
            self.open_connections -= 1
            if self.open_connections == 0:
                self._idle.set()

    async def _open(self, sock: socket.socket) -> Opened | bytes | None:
        """Read request heads; open a lean stream (its parts), answer a lean post and read
        the next request, or return the bytes of a request to hand to Hypercorn; None
        when the connection is done (closed, answered, or too slow).

        The first head must be complete within ``head_timeout_s`` of the connection's
        start. After a post, the next request must begin within ``idle_timeout_s`` and
        its head be complete within ``head_timeout_s`` of its first byte (as on the
        connections Hypercorn serves, see ``transport.handoff``)."""
        s = self.settings
        conn = HeadLimitedConnection(HEAD_LIMIT)  # 431 for a head over the limit, however it arrives
        first = True
        while True:
            raw = bytearray(conn.trailing_data[0])  # this request's bytes, from its start
            if not first and not raw and not conn.trailing_data[1]:
                data = b""
                with trio.move_on_after(s.idle_timeout_s):
                    data = await _recv(sock)
                if not data:
                    return None  # closed, or idle too long
                raw += data
                conn.receive_data(data)
            first = False
            request: h11.Request | None = None
            with trio.move_on_after(s.head_timeout_s):
                while request is None:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError as e:
                        if e.error_status_hint == 431:
                            await self._simple_error(sock, conn, 431, "head_too_large", "the request head is too large")
                        else:
                            # 400 for every framing error, as Hypercorn answers on the
                            # connections it serves (h11 hints 501 for a transfer coding
                            # it does not take, e.g. two Transfer-Encoding headers: a
                            # request we will not serve, not a failure of ours).
                            await self._simple_error(sock, conn, 400, "bad_request", str(e))
                        return None
                    if event is h11.NEED_DATA:
                        data = await _recv(sock)
                        if not data:
                            return None
                        raw += data
                        conn.receive_data(data)
                    elif isinstance(event, h11.Request):
                        request = event
                    else:
                        return None
            if request is None:
                return None
            try:
                split = urlsplit(request.target.decode("latin-1"))
            except ValueError:  # e.g. "//[x": a netloc that is not a valid IPv6 address
                await self._simple_error(sock, conn, 400, "bad_request", "the request target is not a valid URL")
                return None
            lean = request.http_version == b"1.1" and not self.draining
            m = STREAM_PATH.match(split.path)
            if m and request.method == b"GET" and lean and self.rooms is not None:
                headers = {k.lower(): v for k, v in request.headers}
                video_id = unquote(m.group(1))
                query = dict(parse_qsl(split.query, keep_blank_values=True))
                if m.group(2) == "events":
                    return await self._sse(sock, conn, video_id, query, headers)
                if headers.get(b"upgrade", b"").lower() == b"websocket":
                    return await self._websocket(sock, bytes(raw), video_id, query, headers)
            p = POST_PATH.match(split.path)
            if p and request.method == b"POST" and lean and self.pipeline is not None:
                if not await self._post(sock, conn, request, unquote(p.group(1))):
                    return None
                conn.start_next_cycle()
                continue
            return bytes(raw)

    # -- posting ----------------------------------------------------------------------------

    async def _post(self, sock: socket.socket, conn: h11.Connection, request: h11.Request, video_id: str) -> bool:
        """Answer ``POST /v1/videos/{id}/comments`` without the ASGI stack (the same checks
        and errors as the Quart route, through ``ingest.posting``). True when the
        connection may carry another request."""
        assert self.pipeline is not None
        limit = self.settings.max_body
        headers = {k.lower().decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        ctype = headers.get("content-type")
        status, body, extra = 201, b"", [(b"content-type", b"application/json")]
        declared = content_length(headers.get("content-length"))
        try:
            # 404, 401 and a declared 413 before reading the body, as the Quart route.
            who = self.pipeline.authenticate(video_id, headers.get("authorization"), declared)
            if conn.they_are_waiting_for_100_continue:
                await _send_all(sock, conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            data = await self._read_body(sock, conn, limit)
            if data is None:
                return False  # the client went away
            comment = await self.pipeline.submit(video_id, who, ctype, data)
            body = json.dumps(comment.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
            extra.append((b"location", f"/v1/videos/{video_id}/comments/{comment.id}".encode()))
        except LivecommentsError as e:
            status, body = e.status, json.dumps(e.body()).encode()
            extra += [(k.lower().encode(), v.encode()) for k, v in e.headers().items()]
        self.metrics.posts_served.labels("lean").inc()
        self.metrics.posts.labels(str(status)).inc()
        # Answered before the body was read (401, 413): a body of an allowed, declared size
        # is read and dropped after the answer, so the connection can carry the next
        # request. A client waiting for ``100 Continue`` will not send it, and a body over
        # the limit (or of unknown length) is not worth reading: those connections close.
        # The whole body was read when the client is DONE, or MUST_CLOSE: it asked for
        # ``Connection: close``, and there is nothing more to read.
        unread = conn.their_state not in (h11.DONE, h11.MUST_CLOSE)
        small = declared is not None and declared <= limit
        drain = unread and small and not conn.they_are_waiting_for_100_continue
        await self._respond(sock, conn, status, body, extra, close=unread and not drain)
        if conn.our_state is not h11.DONE:
            return False  # the connection ends with this answer (closed by _respond)
        if drain and not await self._discard_body(sock, conn, limit):
            return False
        return conn.their_state is h11.DONE

    async def _discard_body(self, sock: socket.socket, conn: h11.Connection, limit: int) -> bool:
        """Read the rest of a request body that was already answered; True when it ended
        within the limit and the time allowed."""
        try:
            return await self._read_body(sock, conn, limit) is not None
        except LivecommentsError:
            return False

    async def _read_body(self, sock: socket.socket, conn: h11.Connection, limit: int) -> bytes | None:
        """The request body, at most ``limit`` bytes (413 beyond), within ``body_timeout_s``;
        None when the client closed or was too slow."""
        body = bytearray()
        with trio.move_on_after(self.settings.body_timeout_s):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    raise BadRequest(f"malformed request body: {e}") from None
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return bytes(body)
                elif event is h11.NEED_DATA:
                    data = await _recv(sock)
                    if not data:
                        return None
                    conn.receive_data(data)
                else:
                    return None
        return None

    # -- errors ---------------------------------------------------------------------------

    async def _simple_error(self, sock: socket.socket, conn: h11.Connection, status: int, code: str, detail: str) -> None:
        body = json.dumps({"error": code, "detail": detail}).encode()
        await self._send_response(sock, conn, status, body, [(b"content-type", b"application/json")])

    async def _send_response(
        self, sock: socket.socket, conn: h11.Connection, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self._respond(sock, conn, status, body, headers, close=True)

    async def _respond(
        self,
        sock: socket.socket,
        conn: h11.Connection,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        close: bool,
    ) -> None:
        try:
            close_header = [(b"connection", b"close")] if close else []
            data = conn.send(
                h11.Response(
                    status_code=status,
                    headers=[*headers, (b"content-length", b"%d" % len(body)), *close_header],
                )
            )
            data = (data or b"") + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            return
        await _send_all(sock, data)
        if close or conn.our_state is h11.MUST_CLOSE:
            # Also when h11 closes on its own: the client asked for ``Connection: close``.
            await _lingering_close(sock)

    async def _lc_error(self, sock: socket.socket, conn: h11.Connection, err: LivecommentsError) -> None:
        body = json.dumps(err.body()).encode()
        hdrs = [(b"content-type", b"application/json")] + [(k.encode(), v.encode()) for k, v in err.headers().items()]
        await self._send_response(sock, conn, err.status, body, hdrs)

    # -- SSE ------------------------------------------------------------------------------

    async def _sse(
        self, sock: socket.socket, conn: h11.Connection, video_id: str, query: dict[str, str], headers: dict[bytes, bytes]
    ) -> Opened | None:
        s = self.settings
        last = headers.get(b"last-event-id")
        try:
            params = stream_params(s, self.issuer, video_id, query, last.decode("latin-1") if last is not None else None)
            assert self.rooms is not None
            # 503 too_many_rooms past max_rooms
            room, user_id, first = await self.rooms.open_stream(params, Encoding.SSE)
        except LivecommentsError as e:
            await self._lc_error(sock, conn, e)
            return None
        head = conn.send(
            h11.Response(
                status_code=200,
                headers=[
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache, no-store"),
                    (b"x-accel-buffering", b"no"),
                    (b"access-control-allow-origin", b"*"),
                ],
            )
        )
        return room, user_id, Encoding.SSE, (head or b"") + chunk(first), None, params.shard

    # -- WebSocket ------------------------------------------------------------------------

    async def _websocket(
        self, sock: socket.socket, raw: bytes, video_id: str, query: dict[str, str], headers: dict[bytes, bytes]
    ) -> Opened | None:
        refused = _check_ws_handshake(headers)
        if refused is not None:
            await _send_all(sock, refused)
            await _lingering_close(sock)
            return None
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(raw)
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
        except RemoteProtocolError as e:
            await _send_all(sock, _plain_response(400, "bad_websocket_handshake", str(e)))
            await _lingering_close(sock)
            return None
        if request is None:
            return None
        try:
            params = stream_params(self.settings, self.issuer, video_id, query, None)
            assert self.rooms is not None
            # 503 too_many_rooms past max_rooms
            room, user_id, first = await self.rooms.open_stream(params, Encoding.WS)
        except LivecommentsError as e:
            body = json.dumps(e.body()).encode()
            extra = [(k.lower().encode(), v.encode()) for k, v in e.headers().items()]
            out = ws.send(
                RejectConnection(
                    status_code=e.status,
                    headers=[(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra],
                    has_body=True,
                )
            )
            out += ws.send(RejectData(data=body))
            await _send_all(sock, out)
            return None
        return room, user_id, Encoding.WS, ws.send(AcceptConnection()) + first, ws, params.shard

    async def _ws_input(self, client: WsClient, data: bytes) -> bool:
        """Handle what the client sent; False when the connection should end.

        At most ``WS_EVENTS_PER_ROUND`` frames are handled at a time; between rounds the
        reader yields and waits until the socket took our answers, so one read of tiny
        frames cannot hold the loop, and a client that does not read its answers gets
        nothing more read. A resume runs after the round that asked for it (a newer one
        in the same round replaces it)."""
        ws = client.ws
        ws.receive_data(data or None)
        while True:
            handled = 0
            for event in ws.events():
                if not self._ws_event(client, event):
                    return False
                handled += 1
                if handled >= WS_EVENTS_PER_ROUND:
                    break  # wsproto keeps the rest buffered; the next round parses it
            if client.resume_after is not None:
                await self._ws_resume(client)
            if handled < WS_EVENTS_PER_ROUND:
                return data != b""
            await trio.lowlevel.checkpoint()
            await client.viewer.wait_drained()

    def _ws_event(self, client: WsClient, event: Event) -> bool:
        """One client event; False when the connection should end (a close frame queued)."""
        ws, viewer = client.ws, client.viewer
        now = trio.current_time()
        if isinstance(event, TextMessage):
            problem = client.add(event.data, event.frame_finished)
            if problem is not None:
                code, reason = problem
                self.metrics.ws_refused.labels("too_many_fragments" if code == 1008 else "message_too_big").inc()
                viewer.control(ws.send(CloseConnection(code=code, reason=reason)), now)
                return False
            if event.message_finished:
                self._ws_command(client, client.take(), now)
        elif isinstance(event, Ping):
            viewer.pong(ws.send(event.response()), now)
        elif isinstance(event, CloseConnection):
            try:
                viewer.control(ws.send(event.response()), now)
            except Exception:
                pass
            return False
        elif isinstance(event, Message):
            viewer.control(ws.send(CloseConnection(code=1003, reason="text frames only")), now)
            return False
        return True

    def _ws_command(self, client: WsClient, text: str, now: float) -> None:
        """One whole client message: a resume is checked, rate-limited and left for the
        end of the round; anything else is answered with an ``error`` message."""
        try:
            msg = parse_json(text, "the message")  # the one JSON reader: depth-limited
        except LivecommentsError as e:
            client.error(e.code, e.detail, now)
            return
        if not isinstance(msg, dict) or msg.get("type") != "resume":
            client.error("bad_request", 'unknown message: send {"type": "resume", "after": "<id>"}', now)
            return
        try:
            after = _cursor(msg.get("after"))
        except LivecommentsError as e:
            client.error(e.code, e.detail, now)
            return
        wait = client.resumes.take(now)
        if wait > 0:
            self.metrics.ws_refused.labels("resume_rate_limited").inc()
            retry = Rate.retry_after_header(wait)
            client.error("rate_limited", f"too many resumes: at most {self.settings.ws_resume_rate}", now, retry_after=retry)
            return
        client.resume_after = after  # replaces one asked for earlier in this round

    async def _ws_resume(self, client: WsClient) -> None:
        after, client.resume_after = client.resume_after, None
        assert after is not None
        viewer = client.viewer
        try:
            reset, entries = await client.room.catch_up(after, self.settings.backlog, viewer.user_id)
        except Exception as e:  # the store failing must not end the stream
            log.warning("resume from %d failed: %s", after, e)
            client.error("unavailable", "the replay is not available right now; try again", trio.current_time())
            return
        data = control("reset", {}, Encoding.WS) if reset else b""
        data += join(entries, Encoding.WS)
        if data:
            # An answer, not a control frame: when it does not fit it is dropped like a
            # batch of comments, and the next gap notice counts its comments as missed.
            viewer.deliver(data, len(entries), trio.current_time())

    # -- both -----------------------------------------------------------------------------

    async def _stream(
        self,
        sock: socket.socket,
        room: Room,
        user_id: str | None,
        encoding: Encoding,
        first: bytes,
        ws: WSConnection | None,
        shard: int,
    ) -> None:
        s = self.settings
        assert self._nursery is not None
        if s.viewer_sndbuf:
            # A fixed kernel buffer instead of autotuning (up to tcp_wmem's max, 4 MiB on
            # Debian): a stalled viewer then fills it within a few flushes and meets the
            # room's own bounded queue and drop policy, instead of pinning megabytes of
            # kernel memory and making every send of the flush dearer.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, s.viewer_sndbuf)
        viewer = SocketViewer(sock, self._nursery, user_id, encoding, s.viewer_buffer, s.stuck_s, self.metrics)
        self.metrics.connections.labels("ws" if ws else "sse").inc()
        with trio.CancelScope() as scope:
            viewer.scope = scope
            viewer.open(first, trio.current_time())
            room.join(viewer, shard)
            client = WsClient(ws, viewer, room, Rate.from_text(s.ws_resume_rate)) if ws is not None else None
            try:
                while not viewer.closed:
                    if client is not None:
                        # If we cannot write to it, we do not read from it: answers to
                        # what it sends could only pile up.
                        await viewer.wait_drained()
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        data = sock.recv(RECV)
                    except BlockingIOError:
                        continue
                    except OSError:
                        break
                    if client is not None:
                        if not await self._ws_input(client, data):
                            break
                    elif not data:
                        break  # the viewer went away; anything it sends is ignored
            finally:
                room.leave(viewer)
                viewer.close()
        if ws is not None:
            q = viewer.queue
            # Let a close frame we queued go out, briefly. (Polled: the viewer's drainer
            # may still be parked in wait_writable on this socket.)
            with trio.move_on_after(1):
                while not q.empty:
                    try:
                        n = sock.send(q.peek())
                    except BlockingIOError:
                        n = 0
                    if n:
                        q.consume(n, trio.current_time())
                    else:
                        await trio.sleep(DRAIN_PAUSE_S)
            if q.empty and ws.state is ConnectionState.LOCAL_CLOSING:
                # We closed (a message too big, too many fragments): half-close and drop
                # what the client still sends, so our close frame is not lost to a reset.
                await _lingering_close(sock)


async def _recv(sock: socket.socket) -> bytes:
    """The next bytes the peer sent (b"" when it closed)."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return sock.recv(RECV)
        except BlockingIOError:
            continue


async def _lingering_close(sock: socket.socket) -> None:
    """Half-close, then read and drop what the client still sends (at most
    ``LINGER_BYTES`` within ``LINGER_S``) before the caller closes. Closing with unread
    bytes makes the kernel send a reset, and a reset can destroy the answer just sent
    before the client reads it (nginx's lingering_close does the same)."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    left = LINGER_BYTES
    with trio.move_on_after(LINGER_S):
        while left > 0:
            try:
                data = await _recv(sock)
            except OSError:
                return
            if not data:
                return
            left -= len(data)


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    with trio.move_on_after(10):
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            view = view[n:]


def _plain_response(status: int, code: str, detail: str, extra: bytes = b"") -> bytes:
    """A whole JSON error response for a connection that has no h11 state to use
    (``extra``: more header lines, each ending in CRLF)."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    reason = {400: b"Bad Request", 426: b"Upgrade Required", 431: b"Request Header Fields Too Large"}.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%sconnection: close\r\n\r\n%s"
        % (status, reason, len(body), extra, body)
    )


def _check_ws_handshake(headers: dict[bytes, bytes]) -> bytes | None:
    """The answer refusing a WebSocket handshake whose version or key is wrong (RFC 6455
    4.2.1-4.2.2), or None. A version other than 13 is told which one we speak (426); a
    key must be 16 bytes in base64."""
    version = headers.get(b"sec-websocket-version")
    if version != WS_VERSION:
        supported = b"sec-websocket-version: " + WS_VERSION + b"\r\n"
        if version is None:
            return _plain_response(400, "bad_websocket_handshake", "missing Sec-WebSocket-Version (13)", supported)
        return _plain_response(426, "unsupported_websocket_version", "this server speaks WebSocket version 13", supported)
    key = headers.get(b"sec-websocket-key", b"")
    try:
        valid = len(key) == 24 and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        return _plain_response(400, "bad_websocket_handshake", "Sec-WebSocket-Key must be 16 random bytes in base64")
    return None


def _cursor(value: object) -> int:
    """The ``after`` of a resume: an id as a string (the contract) or a JSON number."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        value = str(value)
    if not isinstance(value, str):
        raise BadRequest("after must be a comment id (decimal digits)", code="invalid_cursor")
    return parse_id(value, "after")


class WsClient:
    """One WebSocket connection's input side: the message being assembled (its size and
    frame count bounded), the resume rate and the resume waiting to run."""

    __slots__ = ("frames", "parts", "resume_after", "resumes", "room", "size", "viewer", "ws")

    def __init__(self, ws: WSConnection, viewer: SocketViewer, room: Room, resume_rule: Rate) -> None:
        self.ws = ws
        self.viewer = viewer
        self.room = room
        self.parts: list[str] = []
        self.size = 0  # UTF-8 bytes of the message so far (a running count: no re-summing)
        self.frames = 0  # frames of the message so far
        self.resumes = RateGate(resume_rule)
        self.resume_after: int | None = None  # the resume to run at the end of the round

    def add(self, data: str, frame_finished: bool) -> tuple[int, str] | None:
        """Add a piece of the current message; (close code, reason) when it breaks a limit."""
        self.size += len(data) if data.isascii() else len(data.encode())
        if self.size > WS_MESSAGE_LIMIT:
            return 1009, "message too big"
        if frame_finished:
            self.frames += 1
            if self.frames > WS_MAX_FRAGMENTS:
                return 1008, "too many fragments"
        if data:
            self.parts.append(data)
        return None

    def take(self) -> str:
        """The whole message, and start the next."""
        text = "".join(self.parts)
        self.parts, self.size, self.frames = [], 0, 0
        return text

    def error(self, code: str, detail: str, now: float, **extra: Any) -> None:
        """Answer with an ``error`` message. An answer, so it is dropped when it does not
        fit (and the reader stops reading this client until its queue drains)."""
        self.viewer.deliver(control("error", {"error": code, "detail": detail, **extra}, Encoding.WS), 0, now)
