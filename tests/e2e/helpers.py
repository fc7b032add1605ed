"""Small clients the end-to-end tests share: posting, metrics, WebSocket, raw sockets."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.sse import WAIT_S, Event, Item, SSEParser
from tests.support.server import ServerProcess

_users = itertools.count()
POLL_S = 0.05


def fresh_user(prefix: str = "u") -> str:
    """A user id no other test uses (so per-user rate limits never interfere)."""
    return f"{prefix}{os.getpid()}x{next(_users)}"


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with the contract's JSON error body."""
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("detail"), str) and body["detail"], body
    if code is not None:
        assert body["error"] == code, body
    return body


async def post(
    client: httpx.AsyncClient,
    server: ServerProcess,
    video: str,
    text: str = "hello",
    *,
    user: str | None = None,
    client_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Post one comment (as a fresh user unless told) and return the 201 body."""
    body: dict[str, Any] = {"text": text}
    if client_id is not None:
        body["client_id"] = client_id
    r = await client.post(
        f"/v1/videos/{video}/comments", json=body, headers=headers or server.headers(user or fresh_user())
    )
    assert r.status_code == 201, f"{r.status_code} {r.text[:300]}"
    return r.json()  # type: ignore[no-any-return]


async def post_many(
    client: httpx.AsyncClient, server: ServerProcess, video: str, n: int, *, prefix: str = "c", concurrency: int = 8
) -> list[dict[str, Any]]:
    """Post ``n`` comments (texts ``prefix0``..), some at a time; returned oldest first."""
    out: list[dict[str, Any]] = []
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            out.append(await post(client, server, video, f"{prefix}{i}"))

    async with trio.open_nursery() as nursery:
        for _ in range(min(concurrency, n)):
            nursery.start_soon(worker)
    return sorted(out, key=lambda c: int(c["id"]))


def ids(comments: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in comments]


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll a condition in the server process (a metric, a viewer count) until it holds:
    no event crosses the process boundary, so this one wait polls."""
    try:
        with trio.fail_after(WAIT_S):
            while True:
                if await check():
                    return
                await trio.sleep(POLL_S)
    except trio.TooSlowError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def metric(client: httpx.AsyncClient, sample: str, **labels: str) -> float:
    """The sum of the samples called ``sample`` (with these labels) in ``/metrics``."""
    r = await client.get("/metrics")
    assert r.status_code == 200
    return sum(
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def viewers(client: httpx.AsyncClient, video: str) -> int:
    r = await client.get(f"/v1/videos/{video}/stats")
    assert r.status_code == 200, r.text
    return int(r.json()["viewers"])


# -- WebSocket ------------------------------------------------------------------------------


class WSCollector:
    """Reads a WebSocket's JSON text messages in the background; tests wait on them."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.ended = False
        self._changed = trio.Event()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def comment_ids(self) -> list[str]:
        return [m["id"] for m in self.of_type("comment")]

    async def send(self, obj: Any) -> None:
        await self.ws.send_message(json.dumps(obj))

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            with trio.fail_after(WAIT_S):
                while not predicate():
                    if self.ended:
                        raise AssertionError(f"the WebSocket closed before {what}; got {self.messages[-10:]}")
                    await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(f"timed out waiting for {what}; got {self.messages[-10:]}") from None

    async def wait_type(self, kind: str, count: int = 1) -> dict[str, Any]:
        await self.wait_for(lambda: len(self.of_type(kind)) >= count, f"{count} {kind!r} message(s)")
        return self.of_type(kind)[count - 1]

    async def wait_comments(self, n: int) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.of_type("comment")) >= n, f"{n} comments")
        return self.of_type("comment")

    async def _pump(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                assert isinstance(message, str), "the server sends text frames only"
                self.messages.append(json.loads(message))
                self._notify()
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            self.ended = True
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def ws_url(server: ServerProcess, path: str) -> str:
    return server.url.replace("http://", "ws://", 1) + path


@asynccontextmanager
async def open_ws(server: ServerProcess, path: str) -> AsyncIterator[WSCollector]:
    """Open a WebSocket on ``path`` and read it in the background until the block ends."""
    async with trio_websocket.open_websocket_url(
        ws_url(server, path), connect_timeout=WAIT_S, disconnect_timeout=2, message_queue_size=10_000
    ) as ws:
        collector = WSCollector(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collector._pump)
            try:
                yield collector
            finally:
                nursery.cancel_scope.cancel()


# -- raw sockets ------------------------------------------------------------------------------


async def raw_connect(port: int, *, rcvbuf: int | None = None) -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect, so that the window the client advertises is small from the start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return sock


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = await sock.send(view)
        view = view[n:]


async def raw_request(port: int, data: bytes) -> tuple[int | None, bytes]:
    """Send ``data`` on a new connection; read one response (status, head and body), or
    nothing if the server closes without answering."""
    sock = await raw_connect(port)
    with sock:
        try:
            await send_all(sock, data)
        except OSError:
            pass  # the server may answer and close before it read everything
        buf = bytearray()
        with trio.fail_after(WAIT_S):
            while True:
                end = buf.find(b"\r\n\r\n")
                if end != -1:
                    head = bytes(buf[:end]).decode("latin-1")
                    m = re.match(r"HTTP/1\.[01] (\d{3})", head)
                    assert m, head
                    length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
                    if length and len(buf) >= end + 4 + int(length.group(1)):
                        return int(m.group(1)), bytes(buf)
                try:
                    chunk = await sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    if not buf:
                        return None, b""
                    m = re.match(rb"HTTP/1\.[01] (\d{3})", bytes(buf))
                    assert m, bytes(buf[:200])
                    return int(m.group(1)), bytes(buf)
                buf += chunk


class RawSSE:
    """An event stream on a plain socket: the test decides when (and whether) to read."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.CLIENT)
        self.parser = SSEParser()
        self.response: h11.Response | None = None
        self.items: list[Item] = []
        self.ended = False
        self.reset = False

    @classmethod
    async def open(cls, port: int, path: str, *, rcvbuf: int | None = None) -> RawSSE:
        sock = await raw_connect(port, rcvbuf=rcvbuf)
        self = cls(sock)
        request = h11.Request(
            method="GET", target=path, headers=[("Host", f"127.0.0.1:{port}"), ("Accept", "text/event-stream")]
        )
        await send_all(sock, self.http.send(request) + (self.http.send(h11.EndOfMessage()) or b""))
        return self

    def events(self, name: str) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event) and i.event == name]

    def comment_ids(self) -> list[str]:
        return [e.json()["id"] for e in self.events("comment")]

    async def read_some(self) -> bool:
        """Read what the socket has (waiting for some); False once the connection ended."""
        try:
            data = await self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            self.reset = self.ended = True
            return False
        self.http.receive_data(data)
        while True:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError:
                self.ended = True  # closed in the middle of the body: a stream cut off
                return False
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Response):
                self.response = event
            elif isinstance(event, h11.Data):
                self.items.extend(self.parser.feed(bytes(event.data)))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.ended = True
                return False
        if not data:
            self.ended = True
            return False
        return True

    async def read_until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            with trio.fail_after(WAIT_S):
                while not predicate():
                    if not await self.read_some():
                        raise AssertionError(f"the stream ended before {what}")
        except trio.TooSlowError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def read_to_end(self) -> None:
        try:
            with trio.fail_after(WAIT_S):
                while await self.read_some():
                    pass
        except trio.TooSlowError:
            raise AssertionError("the server did not close the stream") from None

    def close(self) -> None:
        self.sock.close()
