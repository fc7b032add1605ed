"""The front door: one port, a lean Trio path for event streams, Hypercorn for the rest.

Every connection starts here. h11 reads the first request head; an SSE or WebSocket
stream request is served on the lean path (the room writes each viewer's batches with
non-blocking ``send()`` on the plain socket, see ``rms.viewer``); anything else, or a
stream request the lean path does not take (HTTP/1.0, an error to report), is handed to
Hypercorn together with the bytes already read, and Hypercorn serves the connection from
then on (keep-alive included). The ASGI app has its own, slower, SSE route for a stream
request that arrives on a connection Hypercorn already owns.
"""

from __future__ import annotations

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
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ingest.posting import post_from_request
from ingest.service import CommentService
from livecomments.auth import TokenIssuer
from livecomments.config import Settings
from livecomments.errors import BadRequest, LivecommentsError, PayloadTooLarge
from livecomments.http1 import HEAD_LIMIT, HeadLimitedConnection
from rms.frames import Encoding, chunk, control, join
from rms.params import check_video, parse_id, stream_params
from rms.room import Room, Rooms
from rms.viewer import SocketViewer

log = logging.getLogger("livecomments.frontdoor")

STREAM_PATH = re.compile(r"^/v1/videos/([^/]*)/(events|ws)$")
POST_PATH = re.compile(r"^/v1/videos/([^/]*)/comments$")
BODY_TIMEOUT_S = 30.0
HEAD_TIMEOUT_S = 10.0
WS_MESSAGE_LIMIT = 4096
LINGER_S = 2.0  # after an answer with Connection: close, read what is in flight this long
LINGER_BYTES = 1024 * 1024  # ... and at most this much
RECV = 65536

Handoff = Callable[[socket.socket, bytes], Awaitable[None]]
# What a lean stream needs once its head is answered: room, user, encoding, first bytes, ws.
Opened = tuple["Room", str | None, Encoding, bytes, WSConnection | None]


