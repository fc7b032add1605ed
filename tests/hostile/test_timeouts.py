"""Every connection times out, on both paths: a request head must arrive within
``HEAD_TIMEOUT_S``, a body within ``BODY_TIMEOUT_S``, a keep-alive connection must start
its next request within ``IDLE_TIMEOUT_S``, and a reader that takes nothing for
``STUCK_S`` is cut off, also on the ASGI path (Hypercorn owns the connection after its
first request there)."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import h11
import httpx
import trio

from tests.e2e.helpers import RawSSE, metric, raw_connect, send_all, viewers, wait_until
from tests.e2e.test_slow_consumer import SMALL_RCVBUF, post_big
from tests.support.server import ServerProcess

SHORT = "1"  # seconds: the timeout a test is about
LONG = "60"  # seconds: the timeouts it is not about, so that only SHORT can close
# How long a test waits for the server to close: well above SHORT, and below the 10 s
# the lean path used for every head before the timeouts were settings (so that a server
# which ignores the setting fails the test instead of passing late).
CLOSE_WITHIN_S = 8.0
STUCK_S = 2
MAX_POSTS = 500


def timeouts(*, head: str = LONG, idle: str = LONG, body: str = LONG, stuck: str = LONG) -> dict[str, str]:
    return {
        "LIVECOMMENTS_HEAD_TIMEOUT_S": head,
        "LIVECOMMENTS_IDLE_TIMEOUT_S": idle,
        "LIVECOMMENTS_BODY_TIMEOUT_S": body,
        "LIVECOMMENTS_STUCK_S": stuck,
    }


async def read_response(sock: trio.socket.SocketType, buf: bytearray) -> tuple[int, bytes]:
    """One whole response with a Content-Length (head and body), taken from the front of
    ``buf`` (reading more as needed)."""
    with trio.fail_after(CLOSE_WITHIN_S):
        while True:
            end = buf.find(b"\r\n\r\n")
            if end != -1:
                head = bytes(buf[:end]).decode("latin-1")
                length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
                assert length, head
                total = end + 4 + int(length.group(1))
                if len(buf) >= total:
                    whole = bytes(buf[:total])
                    del buf[:total]
                    m = re.match(r"HTTP/1\.1 (\d{3})", head)
                    assert m, head
                    assert not re.search(r"(?im)^connection:\s*close", head), head
                    return int(m.group(1)), whole
            data = await sock.recv(65536)
            assert data, f"the server closed before answering: {bytes(buf)[:200]!r}"
            buf += data


async def closed_by_server(sock: trio.socket.SocketType) -> bytes:
    """Wait until the server closes the connection (EOF or reset); what it sent before."""
    got = bytearray()
    try:
        with trio.fail_after(CLOSE_WITHIN_S):
            while True:
                try:
                    data = await sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    break
                if not data:
                    break
                got += data
    except trio.TooSlowError:
        raise AssertionError(f"the server kept the connection open; it sent {bytes(got)[:200]!r}") from None
    return bytes(got)


def assert_quiet(srv: ServerProcess) -> None:
    """A connection closed for a timeout is routine: nothing in the log about it."""
    log = "".join(srv.output)
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_idle_keep_alive_on_the_asgi_path_is_closed_but_a_long_answer_is_not(
    server_factory: Callable[..., ServerProcess], video: str
) -> None:
    srv = server_factory(timeouts(idle=SHORT))
    sock = await raw_connect(srv.port)
    with sock:
        buf = bytearray()
        # A long-poll answered after longer than the idle timeout: a request being
        # answered is not idle.
        await send_all(sock, f"GET /v1/videos/{video}/comments?after=0&wait=2 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, _ = await read_response(sock, buf)
        assert status == 200
        await send_all(sock, HEALTHZ)
        status, _ = await read_response(sock, buf)
        assert status == 200
        # Then nothing: the server closes the connection, without sending anything.
        assert bytes(buf) + await closed_by_server(sock) == b""
    assert_quiet(srv)


async def test_half_sent_second_head_on_the_asgi_path_is_closed(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory(timeouts(head=SHORT))
    sock = await raw_connect(srv.port)
    with sock:
        buf = bytearray()
        await send_all(sock, HEALTHZ)
        status, _ = await read_response(sock, buf)
        assert status == 200
        await send_all(sock, b"GET /healthz HTTP/1.1\r\nHo")
        assert bytes(buf) + await closed_by_server(sock) == b""
    assert_quiet(srv)


async def test_half_sent_first_head_on_the_lean_path_is_closed(
    server_factory: Callable[..., ServerProcess], video: str
) -> None:
    srv = server_factory(timeouts(head=SHORT))
    sock = await raw_connect(srv.port)
    with sock:
        await send_all(sock, f"GET /v1/videos/{video}/events HTTP/1.1\r\nHo".encode())
        assert await closed_by_server(sock) == b""
    assert_quiet(srv)


async def test_a_body_that_never_finishes_on_the_asgi_path_is_cut_off(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory(timeouts(body=SHORT))
    sock = await raw_connect(srv.port)
    with sock:
        head = b"POST /v1/auth/guest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        await send_all(sock, head + b'{"name": "')  # 10 of the 100 bytes, then nothing
        got = await closed_by_server(sock)
        assert not got.startswith(b"HTTP/1.1 2"), got[:200]
    assert_quiet(srv)


async def test_a_body_that_never_finishes_on_the_lean_path_is_cut_off(
    server_factory: Callable[..., ServerProcess], video: str
) -> None:
    srv = server_factory(timeouts(body=SHORT))
    head = (
        f"POST /v1/videos/{video}/comments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {srv.token('dawdler')}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    sock = await raw_connect(srv.port)
    with sock:
        await send_all(sock, head + b'{"text": "')  # 10 of the 100 bytes, then nothing
        assert await closed_by_server(sock) == b""
    assert_quiet(srv)


async def test_idle_keep_alive_after_a_lean_post_is_closed(
    server_factory: Callable[..., ServerProcess], video: str
) -> None:
    srv = server_factory(timeouts(idle=SHORT))
    body = b'{"text": "hello"}'
    head = (
        f"POST /v1/videos/{video}/comments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {srv.token('idler')}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = await raw_connect(srv.port)
    with sock:
        buf = bytearray()
        await send_all(sock, head + body)
        status, _ = await read_response(sock, buf)
        assert status == 201
        assert bytes(buf) + await closed_by_server(sock) == b""
    assert_quiet(srv)


async def test_a_stalled_viewer_on_the_asgi_path_is_disconnected(
    server_factory: Callable[..., ServerProcess], video: str
) -> None:
    """An event stream requested on a connection Hypercorn already serves goes through the
    ASGI app; a viewer there that stops reading is cut off after STUCK_S like one on the
    lean path, and counted."""
    srv = server_factory(
        {
            **timeouts(stuck=str(STUCK_S)),
            "LIVECOMMENTS_RATE_LIMIT": "100000/1s",
            "LIVECOMMENTS_MAX_TEXT": "50000",
            "LIVECOMMENTS_MAX_BODY": "262144",
        }
    )
    headers = srv.headers("poster")
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as c:
        sock = await raw_connect(srv.port, rcvbuf=SMALL_RCVBUF)
        with sock:
            buf = bytearray()
            await send_all(sock, HEALTHZ)  # from now on Hypercorn owns the connection
            status, _ = await read_response(sock, buf)
            assert status == 200 and not buf
            asgi_before = await metric(c, "livecomments_connections_total", transport="sse-asgi")
            stalled = RawSSE(sock)
            request = h11.Request(
                method="GET",
                target=f"/v1/videos/{video}/events?backlog=0",
                headers=[("Host", "x"), ("Accept", "text/event-stream")],
            )
            await send_all(sock, stalled.http.send(request) + (stalled.http.send(h11.EndOfMessage()) or b""))
            await wait_until(lambda: viewers_are(c, video, 1), "the viewer in the room")
            assert await metric(c, "livecomments_connections_total", transport="sse-asgi") == asgi_before + 1

            # It never reads: big comments fill the kernel buffers, then the viewer's queue
            # behind the framework's blocked write, until the room drops for it.
            posted = 0
            while await metric(c, "livecomments_dropped_comments_total") == 0:
                assert posted < MAX_POSTS, "the stalled viewer never overflowed"
                await post_big(c, video, headers, posted)
                posted += 1

            await wait_until(lambda: stuck_disconnects(c), "the stuck disconnect")
            await wait_until(lambda: viewers_are(c, video, 0), "the stalled viewer to leave the room")
            await stalled.read_to_end()
            assert stalled.ended
            assert stalled.response is not None and stalled.response.status_code == 200
            assert len(stalled.comment_ids()) < posted
        assert (await c.get("/healthz")).status_code == 200
    assert_quiet(srv)


async def viewers_are(c: httpx.AsyncClient, video: str, n: int) -> bool:
    return await viewers(c, video) == n


async def stuck_disconnects(c: httpx.AsyncClient) -> bool:
    return await metric(c, "livecomments_stuck_disconnects_total") >= 1



async def test_a_client_that_half_closes_after_its_request_still_gets_its_answer(server: ServerProcess) -> None:
    """On the Hypercorn path, EOF right after a whole request must not cancel the answer
    (Hypercorn takes EOF for a client gone and would drop the response): the hand-off
    keeps the EOF back until the answer is out. Several rounds: the race is tight."""
    for n in (0, 100, 4000, 0, 100, 4000):
        sock = await raw_connect(server.port)
        with sock:
            await send_all(
                sock,
                b"POST /v1/videos/a/b/comments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (n, b"x" * n),
            )
            sock.shutdown(socket.SHUT_WR)
            answer = await closed_by_server(sock)
        assert answer.startswith(b"HTTP/1.1 404 "), (n, answer[:200])
