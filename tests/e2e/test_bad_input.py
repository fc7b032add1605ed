"""Bad input gets a clear error and disturbs nobody: garbage on the wire while a viewer
watches, and keep-alive connections that survive error answers."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
import trio

from tests.e2e.helpers import assert_error, fresh_user, post, raw_connect, raw_request, send_all
from tests.e2e.sse import open_sse
from tests.support.server import ServerProcess


def garbage(video: str, token: str) -> list[tuple[str, bytes, int | None]]:
    """(name, bytes, expected status; None: anything but a 5xx, or no answer)."""
    v = video.encode()
    head_20k = b"a" * 20_000
    # Larger than one read (64 KiB), so that the head limit applies however it arrives.
    big = b"a" * 100_000
    return [
        ("binary", bytes(range(256)) * 8, 400),
        ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, 400),
        ("blank-lines", b"\r\n\r\n\r\n\r\n", 400),
        ("no-http", b"hello there\r\n\r\n", 400),
        ("20k-head", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + head_20k + b"\r\n\r\n", None),
        ("big-head", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n", 431),
        (
            "big-head-stream",
            b"GET /v1/videos/" + v + b"/events HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n",
            431,
        ),
        ("big-target", b"GET /v1/videos/" + v + b"/events?x=" + big + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
        ("no-host", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        ("bad-version", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", None),
        ("header-no-colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nbroken header\r\n\r\n", 400),
        ("ctl-in-header", b"GET /v1/videos/" + v + b"/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\x01\r\n\r\n", 400),
        (
            "latin1-cursor",
            b"GET /v1/videos/" + v + b"/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xe9\xe9\r\n\r\n",
            400,
        ),
        ("bad-percent", b"GET /v1/videos/%zz%/events HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ("nul-video", b"GET /v1/videos/a%00b/events HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ("bad-length", b"POST /v1/videos/" + v + b"/comments HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
        (
            "two-lengths",
            b"POST /v1/videos/"
            + v
            + b"/comments HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            400,
        ),
        (
            "bad-chunks",
            b"POST /v1/videos/"
            + v
            + b"/comments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            None,
        ),
        ("post-stream", b"POST /v1/videos/" + v + b"/events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", None),
        ("brew", b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", None),
        ("unknown-v1", b"GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ]


async def test_garbage_disturbs_no_viewer(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    log_start = len(server.output)
    token = server.token(fresh_user())
    async with open_sse(server.url, f"/v1/videos/{video}/events") as viewer:
        first = await post(client, server, video, "before the garbage")
        await viewer.wait_comment_id(first["id"])

        cases = garbage(video, token)
        results: dict[str, int | None] = {}

        async def send(name: str, data: bytes) -> None:
            try:
                status, _ = await raw_request(server.port, data)
            except trio.TooSlowError:
                status = -1  # no answer and no close: recorded, checked below
            results[name] = status

        async with trio.open_nursery() as nursery:
            for name, data, _ in cases:
                nursery.start_soon(send, name, data)
            # A partial head left open must not hold anything up either.
            idle = await raw_connect(server.port)
            await send_all(idle, b"GET /v1/videos/" + video.encode() + b"/events HTTP/1.1\r\nHo")

        with idle:
            for name, _, expected in cases:
                status = results[name]
                assert status != -1, f"{name}: neither answered nor closed"
                if expected is not None:
                    assert status == expected, (name, status)
                else:
                    assert status is None or status < 500, (name, status)

            # The viewer is still connected and still gets comments, without gaps.
            second = await post(client, server, video, "after the garbage")
            await viewer.wait_comment_id(second["id"])
            assert viewer.comment_ids() == [first["id"], second["id"]]
            assert viewer.named("gap") == [] and not viewer.ended
            assert (await client.get("/healthz")).status_code == 200

    log = "".join(server.output[log_start:])
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("auth", [None, "Bearer nope"], ids=["no-token", "bad-token"])
async def test_keep_alive_survives_an_early_error(server: ServerProcess, video: str, auth: str | None) -> None:
    """An error answered from the head alone (401 before the body arrived) leaves the
    connection usable for the next request: never hung, never closed under the client."""
    body = b'{"text": "hi"}'
    head = (
        f"POST /v1/videos/{video}/comments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + (f"Authorization: {auth}\r\n" if auth else "") + "\r\n"
    ).encode()
    sock = await raw_connect(server.port)
    with sock:
        await send_all(sock, head)
        received = bytearray()
        # Give the server the chance to answer before the body is sent (the case that hung).
        with trio.move_on_after(0.5):
            received += await sock.recv(65536)
        await send_all(sock, body + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(10):
            while received.count(b"HTTP/1.1 ") < 2:
                data = await sock.recv(65536)
                if not data:
                    break
                received += data
    text = received.decode("latin-1")
    assert text.startswith("HTTP/1.1 401"), text[:200]
    # The body (of an allowed size) was read and dropped after the answer, and the
    # connection carried the next request.
    first, rest = text.split("HTTP/1.1 401", 1)[1].split("\r\n\r\n", 1)
    assert "connection: close" not in first.lower(), text
    assert "HTTP/1.1 200" in rest, text


async def test_error_answers_keep_the_connection(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    """Many error answers in a row on one keep-alive client, then a good request."""
    url = f"/v1/videos/{video}/comments"
    for _ in range(5):
        assert_error(await client.post(url, json={"text": "hi"}), 401)
        assert_error(
            await client.post(
                url, content=b"{", headers={**server.headers(fresh_user()), "Content-Type": "application/json"}
            ),
            400,
        )
        assert_error(
            await client.post(
                url, content=b"x" * 5000, headers={**server.headers(fresh_user()), "Content-Type": "application/json"}
            ),
            413,
        )
        assert_error(await client.post(url, content=b"{}", headers=server.headers(fresh_user())), 415)
        assert_error(await client.get(url, params={"limit": "0"}), 400)
    await post(client, server, video, "fine")


WS_HANDSHAKES = {
    "no-version-no-key": b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    "no-key": b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    "bad-version": b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 99\r\n",
}


@pytest.mark.parametrize("case", sorted(WS_HANDSHAKES))
async def test_broken_websocket_handshake_is_400(server_factory: Callable[..., ServerProcess], case: str) -> None:
    srv = server_factory()  # its own server: this request once brought the server down
    request = b"GET /v1/videos/v1/ws HTTP/1.1\r\nHost: x\r\n" + WS_HANDSHAKES[case] + b"\r\n"
    status, _ = await raw_request(srv.port, request)
    assert status is not None and 400 <= status < 500, status
    async with httpx.AsyncClient(base_url=srv.url, timeout=5) as c:
        assert (await c.get("/healthz")).status_code == 200


async def post_big_body(server: ServerProcess, video: str, auth: str | None) -> str:
    """POST a 200 KB body (over MAX_BODY) in one go, whatever the server answers, and
    read until the server closes; what it said. A reset raises here."""
    body = b"x" * 200_000
    head = (
        f"POST /v1/videos/{video}/comments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + (f"Authorization: {auth}\r\n" if auth else "") + "\r\n"
    ).encode()
    sock = await raw_connect(server.port)
    with sock:
        await send_all(sock, head + body)
        received = bytearray()
        with trio.fail_after(10):
            while data := await sock.recv(65536):
                received += data
    return received.decode("latin-1")


async def test_a_refused_body_is_answered_not_reset(server: ServerProcess, video: str) -> None:
    """A client that sends a too-large body anyway still reads the 413: the server closes
    after reading what is in flight (a close with unread bytes would be a TCP reset, which
    can destroy the answer before the client reads it)."""
    text = await post_big_body(server, video, "Bearer " + server.token("big"))
    assert text.startswith("HTTP/1.1 413"), text[:200]
    assert "connection: close" in text.lower()


async def test_an_unauthorised_big_body_is_answered_and_closed(server: ServerProcess, video: str) -> None:
    """401 for a body declared over the limit: the answer says it closes, and the client
    reads it whole even though it sends the body anyway."""
    text = await post_big_body(server, video, None)
    assert text.startswith("HTTP/1.1 401") and "connection: close" in text.lower(), text[:300]
