"""A byte-level fuzz of the front door: random bytes, and valid requests (SSE, WebSocket
upgrade, lean POST, health check, history; alone or behind a request that hands the
connection to Hypercorn) whose parts are swapped for hostile values and whose bytes are
then mutated, sent to a real server; and mutated WebSocket frames after a valid upgrade.

Whatever arrives, the server
- never answers 5xx (nor closes a WebSocket with 1011, its 5xx);
- answers every request that arrived whole (an h11 parse of the bytes, without a size
  limit, is the reference) instead of dropping the connection, within a generous time;
- answers a whole request head over ``HEAD_LIMIT`` with 431;
- keeps answering ``/healthz``, and its resident memory stays bounded.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
from typing import Any
from urllib.parse import quote

import h11
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.e2e.helpers import fresh_user, raw_connect, send_all
from tests.support.server import ServerProcess
from transport.http1 import HEAD_LIMIT

EXCHANGE_S = 20.0  # generous: only detects a hang (the server's own timeouts are 10 s and 30 s)
RSS_GROWTH_MAX = 256 * 1024 * 1024  # what the fuzz may add to the server's resident memory
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

# -- hostile values for the parts of a valid request ----------------------------------------------

# Integers: plausible ones, ones of more digits than int() converts (4,300), odd spellings.
NUMBERS = st.one_of(
    st.integers(0, 300).map(str),
    st.integers(-(10**20), 10**20).map(str),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.sampled_from(["", "0", "00007", "0" * 5000 + "1", "1e3", "\u0663", "0x10", " 5", "nan", "-0"]),
)
VIDEOS = st.one_of(
    st.integers(0, 3).map(lambda i: f"fuzz{os.getpid()}_{i}"),
    st.sampled_from(["", "a" * 65, "%zz", "a%00b", "a/b", "..", "%41"]),
)
NESTED = st.integers(1, 3000).map(lambda d: "[" * d + "]" * d)
JSON_VALUES = st.one_of(st.text(max_size=40).map(json.dumps), NUMBERS.filter(str.isdigit), NESTED, st.just("null"))
BODIES = st.one_of(
    st.tuples(JSON_VALUES, st.one_of(st.none(), JSON_VALUES)).map(
        lambda t: ('{"text": ' + t[0] + ("" if t[1] is None else ', "client_id": ' + t[1]) + "}").encode()
    ),
    st.binary(max_size=300),
    st.integers(0, 6000).map(lambda n: b'{"text": "' + b"x" * n + b'"}'),
)
PADS = st.sampled_from([0, 10, 1000, HEAD_LIMIT - 200, HEAD_LIMIT + 1, 60_000])
EXTRA_HEADERS = st.lists(
    st.one_of(
        PADS.map(lambda n: ("X-Pad", "a" * n)),
        st.sampled_from(
            [
                ("Connection", "close"),
                ("Connection", "keep-alive"),
                ("Expect", "100-continue"),
                ("Transfer-Encoding", "chunked"),
                ("Accept", "text/event-stream"),
                ("Content-Type", "text/plain"),
            ]
        ),
        NUMBERS.map(lambda n: ("Content-Length", n)),
        NUMBERS.map(lambda n: ("Last-Event-ID", n)),
    ),
    max_size=3,
)


def q(value: str) -> str:
    return quote(value, safe="")


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One valid request of a kind, with hostile values in its parts."""
    kind = draw(st.sampled_from(["sse", "ws", "post", "healthz", "history"]))
    video = draw(VIDEOS)
    headers: list[tuple[str, str]] = [("Host", "x")]
    body = b""
    if kind == "sse":
        target = f"/v1/videos/{video}/events?backlog={q(draw(NUMBERS))}&last_event_id={q(draw(NUMBERS))}"
    elif kind == "ws":
        target = f"/v1/videos/{video}/ws?backlog={q(draw(NUMBERS))}"
        headers += [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]
    elif kind == "post":
        target = f"/v1/videos/{video}/comments"
        body = draw(BODIES)
        headers += [("Authorization", "Bearer " + draw(st.sampled_from(["TOKEN", "nope"]))), ("Content-Type", "application/json")]
        headers.append(("Content-Length", str(len(body))))
    elif kind == "history":
        target = f"/v1/videos/{video}/comments?before={q(draw(NUMBERS))}&limit={q(draw(NUMBERS))}"
    else:
        target = "/healthz"
    headers += draw(EXTRA_HEADERS)
    head = f"{'POST' if kind == 'post' else 'GET'} {target} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    data = head.encode("utf-8") + body
    if draw(st.booleans()):
        data = HEALTHZ + data  # Hypercorn serves the connection from the first request on
    return data


# -- byte-level mutations -------------------------------------------------------------------------

AT = st.floats(0, 1)  # a position, as a share of the length (shrinks well)
MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), AT, st.integers(0, 255)),
    st.tuples(st.just("insert"), AT, st.binary(min_size=1, max_size=20)),
    st.tuples(st.just("delete"), AT, st.integers(1, 64)),
    st.tuples(st.just("repeat"), AT, st.integers(1, 16), st.integers(2, 3000)),
    st.tuples(st.just("run"), AT, st.sampled_from(b"1[{a \r\n%\x00\xff"), st.sampled_from([1, 100, 5000, 17_000, 70_000])),
    st.tuples(st.just("truncate"), AT),
)


