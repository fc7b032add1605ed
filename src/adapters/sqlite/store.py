"""The embedded store: one SQLite file, written by one writer task with group commit.

``append`` puts the comment on a bounded queue (10,000 entries by default; when it is
full, posters wait: that is the backpressure onto ingest) and returns when the
transaction holding it has committed, so a 201 always means "committed". The writer
takes whatever is queued (up to 500 comments) into one transaction, which keeps 1,000
posts/s cheap. ``append_many`` (a cluster's persist worker) queues a whole batch as one
entry: it is committed in one transaction, all of it or none of it.

Durability: by default (``durable=False``, SQLite's ``synchronous=NORMAL`` in WAL mode)
a commit is written to the WAL file but not fsynced: it survives the server process being
killed at any moment, but an operating-system crash or power loss can lose the last
commits. ``durable=True`` (``LIVECOMMENTS_SQLITE_SYNCHRONOUS=full``) fsyncs every commit,
which survives those too and costs a few milliseconds per post (one fsync per group). Reads use
a second connection; WAL mode lets them run while the writer commits. SQLite calls run
in worker threads so the Trio loop never blocks on the disk.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from domain.model import Author, Comment
from domain.ports import StoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS comments (
    video_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    author_id TEXT NOT NULL,
    author_name TEXT NOT NULL,
    verified INTEGER NOT NULL,
    text TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    client_id TEXT,
    shadow INTEGER NOT NULL DEFAULT 0,
    streamer INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (video_id, id)
) WITHOUT ROWID;
"""

_COLUMNS = "id, video_id, author_id, author_name, verified, text, created_at, client_id, shadow, streamer"
_VISIBLE = "removed = 0 AND (shadow = 0 OR author_id = ? OR ?)"  # domain.model.shown_to, in SQL


def _visible_params(viewer_id: str | None, every_author: bool) -> tuple[str, int]:
    return viewer_id or "", int(every_author)


def _row(r: tuple[Any, ...]) -> Comment:
    return Comment(
        id=r[0],
        video_id=r[1],
        author=Author(r[2], r[3], bool(r[4])),
        text=r[5],
        created_at=r[6],
        client_id=r[7],
        shadow=bool(r[8]),
        streamer=bool(r[9]),
    )


WAL_ATTEMPTS = 100  # x 0.1 s: processes of a local cluster open the file at the same time


def _connect(path: str, durable: bool = False) -> sqlite3.Connection:
    """(In a worker thread.) Switching to WAL can answer "database is locked" without
    waiting for the busy timeout while another process is switching too (the processes
    of a local cluster open one file at once): that is tried again, for up to 10 s."""
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    for attempt in range(WAL_ATTEMPTS):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or attempt == WAL_ATTEMPTS - 1:
                conn.close()
                raise
            time.sleep(0.1)
    conn.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
    return conn


class SqliteStore:
    def __init__(self, path: str, *, queue_size: int = 10_000, batch_max: int = 500, durable: bool = False) -> None:
        self.path = path
        self.durable = durable
        self.batch_max = batch_max
        # One entry per call: its comments go into one transaction (with other entries').
        self._send, self._recv = trio.open_memory_channel[
            tuple[Sequence[Comment], list[BaseException | None], trio.Event]
        ](queue_size)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_limiter = trio.CapacityLimiter(1)
        self._write_limiter = trio.CapacityLimiter(1)

    @classmethod
    @asynccontextmanager
    async def open(cls, path: str, **kw: Any) -> AsyncIterator[SqliteStore]:
        """Open the file, run the writer in a nursery owned here, flush on exit."""
        store = cls(path, **kw)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        store._writer = await trio.to_thread.run_sync(_connect, path, store.durable)
        await trio.to_thread.run_sync(store._writer.executescript, SCHEMA)
        store._reader = await trio.to_thread.run_sync(_connect, path)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store._write_loop)
                try:
                    yield store
                finally:
                    # Let the writer drain what was queued, then stop it.
                    await store._send.aclose()
        finally:
            for conn in (store._writer, store._reader):
                if conn is not None:
                    await trio.to_thread.run_sync(conn.close)

    async def _write_loop(self) -> None:
        async with self._recv:
            async for first in self._recv:
                batch = [first]
                size = len(first[0])
                while size < self.batch_max:
                    try:
                        item = self._recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(item)
                    size += len(item[0])
                error: BaseException | None = None
                try:
                    await trio.to_thread.run_sync(
                        self._write_batch, [c for cs, _, _ in batch for c in cs], abandon_on_cancel=False
                    )
                except sqlite3.Error as e:
                    error = StoreUnavailable(str(e))
                for _, slot, done in batch:
                    slot[0] = error
                    done.set()

    def _write_batch(self, comments: list[Comment]) -> None:
        conn = self._writer
        assert conn is not None
        conn.execute("BEGIN")
        try:
            conn.executemany(
                f"INSERT OR IGNORE INTO comments ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        c.id, c.video_id, c.author.id, c.author.name, int(c.author.verified),
                        c.text, c.created_at, c.client_id, int(c.shadow), int(c.streamer),
                    )
                    for c in comments
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def append(self, comment: Comment) -> None:
        await self.append_many((comment,))

    async def append_many(self, comments: Sequence[Comment]) -> None:
        if not comments:
            return
        slot: list[BaseException | None] = [None]
        done = trio.Event()
        try:
            await self._send.send((comments, slot, done))
        except trio.ClosedResourceError:
            raise StoreUnavailable("the store is shutting down") from None
        await done.wait()
        if slot[0] is not None:
            raise slot[0]

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn = self._reader
        if conn is None:
            raise StoreUnavailable("the store is closed")

        def run() -> list[tuple[Any, ...]]:
            return conn.execute(sql, params).fetchall()

        try:
            return await trio.to_thread.run_sync(run, limiter=self._read_limiter)
        except sqlite3.Error as e:
            raise StoreUnavailable(str(e)) from None

    async def remove(self, video_id: str, comment_id: int) -> bool:
        conn = self._writer
        if conn is None:
            raise StoreUnavailable("the store is closed")

        def run() -> bool:
            cur = conn.execute(
                "UPDATE comments SET removed = 1 WHERE video_id = ? AND id = ? AND removed = 0",
                (video_id, comment_id),
            )
            return cur.rowcount > 0

        return await trio.to_thread.run_sync(run, limiter=self._write_limiter)

    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM comments WHERE video_id = ? AND id = ? AND removed = 0",
            (video_id, comment_id),
        )
        return _row(rows[0]) if rows else None

    async def latest(
        self, video_id: str, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM comments WHERE video_id = ? AND {_VISIBLE} ORDER BY id DESC LIMIT ?",
            (video_id, *_visible_params(viewer_id, every_author), limit),
        )
        return [_row(r) for r in reversed(rows)]

    async def after(
        self, video_id: str, after_id: int, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM comments WHERE video_id = ? AND id > ? AND {_VISIBLE} ORDER BY id ASC LIMIT ?",
            (video_id, after_id, *_visible_params(viewer_id, every_author), limit),
        )
        return [_row(r) for r in rows]

    async def before(
        self,
        video_id: str,
        before_id: int | None,
        limit: int,
        viewer_id: str | None = None,
        *,
        every_author: bool = False,
    ) -> list[Comment]:
        cursor = (1 << 63) - 1 if before_id is None else before_id
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM comments WHERE video_id = ? AND id < ? AND {_VISIBLE} ORDER BY id DESC LIMIT ?",
            (video_id, cursor, *_visible_params(viewer_id, every_author), limit),
        )
        return [_row(r) for r in rows]

    async def aclose(self) -> None:
        await self._send.aclose()
