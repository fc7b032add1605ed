"""Hostile WebSocket clients: fragment floods, resume and ping floods from clients that
never read, bad handshakes, JSON nested too deep. Raw frames built by hand (benches.hostile)
on plain sockets, read back with a client-side wsproto; trio-websocket where convenient."""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
from benches.hostile import OP_CONT, OP_PING, OP_TEXT, RawWs, fragmented, frame, send_within, text
from wsproto.events import Pong

from tests.e2e.helpers import metric, open_ws, post, post_many, raw_request, wait_until
from tests.e2e.sse import WAIT_S
from tests.support.server import ServerProcess

MiB = 1024 * 1024
RSS_BOUND = 64 * MiB  # a flood on one connection may grow the server by less than this
STALL_S = 2.0  # a flood's send blocked this long: the server stopped reading it (not an assertion)


def ws_path(video: str, query: str = "backlog=0") -> str:
    return f"/v1/videos/{video}/ws?{query}"


def rss(server: ServerProcess) -> int:
    """The server process's resident memory, bytes (VmRSS)."""
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as c:
        yield c


async def healthz(client: httpx.AsyncClient) -> None:
    with trio.fail_after(WAIT_S):
        r = await client.get("/healthz")
    assert r.status_code == 200, r.text


def errors(ws: RawWs) -> list[dict[str, Any]]:
    return [m for m in ws.messages() if m.get("type") == "error"]


def comment_ids(ws: RawWs) -> list[str]:
    return [m["id"] for m in ws.messages() if m.get("type") == "comment"]


async def send_ignoring_resets(ws: RawWs, data: bytes) -> None:
    """Send a flood the server may cut short (it closes once it has seen enough)."""
    try:
        await ws.send(data)
    except OSError:
        pass


# -- fragments ------------------------------------------------------------------------------


async def test_40000_empty_continuation_frames_are_closed_1008_and_healthz_answers(
    server: ServerProcess, http: httpx.AsyncClient, video: str
) -> None:
    ws = await RawWs.connect(server.port, ws_path(video))
    try:
        data = frame(OP_TEXT, b"[", fin=False) + frame(OP_CONT, fin=False) * 40_000 + frame(OP_CONT, b"]")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_ignoring_resets, ws, data)
            await healthz(http)  # answered while the flood arrives
            await ws.read_until(lambda: ws.closed is not None or ws.ended, "the server's close frame")
            nursery.cancel_scope.cancel()
        assert ws.closed is not None, f"the connection ended without a close frame; got {ws.messages()[-3:]}"
        assert ws.closed.code == 1008, ws.closed
        assert errors(ws) == []  # the message was never parsed
        await healthz(http)
    finally:
        ws.close()


@pytest.mark.parametrize("pieces", [65, 4096])
async def test_a_message_of_more_than_64_fragments_is_closed_1008(
    server: ServerProcess, http: httpx.AsyncClient, video: str, pieces: int
) -> None:
    posted = await post_many(http, server, video, 2)
    resume = json.dumps({"type": "resume", "after": posted[0]["id"]}).encode()
    # At the limit, a fragmented message is a message like any other.
    ws = await RawWs.connect(server.port, ws_path(video))
    try:
        await ws.send(fragmented(resume, 64))
        await ws.read_until(lambda: posted[1]["id"] in comment_ids(ws), "the replay of a 64-fragment resume")
    finally:
        ws.close()
    ws = await RawWs.connect(server.port, ws_path(video))
    try:
        await send_ignoring_resets(ws, fragmented(resume, pieces))
        await ws.read_until(lambda: ws.closed is not None or ws.ended, "the server's close frame")
        assert ws.closed is not None and ws.closed.code == 1008, ws.closed
        assert comment_ids(ws) == []  # never replayed: the message was refused, not run
    finally:
        ws.close()


# -- floods from clients that never read ----------------------------------------------------


