"""One lean connection for the script every post runs (``lua/post.lua``).

coredis serves every command through a connection pool, a writer task and a reader task
per connection, and several AnyIO timeouts: about 0.2 ms of CPU per command on this
machine, against 0.03 ms for the same round trip on a plain socket (a PING, measured in
docs/performance.md). On an ingest node that overhead was a third of the CPU of a post.
``ScriptPipe`` runs Lua scripts (``EVALSHA``, ``EVAL`` when Redis does not know the
script yet) on one socket of its own:

- a caller appends its command to the connection's output and, unless another caller is
  already writing, writes everything waiting (so the commands of concurrent posts go
  out in one ``send``); one reader task per connection parses the replies (RESP2) and
  hands them out in order;
- a reply that is an error becomes ``ReplyError`` (a coredis ``RedisError``, so callers
  treat it like coredis' own); ``NOSCRIPT`` is answered by sending the script itself
  once;
- a call that gets no answer within ``timeout_s``, a connection that breaks, or a caller
  cancelled half way through writing, closes the connection: every call waiting on it
  fails with ``ConnectionError`` (an outage, 503 for a post), and the next call opens a
  new one (with ``AUTH`` and ``SELECT`` from the URL);
- at most ``max_pending`` calls wait on the connection; beyond that a call fails at once
  with ``ConnectionError`` rather than queueing without bound.

Only for ``redis://`` and ``unix://`` URLs of one server (``open_script_pipe`` gives None
for TLS, Redis Cluster and Sentinel URLs, which keep going through coredis).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import coredis.exceptions
import trio

READ_SIZE = 65536


class ReplyError(coredis.exceptions.RedisError):
    """Redis answered a command with an error."""


# -- RESP2 ------------------------------------------------------------------------------


def encode(*parts: bytes | str | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse_at(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), pos
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos : pos + n]), pos + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse_at(buf, pos)
            items.append(item)
        return items, pos
    raise ValueError(f"not a RESP2 reply: {bytes(buf[pos - len(line) - 3 : pos])!r}")


def parse(buf: bytes | bytearray) -> tuple[list[Any], int]:
    """The whole replies at the start of ``buf`` and how many bytes they took (an error
    reply is a ``ReplyError`` value). Raises ValueError for bytes that are not RESP2."""
    out: list[Any] = []
    pos = 0
    while pos < len(buf):
        try:
            value, pos_after = _parse_at(buf, pos)
        except _Incomplete:
            break
        out.append(value)
        pos = pos_after
    return out, pos


# -- scripts and the connection ----------------------------------------------------------------


@attrs.frozen
class LuaScript:
    source: str
    sha: str = attrs.field()

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


@attrs.define(eq=False)
class _Slot:
    done: trio.Event = attrs.field(factory=trio.Event)
    value: Any = None


@attrs.define(eq=False)
class _Conn:
    stream: trio.abc.Stream
    pending: deque[_Slot] = attrs.field(factory=deque)
    out: bytearray = attrs.field(factory=bytearray)
    sending: bool = False
    closed: bool = False

    def fail(self, error: BaseException) -> None:
        """Close: every call still waiting gets ``error``."""
        self.closed = True
        while self.pending:
            slot = self.pending.popleft()
            slot.value = error
            slot.done.set()


@attrs.frozen
class Target:
    """Where a plain ``redis://`` or ``unix://`` URL points."""

    host: str = ""
    port: int = 6379
    path: str = ""  # a unix socket
    username: str | None = None
    password: str | None = None
    db: int = 0


