"""Clients for the moderation tests: SSE and WebSocket watchers that record events as
dicts (``{"type": "comment", ...}``, ``{"type": "remove", "id": ...}``) and let a test
wait for what it expects, plus small HTTP helpers. Self-contained on purpose: these
tests depend on nothing but the server fixtures."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
import trio_websocket

from tests.support.server import ServerProcess

WAIT_S = 10.0
_users = itertools.count()


def fresh_user(prefix: str = "m") -> str:
    """A user id no other test uses (per-user limits and automod windows stay apart)."""
    return f"{prefix}{os.getpid()}y{next(_users)}"


class Watcher:
    """Events received on one stream connection, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ended = False
        self._changed = trio.Event()

    def comments(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == "comment"]

    def comment_ids(self) -> list[str]:
        return [e["id"] for e in self.comments()]

    def removed_ids(self) -> list[str]:
        return [e["id"] for e in self.events if e["type"] == "remove"]

    def texts(self) -> list[str]:
        return [e["text"] for e in self.comments()]

    def add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def end(self) -> None:
        self.ended = True
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], what: str, within: float = WAIT_S) -> None:
        try:
            with trio.fail_after(within):
                while not predicate():
                    if self.ended:
                        raise AssertionError(f"the stream ended before {what}; got {self.events[-10:]}")
                    await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(f"timed out waiting for {what}; got {self.events[-10:]}") from None

    async def wait_comment(self, comment_id: str) -> None:
        await self.wait_for(lambda: comment_id in self.comment_ids(), f"comment {comment_id}")

    async def wait_removed(self, comment_id: str) -> None:
        await self.wait_for(lambda: comment_id in self.removed_ids(), f"the removal of {comment_id}")


def _sse_events(buffer: str) -> tuple[list[dict[str, Any]], str]:
    """Complete SSE event blocks in ``buffer`` as dicts, and what is left over."""
    out: list[dict[str, Any]] = []
    buffer = buffer.replace("\r\n", "\n")
    while "\n\n" in buffer:
        block, buffer = buffer.split("\n\n", 1)
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            payload = json.loads("\n".join(data))
            out.append({**payload, "type": name} if isinstance(payload, dict) else {"type": name})
    return out, buffer


@asynccontextmanager
async def sse(server: ServerProcess, video: str, *, token: str | None = None, backlog: int = 50) -> AsyncIterator[Watcher]:
    """An SSE connection (the lean path), read in the background until the block ends."""
    params: dict[str, Any] = {"backlog": backlog}
    if token:
        params["token"] = token
    watcher = Watcher()
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(WAIT_S, read=None)) as client:
        request = client.build_request("GET", f"/v1/videos/{video}/events", params=params, headers={"Accept": "text/event-stream"})
        response = await client.send(request, stream=True)
        assert response.status_code == 200, response.status_code

        async def pump() -> None:
            buffer = ""
            try:
                async for chunk in response.aiter_text():
                    events, buffer = _sse_events(buffer + chunk)
                    for e in events:
                        watcher.add(e)
            except (httpx.HTTPError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                watcher.end()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                try:
                    yield watcher
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await response.aclose()


@asynccontextmanager
async def ws(server: ServerProcess, video: str, *, token: str | None = None, backlog: int = 50) -> AsyncIterator[Watcher]:
    """A WebSocket connection, read in the background until the block ends."""
    url = server.url.replace("http://", "ws://", 1) + f"/v1/videos/{video}/ws?backlog={backlog}"
    if token:
        url += f"&token={token}"
    watcher = Watcher()
    async with trio_websocket.open_websocket_url(url) as conn:

        async def pump() -> None:
            try:
                while True:
                    message = await conn.get_message()
                    watcher.add(json.loads(message))
            except trio_websocket.ConnectionClosed:
                pass
            finally:
                watcher.end()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump)
            try:
                yield watcher
            finally:
                nursery.cancel_scope.cancel()


async def post(client: httpx.AsyncClient, server: ServerProcess, video: str, user: str, text: str, **token: Any) -> dict[str, Any]:
    r = await client.post(f"/v1/videos/{video}/comments", json={"text": text}, headers=server.headers(user, **token))
    assert r.status_code == 201, f"{r.status_code} {r.text[:300]}"
    return dict(r.json())


async def history(client: httpx.AsyncClient, video: str, token: str | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": 200}
    if token:
        params["token"] = token
    r = await client.get(f"/v1/videos/{video}/comments", params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["comments"])


async def long_poll(client: httpx.AsyncClient, video: str, after: str = "0", token: str | None = None, wait: float = 0) -> dict[str, Any]:
    params: dict[str, Any] = {"after": after, "wait": wait}
    if token:
        params["token"] = token
    r = await client.get(f"/v1/videos/{video}/comments", params=params)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def snapshot(client: httpx.AsyncClient, video: str) -> dict[str, Any]:
    r = await client.get(f"/v1/videos/{video}/snapshot.json")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def metric(client: httpx.AsyncClient, name: str) -> float:
    """The sum of a metric's samples over all labels."""
    r = await client.get("/metrics")
    total = 0.0
    for line in r.text.splitlines():
        if line.startswith("#") or not line:
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{"):
            total += float(value)
    return total


async def moderation_log(client: httpx.AsyncClient, server: ServerProcess, video: str, **params: Any) -> list[dict[str, Any]]:
    headers = server.headers(fresh_user("mod"), roles=["moderator"])
    r = await client.get(f"/v1/videos/{video}/moderation-log", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return list(r.json()["entries"])


def ids(comments: list[dict[str, Any]]) -> list[str]:
    return [c["id"] for c in comments]
