"""Moderation in cluster mode, on Redis: the ban/settings/log store every ingest process
shares, and the automod queue that ``livecomments moderate`` workers consume.

``RedisModerationStore`` implements ``domain.moderation.ModerationStore``.
All of its keys (``Keys.bans``, ``video_settings``, ``moderation_log``,
``moderation_version``) carry one hash tag (``{mod}``), so each write -- the state
change, its log entry and a bump of the version counter -- is one Lua script on one slot:

- bans: hash, ``scope \\n user_id`` -> the ban as JSON;
- settings: hash, video id -> slow_mode_s (absent when 0);
- the log of a scope: sorted set, all scores 0, members ``<19-digit entry id>:<json>``,
  so lexicographic order is id order; at most ``log_max`` entries per scope (the oldest
  are trimmed);
- version: incremented by every ban, unban and settings change.

Ingest keeps bans and slow modes in memory (``ingest.moderation.bans.ModerationService``);
``watch`` polls the version (one GET a second) and reloads that cache when another process
changed something, so a ban applies on every ingest process within about a second (at
once on the one that took it). How durable it is depends on the Redis' persistence
(AOF with ``appendfsync always`` for bans that survive any crash).

The automod queue of a cluster is a capped stream per shard (``Keys.moderation_stream``,
MAXLEN ~ ``MODERATION_STREAM_MAX``: entries trimmed before a worker read them skip
moderation). Ingest puts each accepted comment that is not shadowed there in the same
script that appends it (``lua/append.lua``, ``HotStore(moderation_max=...)``): no
extra round trip, and nothing accepted misses the queue while Redis has it.
``RedisModerationSource`` reads those streams through the consumer group ``moderate`` in
batches and hands each batch to ``Automod.handle_batch`` (check all, remove the flagged
ones); a batch is acknowledged (and deleted) after it was handled, a worker reads its
own pending entries first after a restart, and entries another worker left pending for
``claim_idle_s`` are claimed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from coredis import PureToken

from adapters.redis import scripts
from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys
from adapters.redis.streams import GroupConsumer, text
from domain.model import Comment
from domain.moderation import Ban, LogEntry, VideoSettings
from domain.ports import StoreUnavailable
from ingest.moderation.automod import Automod

log = logging.getLogger("ingest.moderation.bans.redis")

PAD = 19
GROUP = "moderate"
# The moderation streams' length, about (XADD MAXLEN ~): entries trimmed before a worker
# read them skip moderation (a backlog of minutes at a popular video's rate).
MODERATION_STREAM_MAX = 100_000


_s = text


def _ban_json(b: Ban) -> str:
    return json.dumps([b.scope, b.user_id, b.mode, b.reason, b.actor, b.created_at], ensure_ascii=False)


def _ban_from(raw: Any) -> Ban | None:
    try:
        scope, user_id, mode, reason, actor, created_at = json.loads(_s(raw))
        return Ban(scope, user_id, mode, reason, actor, int(created_at))
    except (ValueError, TypeError):
        return None


def _log_member(e: LogEntry) -> str:
    body = [e.scope, e.created_at, e.actor, e.action, e.target_user, e.comment_id, e.reason, e.details]
    return f"{e.id:0{PAD}d}:" + json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _log_from(raw: Any) -> LogEntry | None:
    text = _s(raw)
    head, _, body = text.partition(":")
    try:
        scope, created_at, actor, action, target, comment_id, reason, details = json.loads(body)
        return LogEntry(int(head), scope, int(created_at), actor, action, target, comment_id, reason, details or {})
    except (ValueError, TypeError):
        return None


class RedisModerationStore:
    def __init__(self, redis: Redis, keys: Keys, *, log_max: int = 100_000) -> None:
        self.redis = redis
        self.keys = keys
        self.log_max = log_max
        self._write = scripts.register(redis, "moderation_write")
        self._seen_version: int | None = None

    async def _run(self, op: str, state_key: str, field: str, value: str, entry: LogEntry) -> bool:
        k = self.keys
        try:
            res = await self._write(
                keys=[state_key, k.moderation_log(entry.scope), k.moderation_version()],
                args=[op, field, value, _log_member(entry), self.log_max],
            )
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        return int(res) == 1

    async def put_ban(self, ban: Ban, entry: LogEntry) -> None:
        await self._run("set", self.keys.bans(), f"{ban.scope}\n{ban.user_id}", _ban_json(ban), entry)

    async def delete_ban(self, scope: str, user_id: str, entry: LogEntry) -> bool:
        return await self._run("del", self.keys.bans(), f"{scope}\n{user_id}", "", entry)

    async def bans(self, scope: str | None = None) -> list[Ban]:
        try:
            raw = await self.redis.hgetall(self.keys.bans())
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        bans = [b for b in (_ban_from(v) for v in raw.values()) if b is not None]
        return sorted((b for b in bans if scope is None or b.scope == scope), key=lambda b: (b.created_at, b.user_id))

    async def put_settings(self, settings: VideoSettings, entry: LogEntry) -> None:
        if settings.slow_mode_s > 0:
            await self._run("set", self.keys.video_settings(), settings.video_id, str(settings.slow_mode_s), entry)
        else:
            # Turning slow mode off is logged even when it was already off.
            if not await self._run("del", self.keys.video_settings(), settings.video_id, "", entry):
                await self.append_log(entry)

    async def all_settings(self) -> list[VideoSettings]:
        try:
            raw = await self.redis.hgetall(self.keys.video_settings())
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        out = []
        for k, v in raw.items():
            try:
                out.append(VideoSettings(_s(k), int(_s(v))))
            except ValueError:
                continue
        return [s for s in out if s.slow_mode_s > 0]

    async def append_log(self, entry: LogEntry) -> None:
        try:
            await self.redis.zadd(self.keys.moderation_log(entry.scope), {_log_member(entry): 0})
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None

    async def log_page(self, scope: str, before: int | None, limit: int) -> list[LogEntry]:
        top = "+" if before is None else f"({before:0{PAD}d}"
        try:
            raw = await self.redis.zrange(
                self.keys.moderation_log(scope), top, "-", sortby=PureToken.BYLEX, rev=True, offset=0, count=limit
            )
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        return [e for e in (_log_from(m) for m in raw) if e is not None]

    async def version(self) -> int:
        try:
            raw = await self.redis.get(self.keys.moderation_version())
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        return int(_s(raw)) if raw is not None else 0

    async def watch(self, on_change: Callable[[], Awaitable[None]], interval: float = 1.0) -> None:
        """Call ``on_change`` whenever any process changed bans or settings (polled)."""
        while True:
            try:
                current = await self.version()
                if self._seen_version is not None and current != self._seen_version:
                    await on_change()
                self._seen_version = current
            except Exception as e:  # keep watching through outages
                log.warning("moderation watch: %s", e)
            await trio.sleep(interval)

    async def aclose(self) -> None:
        pass


class RedisModerationSource(GroupConsumer):
    """Feeds ``Automod`` from the moderation streams (``livecomments moderate``)."""

    name = "moderate"

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        automod: Automod,
        *,
        consumer: str,
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_s: float = 30.0,
        linger_s: float = 0.0,
    ) -> None:
        super().__init__(
            redis, GROUP, consumer, batch=batch, block_ms=block_ms, claim_idle_s=claim_idle_s, linger_s=linger_s
        )
        self.keys = keys
        self.automod = automod
        self.handled = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for stream in self.keys.moderation_streams():
                nursery.start_soon(self.drain_forever, stream)
            task_status.started()

    async def handle(self, stream: str, entries: list[Any]) -> None:
        """Check the batch, remove the flagged ones, then acknowledge all of it."""
        comments = []
        for e in entries:
            fields = {_s(k): _s(v) for k, v in dict(e.field_values).items()}
            try:
                comments.append(Comment.from_record(json.loads(fields["r"])))
            except (KeyError, ValueError, TypeError):
                log.warning("moderate: unreadable entry %s on %s", _s(e.identifier), stream)
        await self.automod.handle_batch(comments)
        self.handled += len(comments)
        await self.ack(stream, [_s(e.identifier) for e in entries])