def target_of(url: str) -> Target | None:
    """The server of a one-server URL; None for URLs this pipe does not speak (TLS,
    Redis Cluster, Sentinel)."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        return Target(path=parts.path, username=username, password=password)
    if parts.scheme != "redis" or not parts.hostname:
        return None
    db = parts.path.strip("/")
    return Target(
        host=parts.hostname,
        port=parts.port or 6379,
        username=username,
        password=password,
        db=int(db) if db.isdigit() else 0,
    )


class ScriptPipe:
    def __init__(self, target: Target, nursery: trio.Nursery, *, timeout_s: float = 2.0, max_pending: int = 10_000) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._nursery = nursery  # owns the reader tasks
        self._conn: _Conn | None = None
        self._connecting = trio.Lock()
        self.connections = 0  # opened so far

    async def call(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The script's answer (``EVALSHA``; ``EVAL`` once if Redis had not seen it)."""
        reply = await self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            reply = await self.command("EVAL", script.source, len(keys), *keys, *args)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def command(self, *parts: bytes | str | int | float) -> Any:
        """One command's reply (a ``ReplyError`` value for an error reply). Raises
        ``ConnectionError`` when the connection broke or the answer took too long."""
        conn: _Conn | None = None
        try:
            with trio.fail_after(self.timeout_s):
                conn = await self._connected()
                return await self._send(conn, encode(*parts))
        except trio.TooSlowError:
            if conn is not None:
                self._drop(conn, ConnectionError(f"Redis gave no answer within {self.timeout_s:g} s"))
            raise ConnectionError(f"Redis gave no answer within {self.timeout_s:g} s") from None

    async def _send(self, conn: _Conn, data: bytes) -> Any:
        if conn.closed:  # broke since the caller got it
            raise ConnectionError("Redis connection lost")
        if len(conn.pending) >= self.max_pending:
            raise ConnectionError(f"{self.max_pending} Redis calls in flight already")
        slot = _Slot()
        conn.pending.append(slot)
        conn.out += data
        if not conn.sending:
            conn.sending = True
            try:
                while conn.out and not conn.closed:
                    chunk = bytes(conn.out)
                    conn.out.clear()
                    await conn.stream.send_all(chunk)
            except BaseException as e:
                # Broken, or cancelled half way through a write: nothing after it can be
                # trusted on this connection.
                self._drop(conn, ConnectionError(f"Redis connection lost: {e!r}"))
                if not isinstance(e, (OSError, trio.BrokenResourceError, trio.ClosedResourceError)):
                    raise
            finally:
                conn.sending = False
        await slot.done.wait()
        if isinstance(slot.value, ConnectionError):
            raise slot.value
        return slot.value

    async def _connected(self) -> _Conn:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connecting:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            t = self.target
            try:
                stream: trio.abc.Stream
                if t.path:
                    stream = await trio.open_unix_socket(t.path)
                else:
                    stream = await trio.open_tcp_stream(t.host, t.port)
            except OSError as e:
                raise ConnectionError(f"Redis unreachable: {e}") from None
            conn = _Conn(stream)
            self._nursery.start_soon(self._read, conn)
            self.connections += 1
            hello: list[tuple[Any, ...]] = []
            if t.password is not None:
                hello.append(("AUTH", t.username, t.password) if t.username else ("AUTH", t.password))
            if t.db:
                hello.append(("SELECT", t.db))
            for parts in hello:
                reply = await self._send(conn, encode(*parts))
                if isinstance(reply, ReplyError):
                    self._drop(conn, ConnectionError(f"Redis refused {parts[0]}: {reply}"))
                    raise ConnectionError(f"Redis refused {parts[0]}: {reply}")
            self._conn = conn
            return conn

    def _drop(self, conn: _Conn, error: BaseException) -> None:
        if not conn.closed:
            conn.fail(error)
            self._nursery.start_soon(conn.stream.aclose)
        if self._conn is conn:
            self._conn = None

    async def _read(self, conn: _Conn) -> None:
        buf = bytearray()
        error: BaseException = ConnectionError("Redis closed the connection")
        try:
            while not conn.closed:
                data = await conn.stream.receive_some(READ_SIZE)
                if not data:
                    break
                buf += data
                replies, used = parse(buf)
                del buf[:used]
                for reply in replies:
                    if not conn.pending:
                        raise ValueError("a reply nobody asked for")
                    slot = conn.pending.popleft()
                    slot.value = reply
                    slot.done.set()
        except (OSError, ValueError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            error = ConnectionError(f"Redis connection lost: {e!r}")
        self._drop(conn, error)

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.fail(ConnectionError("the script pipe is closed"))
            await conn.stream.aclose()


@asynccontextmanager
async def open_script_pipe(url: str, *, timeout_s: float = 2.0) -> AsyncIterator[ScriptPipe | None]:
    """A ``ScriptPipe`` for a one-server URL (its reader tasks run in a nursery owned
    here), or None for a URL that coredis alone speaks."""
    target = target_of(url)
    if target is None:
        yield None
        return
    async with trio.open_nursery() as nursery:
        pipe = ScriptPipe(target, nursery, timeout_s=timeout_s)
        try:
            yield pipe
        finally:
            await pipe.aclose()
            nursery.cancel_scope.cancel()