class FrontDoor:
    def __init__(
        self,
        settings: Settings,
        rooms: Rooms,
        issuer: TokenIssuer,
        metrics: Any,
        handoff: Handoff,
        comments: CommentService | None = None,
    ) -> None:
        self.settings = settings
        # Where ingest runs in this process, posts are answered here, without the ASGI
        # stack: a post costs a fraction of what it costs through Hypercorn and Quart.
        self.comments = comments
        self.rooms = rooms
        self.issuer = issuer
        self.metrics = metrics
        self.handoff = handoff
        self.accepting = True
        self._listeners: list[socket.socket] = []
        self._nursery: trio.Nursery | None = None
        self.draining = False

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
        while self.accepting:
            try:
                await trio.lowlevel.wait_readable(lsock)
            except (trio.ClosedResourceError, OSError, ValueError):
                return
            # Take what the backlog holds (bounded, so one burst cannot starve the loop).
            for _ in range(512):
                try:
                    conn, _addr = lsock.accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        log.warning("accept: %s; pausing accepts for 100 ms", e)
                        await trio.sleep(0.1)
                        break
                    if lsock.fileno() == -1:
                        return
                    break
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(self._connection, conn)
            await trio.lowlevel.checkpoint()

    async def _connection(self, sock: socket.socket) -> None:
        handed_off = False
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

    async def _open(self, sock: socket.socket) -> Opened | bytes | None:
        """Read request heads; open a lean stream (its parts), answer a lean post and read
        the next request, or return the bytes of a request to hand to Hypercorn; None
        when the connection is done (closed, or answered)."""
        conn = HeadLimitedConnection(HEAD_LIMIT)  # 431 for a head over the limit, however it arrives
        while True:
            raw = bytearray(conn.trailing_data[0])  # this request's bytes, from its start
            request: h11.Request | None = None
            with trio.move_on_after(HEAD_TIMEOUT_S):
                while request is None:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError as e:
                        if e.error_status_hint == 431:
                            await self._simple_error(sock, conn, 431, "head_too_large", "the request head is too large")
                        else:
                            await self._simple_error(sock, conn, e.error_status_hint, "bad_request", str(e))
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
            if m and request.method == b"GET" and lean:
                headers = {k.lower(): v for k, v in request.headers}
                video_id = unquote(m.group(1))
                query = dict(parse_qsl(split.query, keep_blank_values=True))
                if m.group(2) == "events":
                    return await self._sse(sock, conn, video_id, query, headers)
                if headers.get(b"upgrade", b"").lower() == b"websocket":
                    return await self._websocket(sock, bytes(raw), video_id, query)
            p = POST_PATH.match(split.path)
            if p and request.method == b"POST" and lean and self.comments is not None:
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
        assert self.comments is not None
        limit = self.settings.max_body
        headers = {k.lower().decode("latin-1"): v.decode("latin-1") for k, v in request.headers}
        auth, ctype = headers.get("authorization"), headers.get("content-type")
        status, body, extra = 201, b"", [(b"content-type", b"application/json")]
        declared = _content_length(headers.get("content-length"))
        try:
            check_video(video_id)
            self.issuer.from_header(auth)  # 401 before reading the body, as the Quart route
            if declared is not None and declared > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            if conn.they_are_waiting_for_100_continue:
                await _send_all(sock, conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            data = await self._read_body(sock, conn, limit)
            if data is None:
                return False  # the client went away
            comment = await post_from_request(self.comments, self.issuer, video_id, auth, ctype, data, limit)
            body = json.dumps(comment.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
            extra.append((b"location", f"/v1/videos/{video_id}/comments/{comment.id}".encode()))
        except LivecommentsError as e:
            status, body = e.status, json.dumps(e.body()).encode()
            extra += [(k.lower().encode(), v.encode()) for k, v in e.headers().items()]
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
        """The request body, at most ``limit`` bytes (413 beyond), within BODY_TIMEOUT_S."""
        body = bytearray()
        with trio.move_on_after(BODY_TIMEOUT_S):
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
        except LivecommentsError as e:
            await self._lc_error(sock, conn, e)
            return None
        room = await self.rooms.get(video_id)
        user_id = params.identity.user_id if params.identity else None
        reset, entries = await room.catch_up(params.after, params.backlog, user_id)
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
        first = b"retry: %d\n\n" % s.retry_ms + room.opening(Encoding.SSE, reset, entries)
        return room, user_id, Encoding.SSE, (head or b"") + chunk(first), None

    # -- WebSocket ------------------------------------------------------------------------

    async def _websocket(self, sock: socket.socket, raw: bytes, video_id: str, query: dict[str, str]) -> Opened | None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(raw)
            request = next((e for e in ws.events() if isinstance(e, Request)), None)
        except RemoteProtocolError as e:
            await _send_all(sock, _plain_response(400, "bad_websocket_handshake", str(e)))
            return None
        if request is None:
            return None
        try:
            params = stream_params(self.settings, self.issuer, video_id, query, None)
        except LivecommentsError as e:
            body = json.dumps(e.body()).encode()
            out = ws.send(
                RejectConnection(
                    status_code=e.status,
                    headers=[(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                    has_body=True,
                )
            )
            out += ws.send(RejectData(data=body))
            await _send_all(sock, out)
            return None
        room = await self.rooms.get(video_id)
        user_id = params.identity.user_id if params.identity else None
        reset, entries = await room.catch_up(params.after, params.backlog, user_id)
        first = ws.send(AcceptConnection()) + room.opening(Encoding.WS, reset, entries)
        return room, user_id, Encoding.WS, first, ws

    async def _ws_input(self, ws: WSConnection, viewer: SocketViewer, room: Room, data: bytes, buf: list[str]) -> bool:
        """Handle client frames; False when the connection should end."""
        ws.receive_data(data or None)
        now = trio.current_time()
        for event in ws.events():
            if isinstance(event, TextMessage):
                buf.append(event.data)
                if sum(map(len, buf)) > WS_MESSAGE_LIMIT:
                    viewer.control(ws.send(CloseConnection(code=1009, reason="message too big")), now)
                    return False
                if event.message_finished:
                    text, buf[:] = "".join(buf), []
                    await self._ws_command(ws, viewer, room, text)
            elif isinstance(event, Ping):
                viewer.control(ws.send(event.response()), now)
            elif isinstance(event, CloseConnection):
                try:
                    viewer.control(ws.send(event.response()), now)
                except Exception:
                    pass
                return False
            elif isinstance(event, Message):
                viewer.control(ws.send(CloseConnection(code=1003, reason="text frames only")), now)
                return False
        return data != b""

    async def _ws_command(self, ws: WSConnection, viewer: SocketViewer, room: Room, text: str) -> None:
        now = trio.current_time()
        try:
            try:
                msg = json.loads(text)
            except ValueError:
                raise ValueError("messages are JSON objects") from None
            if not isinstance(msg, dict) or msg.get("type") != "resume":
                raise ValueError("unknown message: send {\"type\": \"resume\", \"after\": \"<id>\"}")
            after = parse_id(str(msg.get("after", "")), "after")
        except (ValueError, LivecommentsError) as e:
            detail = e.detail if isinstance(e, LivecommentsError) else str(e)
            viewer.control(control("error", {"error": "bad_request", "detail": detail}, Encoding.WS), now)
            return
        reset, entries = await room.catch_up(after, self.settings.backlog, viewer.user_id)
        data = control("reset", {}, Encoding.WS) if reset else b""
        viewer.control(data + join(entries, Encoding.WS), now)

    # -- both -----------------------------------------------------------------------------

    async def _stream(
        self, sock: socket.socket, room: Room, user_id: str | None, encoding: Encoding, first: bytes, ws: WSConnection | None
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
            viewer.control(first, trio.current_time())
            room.join(viewer)
            try:
                ws_buf: list[str] = []
                while not viewer.closed:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        data = sock.recv(RECV)
                    except BlockingIOError:
                        continue
                    except OSError:
                        break
                    if ws is not None:
                        if not await self._ws_input(ws, viewer, room, data, ws_buf):
                            break
                    elif not data:
                        break  # the viewer went away; anything it sends is ignored
            finally:
                room.leave(viewer)
                viewer.close()
        if ws is not None and not viewer.queue.empty:
            # Let a close frame we queued go out, briefly.
            with trio.move_on_after(1):
                while not viewer.queue.empty:
                    await trio.lowlevel.wait_writable(sock)
                    viewer.queue.consume(sock.send(viewer.queue.peek()), trio.current_time())


def _content_length(value: str | None) -> int | None:
    """A declared body length (h11 has checked it is decimal digits); None if absent.
    A length of more digits than any limit is held as too large without ``int()``,
    which refuses strings of more than 4,300 digits."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


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


def _plain_response(status: int, code: str, detail: str) -> bytes:
    """A whole JSON error response for a connection that has no h11 state to use."""
    body = json.dumps({"error": code, "detail": detail}).encode()
    reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}.get(status, b"Error")
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (status, reason, len(body), body)
    )