def mutate(data: bytes, mutations: list[tuple[Any, ...]]) -> bytes:
    buf = bytearray(data)
    for op, at, *args in mutations:
        i = min(int(at * len(buf)), len(buf))
        if op == "flip" and buf:
            buf[min(i, len(buf) - 1)] = args[0]
        elif op == "insert":
            buf[i:i] = args[0]
        elif op == "delete":
            del buf[i : i + args[0]]
        elif op == "repeat":
            piece = bytes(buf[i : i + args[0]])
            buf[i:i] = piece * (args[1] - 1)
        elif op == "run":
            buf[i:i] = bytes([args[0]]) * args[1]
        elif op == "truncate":
            del buf[i:]
    return bytes(buf)


# -- the reference: what arrived whole --------------------------------------------------------------


def whole_requests(data: bytes) -> tuple[list[tuple[bytes, int]], bool | str]:
    """(method, head size) of each request at the start of ``data`` that h11 parses whole
    with no size limit, up to the first that is not whole or ends the connection (a close,
    an upgrade); and whether bytes follow them ("malformed": bytes that cannot be a
    request)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(data) + 1)
    conn.receive_data(data)
    whole: list[tuple[bytes, int]] = []
    current = (b"", 0)
    while True:
        before = len(conn.trailing_data[0]) if conn.their_state is h11.IDLE else 0
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return whole, "malformed"
        if isinstance(event, h11.Request):
            current = (event.method, before - len(conn.trailing_data[0]))
        elif isinstance(event, h11.EndOfMessage):
            whole.append(current)
            if conn.their_state is not h11.DONE:  # Connection: close, or an upgrade
                return whole, False
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            conn.start_next_cycle()
        elif event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            return whole, bool(conn.trailing_data[0])


def final_statuses(buf: bytes, methods: list[bytes]) -> tuple[list[int], bool]:
    """The status of each final response in ``buf``, and whether the last one is open
    ended (a stream, a protocol switch, a body up to the close)."""
    statuses: list[int] = []
    pos = 0
    while (end := buf.find(b"\r\n\r\n", pos)) != -1:
        head = buf[pos:end]
        m = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
        assert m, f"not an HTTP response: {head[:200]!r}"
        status = int(m.group(1))
        pos = end + 4
        if status == 101:
            return [*statuses, status], True
        if status < 200:
            continue
        statuses.append(status)
        if status in (204, 304) or (len(statuses) <= len(methods) and methods[len(statuses) - 1] == b"HEAD"):
            continue
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        if length is None:
            return statuses, True
        pos += int(length.group(1))
    return statuses, False


# -- the server ---------------------------------------------------------------------------------


def rss(server: ServerProcess) -> int:
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as f:
        kb = next(line for line in f if line.startswith("VmRSS:")).split()[1]
    return int(kb) * 1024


@pytest.fixture(scope="module")
def baseline(server: ServerProcess) -> int:
    """The server's resident memory before the fuzz."""
    return rss(server)


async def still_well(server: ServerProcess, baseline: int) -> None:
    sock = await raw_connect(server.port)
    with sock:
        await send_all(sock, HEALTHZ)
        buf = bytearray()
        with trio.fail_after(EXCHANGE_S):
            while b"\r\n\r\n" not in buf:
                chunk = await sock.recv(65536)
                assert chunk, f"/healthz: closed without an answer: {bytes(buf)!r}"
                buf += chunk
    assert buf.startswith(b"HTTP/1.1 200 "), bytes(buf[:200])
    grown = rss(server) - baseline
    assert grown < RSS_GROWTH_MAX, f"the server's memory grew by {grown >> 20} MiB"


async def send_quietly(sock: trio.socket.SocketType, data: bytes) -> None:
    try:
        await send_all(sock, data)
    except OSError:
        pass  # the server may answer (431, 413) and close before it read everything


async def receive(sock: trio.socket.SocketType) -> bytes:
    try:
        return await sock.recv(65536)
    except OSError:  # a reset after the server's answer
        return b""


# -- HTTP -------------------------------------------------------------------------------------


