"""A Server-Sent Events client for the tests: a sans-IO parser and an httpx stream on top.

``SSEParser`` follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; a line
starting with ``:`` is a comment; ``event``, ``data``, ``id`` (ignored when it holds NUL)
and ``retry`` (digits only) fields; a blank line dispatches the event unless its data
buffer is empty; the last event id persists across events. It also records what a
browser would not expose but tests want to see: comment lines and whether an event block
carried its own ``id:`` field.

``open_sse`` opens the stream with httpx, reads it in a background task and lets the
test wait for what it expects (``wait_for``/``wait_comments``/``wait_event``) instead of
sleeping.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

WAIT_S = 10.0


@attrs.frozen
class Event:
    """One dispatched event: ``id`` is the stream's last event id at dispatch time (as
    ``MessageEvent.lastEventId``); ``own_id`` says whether this block had an ``id:`` line."""

    event: str
    data: str
    id: str
    own_id: bool

    def json(self) -> Any:
        return json.loads(self.data)


@attrs.frozen
class CommentLine:
    """A ``:``-line (heartbeats are comment lines)."""

    text: str


Item = Event | CommentLine


class SSEParser:
    """Bytes in, events and comment lines out."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last complete line
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._own_id = False
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[Item]:
        text = self._pending + self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        out: list[Item] = []
        pos = 0
        n = len(text)
        while True:
            cr = text.find("\r", pos)
            lf = text.find("\n", pos)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr == n - 1:
                    break  # a CR at the end may be the first half of CRLF: wait for more
                end, nxt = cr, cr + (2 if text[cr + 1] == "\n" else 1)
            else:
                end, nxt = lf, lf + 1
            self._line(text[pos:end], out)
            pos = nxt
        self._pending = text[pos:]
        return out

    def _line(self, line: str, out: list[Item]) -> None:
        if line == "":
            self._dispatch(out)
            return
        if line.startswith(":"):
            out.append(CommentLine(line[1:].removeprefix(" ")))
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
                self._own_id = True
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        # any other field is ignored

    def _dispatch(self, out: list[Item]) -> None:
        data, event, own_id = self._data, self._event, self._own_id
        self._data, self._event, self._own_id = [], "", False
        if not data:
            return
        out.append(Event(event or "message", "\n".join(data), self.last_event_id, own_id))


class SSEStream:
    """An open event stream, read by a background task; tests wait on what it received."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SSEParser()
        self.items: list[Item] = []
        self.ended = False
        self.error: BaseException | None = None
        self._changed = trio.Event()

    # -- what arrived ---------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        return [i for i in self.items if isinstance(i, Event)]

    @property
    def comment_lines(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, CommentLine)]

    @property
    def retry(self) -> int | None:
        return self.parser.retry

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.event == name]

    def comments(self) -> list[dict[str, Any]]:
        return [e.json() for e in self.named("comment")]

    def comment_ids(self) -> list[str]:
        return [c["id"] for c in self.comments()]

    # -- waiting --------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], what: str = "a condition") -> None:
        """Return once ``predicate()`` holds; fail if the stream ends first or after WAIT_S."""
        try:
            with trio.fail_after(WAIT_S):
                while not predicate():
                    if self.ended:
                        raise AssertionError(f"the stream ended ({self.error!r}) before {what}; got {self.items[-10:]}")
                    await self._changed.wait()
        except trio.TooSlowError:
            raise AssertionError(f"timed out waiting for {what}; last items: {self.items[-10:]}") from None

    async def wait_comments(self, n: int) -> list[dict[str, Any]]:
        """Wait until at least ``n`` comment events arrived; returns all of them."""
        await self.wait_for(lambda: len(self.named("comment")) >= n, f"{n} comments")
        return self.comments()

    async def wait_comment_id(self, comment_id: str) -> None:
        await self.wait_for(lambda: comment_id in self.comment_ids(), f"comment {comment_id}")

    async def wait_event(self, name: str, count: int = 1) -> Event:
        """Wait for the ``count``-th event called ``name``; returns it."""
        await self.wait_for(lambda: len(self.named(name)) >= count, f"{count} {name!r} event(s)")
        return self.named(name)[count - 1]

    async def wait_end(self) -> None:
        await self.wait_for(lambda: self.ended, "the end of the stream")

    # -- the reader -----------------------------------------------------------------------

    async def _pump(self) -> None:
        try:
            async for data in self.response.aiter_bytes():
                self.items.extend(self.parser.feed(data))
                self._notify()
        except (httpx.HTTPError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.error = e
        finally:
            self.ended = True
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def open_sse(
    base_url: str,
    path: str,
    *,
    params: Mapping[str, str | int] | None = None,
    headers: Mapping[str, str] | None = None,
    client: httpx.AsyncClient | None = None,
    expect_status: int = 200,
) -> AsyncIterator[SSEStream]:
    """Open ``GET path`` as an event stream (on a new connection unless ``client`` is
    given) and read it in the background until the block ends."""
    own = client is None
    if client is None:
        client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(WAIT_S, read=None))
    try:
        request = client.build_request(
            "GET", path, params=params, headers={"Accept": "text/event-stream", **(headers or {})}
        )
        with trio.fail_after(WAIT_S):
            response = await client.send(request, stream=True)
        try:
            if response.status_code != expect_status:
                body = await response.aread()
                raise AssertionError(f"GET {path}: {response.status_code} {body[:500]!r}")
            stream = SSEStream(response)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream._pump)
                try:
                    yield stream
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await response.aclose()
    finally:
        if own:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await client.aclose()
