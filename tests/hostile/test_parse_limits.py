"""Parsing limits hold on every path: a POST that asks to close ends with its answer, deep
JSON is a 400 (never a 500, a dropped connection or a logged traceback), integer
parameters of thousands of digits are a 400, and the request-head limit holds however the
head arrives, on the lean path and on connections Hypercorn serves."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import trio

from tests.e2e.helpers import fresh_user, raw_connect, send_all
from tests.e2e.sse import WAIT_S
from tests.support.server import ServerProcess
from transport.http1 import HEAD_LIMIT

Response = tuple[int, str, bytes]  # status, head, body

# About 2,000 levels in under 4 KiB: deeper than the interpreter's recursion limit.
NESTED = b"[" * 2000 + b"]" * 2000
# One more digit than int() converts (CPython refuses strings of more than 4,300 digits).
HUGE = "1" * 4301
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def exchange(port: int, data: bytes, count: int = 1) -> list[Response]:
    """Send ``data`` on a new connection and read ``count`` responses (the last may be a
    stream: its head is enough), or what comes before the server closes."""
    sock = await raw_connect(port)
    out: list[Response] = []
    with sock:
        try:
            await send_all(sock, data)
        except OSError:
            pass  # answered and closed before it read everything
        buf = bytearray()
        with trio.fail_after(WAIT_S):
            while len(out) < count:
                end = buf.find(b"\r\n\r\n")
                if end != -1:
                    head = bytes(buf[:end]).decode("latin-1")
                    m = re.match(r"HTTP/1\.1 (\d{3})", head)
                    assert m, head
                    length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
                    if length is None and len(out) == count - 1:
                        out.append((int(m.group(1)), head, b""))
                        break
                    assert length is not None, head
                    size = int(length.group(1))
                    if len(buf) >= end + 4 + size:
                        out.append((int(m.group(1)), head, bytes(buf[end + 4 : end + 4 + size])))
                        del buf[: end + 4 + size]
                        continue
                try:
                    chunk = await sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
    return out


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: x"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_code(response: Response) -> str:
    body = json.loads(response[2])
    assert isinstance(body, dict) and isinstance(body.get("detail"), str), body
    return str(body["error"])


def no_traceback(server: ServerProcess, since: int) -> None:
    log = "".join(server.output[since:])
    assert "Traceback" not in log, log[-3000:]


# -- 4: Connection: close ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "status"), [("hello", 201), ("   ", 422)], ids=["201", "422"])
async def test_a_post_asking_to_close_ends_with_its_answer(server: ServerProcess, video: str, text: str, status: int) -> None:
    """The lean POST read the whole body; the client asked to close: the connection ends
    right after the answer (it waited 30 s for a body that was not coming)."""
    body = json.dumps({"text": text}).encode()
    data = request(
        "POST", f"/v1/videos/{video}/comments", body,
        {"Authorization": "Bearer " + server.token(fresh_user()), "Connection": "close"},
    )
    sock = await raw_connect(server.port)
    received = bytearray()
    with sock:
        await send_all(sock, data)
        try:
            with trio.fail_after(WAIT_S):
                while chunk := await sock.recv(65536):
                    received += chunk
        except trio.TooSlowError:
            raise AssertionError(f"no end of the connection after the answer: {bytes(received[:200])!r}") from None
    assert received.startswith(b"HTTP/1.1 %d " % status), bytes(received[:200])
    assert b"connection: close" in received.lower()


# -- 5: deep JSON ----------------------------------------------------------------------------------


def _nested_cases(server: ServerProcess, video: str) -> dict[str, bytes]:
    streamer = {"Authorization": "Bearer " + server.token(fresh_user(), streams=[video])}
    admin = {"Authorization": "Bearer " + server.token(fresh_user(), roles=["admin"])}
    poster = {"Authorization": "Bearer " + server.token(fresh_user())}
    comment = request("POST", f"/v1/videos/{video}/comments", b'{"text": ' + NESTED + b"}", poster)
    return {
        "guest": request("POST", "/v1/auth/guest", b'{"name": ' + NESTED + b"}"),
        "video-ban": request("POST", f"/v1/videos/{video}/bans", b'{"user_id": ' + NESTED + b"}", streamer),
        "global-ban": request("POST", "/v1/bans", b'{"user_id": ' + NESTED + b"}", admin),
        "settings": request("PUT", f"/v1/videos/{video}/settings", b'{"slow_mode_s": ' + NESTED + b"}", streamer),
        "post-lean": comment,
        # The same post on a connection Hypercorn already serves: the Quart route.
        "post-asgi": HEALTHZ + comment,
    }


@pytest.mark.parametrize("route", ["guest", "video-ban", "global-ban", "settings", "post-lean", "post-asgi"])
async def test_deeply_nested_json_is_400(server: ServerProcess, video: str, route: str) -> None:
    data = _nested_cases(server, video)[route]
    assert len(data.rsplit(b"\r\n\r\n", 1)[1]) < 4096  # under the body limit: parsed, not refused for size
    since = len(server.output)
    count = 2 if route == "post-asgi" else 1
    got = await exchange(server.port, data, count)
    assert len(got) == count, f"no answer: {got}"
    assert got[-1][0] == 400, got[-1]
    assert error_code(got[-1]) == "malformed_json"
    no_traceback(server, since)


# -- 6: integers of thousands of digits ----------------------------------------------------------


def _ws_upgrade(target: str) -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("sse-backlog", "invalid_parameter"),
        ("sse-asgi-backlog", "invalid_parameter"),
        ("ws-backlog", "invalid_parameter"),
        ("history-limit", "invalid_parameter"),
        ("moderation-log-limit", "invalid_parameter"),
    ],
)
async def test_an_integer_of_thousands_of_digits_is_400(server: ServerProcess, video: str, case: str, code: str) -> None:
    mod = {"Authorization": "Bearer " + server.token(fresh_user(), roles=["moderator"])}
    data = {
        "sse-backlog": request("GET", f"/v1/videos/{video}/events?backlog={HUGE}"),
        # The ASGI app's own SSE route, for a stream asked on a kept-alive connection.
        "sse-asgi-backlog": HEALTHZ + request("GET", f"/v1/videos/{video}/events?backlog={HUGE}"),
        "ws-backlog": _ws_upgrade(f"/v1/videos/{video}/ws?backlog={HUGE}"),
        "history-limit": request("GET", f"/v1/videos/{video}/comments?limit={HUGE}"),
        "moderation-log-limit": request("GET", f"/v1/videos/{video}/moderation-log?limit={HUGE}", headers=mod),
    }[case]
    since = len(server.output)
    count = 2 if case.startswith("sse-asgi") else 1
    got = await exchange(server.port, data, count)
    assert len(got) == count, f"no answer: {got}"
    assert got[-1][0] == 400, got[-1]
    assert error_code(got[-1]) == code
    no_traceback(server, since)


async def test_leading_zeros_do_not_count_as_digits(server: ServerProcess, video: str) -> None:
    """The guard is on significant digits: a value in range stays valid however padded."""
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client:
        r = await client.get(f"/v1/videos/{video}/comments", params={"limit": "0" * 5000 + "7"})
    assert r.status_code == 200, r.text[:300]


# -- 7: the head limit, however the head arrives ---------------------------------------------------


def _head_of(size: int, target: bytes = b"/healthz") -> bytes:
    """A GET whose head (request line to blank line) is exactly ``size`` bytes."""
    start, end = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize(
    "where",
    ["lean", "lean-stream", "after-lean-post", "handed-off", "handed-off-later-write"],
)
async def test_a_60k_head_in_one_write_is_431(server: ServerProcess, video: str, where: str) -> None:
    big = _head_of(60_000)
    since = len(server.output)
    if where == "lean":
        got = await exchange(server.port, big)
    elif where == "lean-stream":
        got = await exchange(server.port, _head_of(60_000, f"/v1/videos/{video}/events".encode()))
    elif where == "after-lean-post":
        # The lean path keeps a connection after a post and reads the next head itself.
        post = request(
            "POST", f"/v1/videos/{video}/comments", b'{"text": "hi"}',
            {"Authorization": "Bearer " + server.token(fresh_user())},
        )
        got = await exchange(server.port, post + big, 2)
        assert got and got[0][0] == 201, got
    elif where == "handed-off":
        got = await exchange(server.port, HEALTHZ + big, 2)
        assert got and got[0][0] == 200, got
    else:
        # Hypercorn serves the connection; the big head comes in one later write.
        sock = await raw_connect(server.port)
        with sock:
            await send_all(sock, HEALTHZ)
            first = await _read_status(sock)
            assert first.startswith(b"HTTP/1.1 200"), first
            await send_all(sock, big)
            second = await _read_status(sock)
        got = [(int(second[9:12]), second.decode("latin-1"), b"")]
    assert got[-1][0] == 431, got[-1][:2]
    no_traceback(server, since)


async def _read_status(sock: trio.socket.SocketType) -> bytes:
    """Read one Content-Length framed response (whole); return it."""
    buf = bytearray()
    with trio.fail_after(WAIT_S):
        while True:
            end = buf.find(b"\r\n\r\n")
            if end != -1:
                length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", bytes(buf[:end]))
                if length and len(buf) >= end + 4 + int(length.group(1)):
                    return bytes(buf)
            chunk = await sock.recv(65536)
            assert chunk, bytes(buf)
            buf += chunk


async def test_the_head_limit_is_exact(server: ServerProcess) -> None:
    """A head of HEAD_LIMIT bytes is served, one byte more is 431, both sent in one write."""
    at_limit = await exchange(server.port, _head_of(HEAD_LIMIT))
    assert at_limit and at_limit[0][0] == 200, at_limit
    over = await exchange(server.port, _head_of(HEAD_LIMIT + 1))
    assert over and over[0][0] == 431, over
    assert error_code(over[0]) == "head_too_large"
    over_kept = await exchange(server.port, HEALTHZ + _head_of(HEAD_LIMIT + 1), 2)
    assert [r[0] for r in over_kept] == [200, 431], over_kept