@FUZZ
@given(
    # Mostly valid requests with hostile parts (one in five: bare random bytes), then
    # mostly few byte-level mutations, so that most requests still reach the routes.
    data=st.integers(0, 4).flatmap(lambda i: st.binary(max_size=2000) if i == 0 else requests()),
    mutations=st.lists(MUTATIONS, max_size=3),
)
async def test_fuzzed_requests(server: ServerProcess, baseline: int, data: bytes, mutations: list[tuple[Any, ...]]) -> None:
    data = mutate(data.replace(b"Bearer TOKEN", b"Bearer " + server.token(fresh_user("fz")).encode()), mutations)
    whole, tail = whole_requests(data)
    methods = [m for m, _ in whole]
    sock = await raw_connect(server.port)
    with sock:
        await send_quietly(sock, data)
        if not whole:
            # Nothing to answer for sure: say we are done, so the server need not wait.
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        try:
            with trio.fail_after(EXCHANGE_S):
                while True:
                    statuses, open_ended = final_statuses(bytes(received), methods)
                    if open_ended or (whole and len(statuses) >= len(whole)):
                        break
                    chunk = await receive(sock)
                    if not chunk:
                        break
                    received += chunk
        except trio.TooSlowError:
            raise AssertionError(f"neither answered nor closed in {EXCHANGE_S} s; got {bytes(received[:300])!r}") from None
    statuses, _ = final_statuses(bytes(received), methods)
    event(f"whole requests: {min(len(whole), 2)}; answers: {statuses[:2]}")  # --hypothesis-show-statistics
    assert all(s < 500 for s in statuses), f"{statuses}: {bytes(received[:500])!r}"
    if whole and not tail:
        # Only when nothing follows: on a connection Hypercorn serves, bytes after a
        # request that are not a whole request (pipelined garbage) can make it give up
        # the connection, answers included (Hypercorn 0.17; the lean path answers).
        assert statuses, f"a whole request ({whole[0][0]!r}) was dropped without an answer"
    for (_, head_size), status in zip(whole, statuses):
        if head_size > HEAD_LIMIT:
            assert status == 431, f"a {head_size}-byte head got {status}"
    await still_well(server, baseline)


# -- WebSocket frames after a valid upgrade -------------------------------------------------------

# Mostly well-formed text frames, so that the messages reach the command reader.
OPCODES = st.sampled_from([0x1, 0x1, 0x1, 0x1, 0x1, 0x0, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB])
PAYLOADS = st.one_of(
    NUMBERS.map(lambda n: json.dumps({"type": "resume", "after": n}).encode()),
    NUMBERS.map(lambda n: ('{"type": "resume", "after": ' + n + "}").encode()),
    NESTED.map(str.encode),
    st.binary(max_size=200),
    st.integers(0, 70_000).map(lambda n: b"a" * n),
    st.tuples(st.integers(0, 5000), st.binary(max_size=130)).map(lambda t: struct.pack("!H", t[0]) + t[1]),
)


def frame(opcode: int, payload: bytes, fin: bool, masked: bool, rsv: int) -> bytes:
    """A client frame, masked (as clients must) unless told otherwise."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    size = bytes([n]) if n < 126 else (b"\x7e" + struct.pack("!H", n) if n < 65536 else b"\x7f" + struct.pack("!Q", n))
    size = bytes([size[0] | (0x80 if masked else 0)]) + size[1:]
    if not masked:
        return bytes([first]) + size + payload
    key = b"\x37\xfa\x21\x3d"
    return bytes([first]) + size + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


TEXT_FRAME = PAYLOADS.map(lambda p: frame(0x1, p, True, True, 0))  # whole, masked, plain text
FRAMES = st.lists(
    st.builds(
        frame,
        OPCODES,
        PAYLOADS,
        st.sampled_from([True, True, True, False]),
        st.sampled_from([True, True, True, False]),
        st.sampled_from([0, 0, 0, 0, 0, 1, 4]),
    ),
    max_size=4,
)


def close_codes(data: bytes) -> list[int]:
    """The codes of the close frames among the server's (unmasked) frames."""
    codes, pos = [], 0
    while pos + 2 <= len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            n, pos = struct.unpack("!H", data[pos : pos + 2])[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack("!Q", data[pos : pos + 8])[0], pos + 8
        if opcode == 0x8 and n >= 2 and pos + 2 <= len(data):
            codes.append(struct.unpack("!H", data[pos : pos + 2])[0])
        pos += n
    return codes


@FUZZ
@given(first=TEXT_FRAME, frames=FRAMES, mutations=st.lists(MUTATIONS, max_size=3))
async def test_fuzzed_frames_after_an_upgrade(
    server: ServerProcess, baseline: int, first: bytes, frames: list[bytes], mutations: list[tuple[Any, ...]]
) -> None:
    upgrade = (
        f"GET /v1/videos/fuzz{os.getpid()}_ws/ws?backlog=0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    sock = await raw_connect(server.port)
    with sock:
        await send_all(sock, upgrade)
        received = bytearray()
        with trio.fail_after(EXCHANGE_S):
            while b"\r\n\r\n" not in received:
                chunk = await receive(sock)
                assert chunk, bytes(received)
                received += chunk
        assert received.startswith(b"HTTP/1.1 101 "), bytes(received[:200])
        await send_quietly(sock, mutate(first + b"".join(frames), mutations))
        try:
            sock.shutdown(socket.SHUT_WR)  # the client is done: the server must end too
        except OSError:
            pass
        try:
            with trio.fail_after(EXCHANGE_S):
                while chunk := await receive(sock):
                    received += chunk
        except trio.TooSlowError:
            raise AssertionError(f"the WebSocket did not end in {EXCHANGE_S} s after the client's EOF") from None
    codes = close_codes(bytes(received[received.find(b"\r\n\r\n") + 4 :]))
    event(f"close codes: {codes}")
    assert 1011 not in codes, codes
    await still_well(server, baseline)
