"""``SqliteModerationStore``: the ``domain.moderation.ModerationStore`` port in its own
SQLite file in the data directory (the all-in-one server), each state change and its log
entry in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from domain.moderation import Ban, LogEntry, VideoSettings
from domain.ports import StoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    scope TEXT NOT NULL,
    user_id TEXT NOT NULL,
    mode TEXT NOT NULL,
    reason TEXT,
    actor TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS video_settings (
    video_id TEXT PRIMARY KEY,
    slow_mode_s INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS moderation_log (
    scope TEXT NOT NULL,
    id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_user TEXT,
    comment_id INTEGER,
    reason TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (scope, id)
) WITHOUT ROWID;
"""

_LOG_COLUMNS = "id, scope, created_at, actor, action, target_user, comment_id, reason, details"
_BAN_COLUMNS = "scope, user_id, mode, reason, actor, created_at"


def _log_params(e: LogEntry) -> tuple[Any, ...]:
    return (
        e.id, e.scope, e.created_at, e.actor, e.action, e.target_user, e.comment_id, e.reason,
        json.dumps(e.details, ensure_ascii=False, separators=(",", ":")),
    )


def _log_row(r: tuple[Any, ...]) -> LogEntry:
    try:
        details = json.loads(r[8])
    except ValueError:
        details = {}
    return LogEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], details if isinstance(details, dict) else {})


def _ban_row(r: tuple[Any, ...]) -> Ban:
    return Ban(r[0], r[1], r[2], r[3], r[4], r[5])


_INSERT_LOG = f"INSERT OR REPLACE INTO moderation_log ({_LOG_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"


class SqliteModerationStore:
    """One SQLite file, one connection used from worker threads one call at a time.

    Moderation writes are rare (people ban and delete, automod removes spam), so a single
    connection with ``synchronous=FULL`` is plenty; each call is a transaction."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    @asynccontextmanager
    async def open(cls, path: str) -> AsyncIterator[SqliteModerationStore]:
        store = cls(path)
        await trio.to_thread.run_sync(store._open)
        try:
            yield store
        finally:
            await store.aclose()

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the moderation store is closed")

        def call() -> Any:
            return fn(conn, *args)

        try:
            return await trio.to_thread.run_sync(call, limiter=self._limiter)
        except sqlite3.Error as e:
            raise StoreUnavailable(str(e)) from None

    @staticmethod
    def _tx(conn: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            changed = 0
            for sql, params in statements:
                changed += conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return changed

    async def put_ban(self, ban: Ban, entry: LogEntry) -> None:
        await self._run(
            self._tx,
            [
                (
                    f"INSERT OR REPLACE INTO bans ({_BAN_COLUMNS}) VALUES (?,?,?,?,?,?)",
                    (ban.scope, ban.user_id, ban.mode, ban.reason, ban.actor, ban.created_at),
                ),
                (_INSERT_LOG, _log_params(entry)),
            ],
        )

    async def delete_ban(self, scope: str, user_id: str, entry: LogEntry) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute("DELETE FROM bans WHERE scope = ? AND user_id = ?", (scope, user_id))
                existed = cur.rowcount > 0
                if existed:
                    conn.execute(_INSERT_LOG, _log_params(entry))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return existed

        return bool(await self._run(run))

    async def bans(self, scope: str | None = None) -> list[Ban]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if scope is None:
                return conn.execute(f"SELECT {_BAN_COLUMNS} FROM bans ORDER BY created_at").fetchall()
            return conn.execute(
                f"SELECT {_BAN_COLUMNS} FROM bans WHERE scope = ? ORDER BY created_at", (scope,)
            ).fetchall()

        return [_ban_row(r) for r in await self._run(run)]

    async def put_settings(self, settings: VideoSettings, entry: LogEntry) -> None:
        await self._run(
            self._tx,
            [
                (
                    "INSERT OR REPLACE INTO video_settings (video_id, slow_mode_s) VALUES (?, ?)",
                    (settings.video_id, settings.slow_mode_s),
                ),
                (_INSERT_LOG, _log_params(entry)),
            ],
        )

    async def all_settings(self) -> list[VideoSettings]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute("SELECT video_id, slow_mode_s FROM video_settings WHERE slow_mode_s > 0").fetchall()

        return [VideoSettings(r[0], r[1]) for r in await self._run(run)]

    async def append_log(self, entry: LogEntry) -> None:
        await self._run(self._tx, [(_INSERT_LOG, _log_params(entry))])

    async def log_page(self, scope: str, before: int | None, limit: int) -> list[LogEntry]:
        cursor = (1 << 63) - 1 if before is None else before

        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT {_LOG_COLUMNS} FROM moderation_log WHERE scope = ? AND id < ? ORDER BY id DESC LIMIT ?",
                (scope, cursor, limit),
            ).fetchall()

        return [_log_row(r) for r in await self._run(run)]

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._limiter:
                await trio.to_thread.run_sync(conn.close)