async def flood_until_paused(
    server: ServerProcess, client: httpx.AsyncClient, ws: RawWs, chunk: bytes, chunks: int
) -> bytes:
    """Send ``chunk`` up to ``chunks`` times, the server's memory staying within the
    bound, until the server has stopped reading this client (its metric says so).
    -> the unsent tail of the last chunk (the caller sends it before anything else)."""
    before = rss(server)
    paused0 = await metric(client, "livecomments_ws_reads_paused_total")

    def growth() -> int:
        return rss(server) - before

    async def paused() -> bool:
        assert growth() < RSS_BOUND, f"the server grew by {growth() / MiB:.0f} MiB during the flood"
        return await metric(client, "livecomments_ws_reads_paused_total") > paused0

    rest = b""
    for _ in range(chunks):
        if await paused():
            break
        rest = await send_within(ws, chunk, STALL_S)
        if rest:
            break  # the server does not take more; now it must say it paused
    await wait_until(paused, "the server to stop reading the flooding client")
    await healthz(client)
    return rest


@pytest.fixture
def own_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A server of the test's own: its memory is the flood's alone."""
    return server_factory()


async def test_a_resume_flood_from_a_client_that_never_reads_is_bounded(own_server: ServerProcess, video: str) -> None:
    server = own_server
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client:
        await post_many(client, server, video, 200, prefix="x" * 100)
        ws = await RawWs.connect(server.port, ws_path(video), rcvbuf=4096)
        try:
            start = trio.current_time()
            resume = text({"type": "resume", "after": "1"})
            rest = await flood_until_paused(server, client, ws, resume * 100, 60)  # 6,000 resumes at most
            # Reading now, the client gets its answers: at most the rate's worth of
            # replays (5 per 10 s), `rate_limited` for the rest.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.send, rest)
                await ws.read_until(lambda: any(e.get("error") == "rate_limited" for e in errors(ws)), "rate_limited")
                live = await post(client, server, video, "after the flood")
                await ws.read_until(lambda: live["id"] in comment_ids(ws), "a live comment after the flood")
            elapsed = trio.current_time() - start
            replays = sum(1 for m in ws.messages() if m.get("type") == "comment" and m["id"] != live["id"]) / 200
            assert replays <= 5 * (1 + math.ceil(elapsed / 10)), (replays, elapsed)
            assert {e["error"] for e in errors(ws)} == {"rate_limited"}
        finally:
            ws.close()


async def test_a_ping_flood_from_a_client_that_never_reads_is_bounded(own_server: ServerProcess, video: str) -> None:
    server = own_server
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client:
        ws = await RawWs.connect(server.port, ws_path(video), rcvbuf=4096)
        try:
            one = frame(OP_PING, b"p" * 125)
            rest = await flood_until_paused(server, client, ws, one * (MiB // len(one)), 100)  # 100 MiB at most
            # Reading now, the client gets pongs for what the server reads as it goes
            # on; a ping sent last is answered too.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.send, rest + frame(OP_PING, b"last one"))
                seen = [0]

                def last_pong() -> bool:
                    new, seen[0] = ws.events[seen[0] :], len(ws.events)
                    return any(isinstance(e, Pong) and e.payload == b"last one" for e in new)

                await ws.read_until(last_pong, "the pong for the last ping")
        finally:
            ws.close()


# -- resume: the rate, and one waiting at a time ---------------------------------------------


async def test_a_resume_over_the_rate_gets_rate_limited_and_the_stream_goes_on(
    server_factory: Callable[..., ServerProcess], video: str
) -> None:
    server = server_factory({"LIVECOMMENTS_WS_RESUME_RATE": "2/60s"})
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client:
        posted = await post_many(client, server, video, 3)
        async with open_ws(server, ws_path(video)) as w:
            for n in (1, 2):
                await w.send({"type": "resume", "after": posted[0]["id"]})
                await w.wait_comments(2 * n)
            await w.send({"type": "resume", "after": posted[0]["id"]})
            err = await w.wait_type("error")
            assert err["error"] == "rate_limited", err
            assert isinstance(err["detail"], str) and err["detail"]
            assert isinstance(err["retry_after"], int) and 1 <= err["retry_after"] <= 60, err
            live = await post(client, server, video, "still streaming")
            await w.wait_for(lambda: live["id"] in w.comment_ids(), "a live comment after the refusal")
            assert len(w.of_type("comment")) == 5  # two replays of two, then the live one


async def test_a_resume_replaces_one_not_yet_run(server: ServerProcess, http: httpx.AsyncClient, video: str) -> None:
    posted = await post_many(http, server, video, 8)
    ws = await RawWs.connect(server.port, ws_path(video))
    try:
        # Three resumes in one write: the server reads them in one go, and only the last
        # one runs (the two before it had not started).
        await ws.send(b"".join(text({"type": "resume", "after": c["id"]}) for c in posted[:3]))
        want = [c["id"] for c in posted[3:]]
        await ws.read_until(lambda: comment_ids(ws)[-len(want) :] == want, "the replay after the third cursor")
        live = await post(http, server, video, "live")
        await ws.read_until(lambda: live["id"] in comment_ids(ws), "a live comment")
        assert comment_ids(ws) == [*want, live["id"]]
    finally:
        ws.close()


# -- handshake ------------------------------------------------------------------------------


def upgrade(port: int, path: str, *, version: str = "13", key: str | None = None) -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    ).encode()


def head_and_body(raw: bytes) -> tuple[str, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1").lower(), json.loads(body)


async def test_a_handshake_of_another_version_gets_426_and_the_version_we_speak(server: ServerProcess, video: str) -> None:
    status, raw = await raw_request(server.port, upgrade(server.port, ws_path(video), version="8"))
    assert status == 426, raw[:300]
    head, body = head_and_body(raw)
    assert "\r\nsec-websocket-version: 13" in head, head
    assert body["error"] == "unsupported_websocket_version" and body["detail"], body


@pytest.mark.parametrize(
    "key",
    [
        "dGhlIHNhbXBsZQ==",  # 11 bytes
        base64.b64encode(b"x" * 15).decode(),
        base64.b64encode(b"x" * 17).decode(),
        "this is not base64 at all",
        "!!!!!!!!!!!!!!!!!!!!!!==",  # 24 characters, not base64
    ],
)
async def test_a_handshake_whose_key_is_not_16_bytes_of_base64_gets_400(
    server: ServerProcess, video: str, key: str
) -> None:
    status, raw = await raw_request(server.port, upgrade(server.port, ws_path(video), key=key))
    assert status == 400, raw[:300]
    _, body = head_and_body(raw)
    assert body["error"] == "bad_websocket_handshake" and body["detail"], body


# -- messages the JSON parser chokes on --------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    ["[" * 2000 + "]" * 2000, '{"a":' * 100 + "[" * 1500 + "]" * 1500 + "}" * 100, "not json"],
    ids=["arrays", "objects-and-arrays", "not-json"],
)
async def test_json_nested_too_deep_gets_malformed_json_and_the_connection_stays(
    server: ServerProcess, http: httpx.AsyncClient, video: str, message: str
) -> None:
    assert len(message.encode()) <= 4096
    async with open_ws(server, ws_path(video)) as w:
        await w.ws.send_message(message)
        err = await w.wait_type("error")
        assert err["error"] == "malformed_json", err
        assert set(err) == {"type", "error", "detail"} and err["detail"]
        posted = await post(http, server, video, "still here")
        await w.wait_for(lambda: posted["id"] in w.comment_ids(), "a live comment after the bad message")
        await w.send({"type": "resume", "after": "1"})
        await w.wait_comments(2)  # the replay of that comment: the connection still takes resumes
        assert not w.ended


@pytest.mark.parametrize(
    "after",
    ["9" * 4000, int("9" * 4000), "-1", 1.5, None, True, str(2**63)],
    ids=["4000-digit-string", "4000-digit-number", "negative", "float", "null", "true", "2**63"],
)
async def test_a_cursor_that_is_not_an_id_gets_invalid_cursor(
    server: ServerProcess, video: str, after: object
) -> None:
    async with open_ws(server, ws_path(video)) as w:
        await w.send({"type": "resume", "after": after})
        err = await w.wait_type("error")
        assert err["error"] == "invalid_cursor", err
        assert err["detail"]
        await w.send({"type": "resume", "after": "1"})  # and the connection goes on
        await w.send("not a resume")
        assert (await w.wait_type("error", 2))["error"] == "bad_request"
