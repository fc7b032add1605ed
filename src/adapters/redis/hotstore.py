"""The Redis hot store, and the cluster's ``Store``: recent reads from Redis, history from cold.

Per video (key names in ``keys.Keys``):

- ``recent``: a sorted set of the newest ``hot_size`` comments. Every score is 0 and each
  member is the comment id as 19 zero-padded digits, ``:``, then the comment's record as
  JSON, so members sort by id and ``ZRANGE ... BYLEX`` answers "after id X" and "before
  id X" exactly (scores are doubles and cannot hold a 63-bit id).
- ``meta.floor``: every comment with an id above the floor is in ``recent``. Set when the
  set is created (the first comment's id - 1) and raised when trimming drops members.
  A cursor at or above the floor is answered from Redis alone; below it, the cold store
  is merged in.
- ``removed``: tombstones (id scored by removal time), so that merged cold reads and the
  bus's backfill after a Redis outage honour deletions the cold store has not seen yet.
- ``rate``: comments accepted per second (the stats endpoint's ``comments_per_s``).
- stream ``{n}:stream``: every accepted comment and every removal, in order, for the
  ``persist`` worker to write to the cold store (Scylla, or SQLite in a local cluster).

``append`` is one Lua script (``lua/append.lua``, its arguments built by ``AppendCall``):
it checks the id's time against Redis' clock (the reorder window, see ``bus``), adds to
``recent`` and trims it, appends to the stream (and, with ``moderation_max``, a comment
that is not shadowed to the video's moderation stream, capped at about that length),
counts the rate and publishes the comment on the video's channel, atomically. So a
comment is on the bus exactly when it is readable from the hot store, and in the order
Redis accepted it. ``append_within`` is the same step behind the post's rate limits, in
one call (``lua/post.lua``): a post on an ingest node is one round trip to Redis.

Replication. Redis replicates asynchronously: a master that dies may take with it
writes it had answered but not yet sent to its replica, and the replica promoted in
its place never had them. With ``wait_replicas`` = n > 0, ``append``, ``append_within``
and ``remove`` send ``WAIT n wait_timeout_ms`` on the connection that ran the script
(coredis' ``ensure_replication``; the lean pipe is not used then) and return only once n
replicas have the write; when fewer confirm in time they raise ``NotReplicated`` (a 503
for the poster). The write has happened on the master and was published: the comment
may still be seen and kept (if the master lives on), or lost (if it dies before
replicating). See docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from coredis import PureToken
from coredis.exceptions import ReplicationError

from adapters.redis import scripts
from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys
from adapters.redis.lean import LuaScript, ScriptPipe
from domain.ids import snowflake_ms
from domain.model import Comment, Removal
from domain.ports import Store, StoreUnavailable

log = logging.getLogger("livecomments.hotstore")

PAD = 19  # digits of the largest 63-bit id


def pad(comment_id: int) -> str:
    return f"{comment_id:0{PAD}d}"


def record_json(comment: Comment) -> str:
    return json.dumps(comment.to_record(), ensure_ascii=False, separators=(",", ":"))


def from_member(m: bytes | str) -> Comment:
    text = m.decode() if isinstance(m, bytes) else m
    return Comment.from_record(json.loads(text[PAD + 1 :]))




class LateComment(StoreUnavailable):
    """Redis refused the comment: its id's time is outside the reorder window."""


class NotReplicated(StoreUnavailable):
    """The write happened on the master (and was published) but fewer than
    ``wait_replicas`` replicas confirmed it within ``wait_timeout_ms``: a failover now
    could lose it, so it is not acknowledged."""


@attrs.frozen(kw_only=True)
class AppendCall:
    """One call of ``lua/append.lua``: its KEYS and ARGV, built here and only here."""

    keys: Keys
    comment_id: int
    video_id: str
    record: str  # the comment's record as JSON (``record_json``)
    window_ms: int
    hot_size: int
    ttl_s: int
    moderation_max: int = 0  # > 0: also onto the moderation stream, capped at about this
    outbox_max: int = 0  # > 0: also onto the region outbox (regions.py), capped at about this

    @classmethod
    def of(
        cls, comment: Comment, keys: Keys, *, window_ms: int, hot_size: int, ttl_s: int, moderation_max: int = 0,
        outbox_max: int = 0,
    ) -> AppendCall:
        return cls(
            keys=keys,
            comment_id=comment.id,
            video_id=comment.video_id,
            record=record_json(comment),
            window_ms=window_ms,
            hot_size=hot_size,
            ttl_s=ttl_s,
            # A shadowed comment reaches nobody else: nothing to moderate.
            moderation_max=0 if comment.shadow else moderation_max,
            # A shadowed comment is seen by its author only, who is in this region.
            outbox_max=0 if comment.shadow else outbox_max,
        )

    def script_keys(self) -> list[str]:
        k, v = self.keys, self.video_id
        out = [k.recent(v), k.meta(v), k.stream_of(v), k.rate(v)]
        if self.moderation_max > 0:
            out.append(k.moderation_stream_of(v))
        if self.outbox_max > 0:
            out.append(k.outbox_of(v))
        return out

    def script_args(self) -> list[str | int]:
        tail: list[str | int] = [self.moderation_max] if self.moderation_max > 0 else []
        if self.outbox_max > 0:
            tail = [self.moderation_max, self.outbox_max]
        return [
            pad(self.comment_id),
            pad(self.comment_id - 1),  # the floor of a new sorted set
            snowflake_ms(self.comment_id),
            self.window_ms,
            self.hot_size,
            self.ttl_s,
            self.keys.channel(self.video_id),
            '{"t":"c","c":' + self.record + "}",  # what bus.encode makes of the comment
            self.video_id,
            self.record,
            *tail,
        ]


def _tombstone(video_id: str, raw: bytes | str) -> Removal:
    text = raw.decode() if isinstance(raw, bytes) else raw
    cid, _, author = text.partition(":")
    return Removal(video_id, int(cid), author or None, bool(author))


class HotStore:
    """Redis operations on the hot data of videos (no cold-store logic here)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        hot_size: int = 1000,
        ttl_s: int = 86400,
        window_ms: int = 250,
        tombstones: int = 1000,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        moderation_max: int = 0,
        outbox_max: int = 0,
        pipe: ScriptPipe | None = None,
    ) -> None:
        if wait_replicas < 0 or wait_timeout_ms < 1:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout_ms >= 1")
        self.redis = redis
        # When given, appends go through it rather than coredis (lean.py); not with WAIT,
        # which must follow the script on the connection that ran it.
        self.pipe = pipe if not wait_replicas else None
        self.keys = keys
        self.hot_size = hot_size
        self.ttl_s = ttl_s
        self.window_ms = window_ms
        self.tombstones_kept = tombstones
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.not_replicated = 0  # writes answered NotReplicated
        self.moderation_max = moderation_max
        self.outbox_max = outbox_max
        self._append = scripts.register(redis, "append")
        self._post = scripts.register(redis, "post")
        self._remove = scripts.register(redis, "remove")
        self._lean_append = LuaScript(scripts.source("append"))
        self._lean_post = LuaScript(scripts.source("post"))

    async def _write(self, script: scripts.ScriptCall, keys: list[str], args: list[Any]) -> Any:
        """Run a writing script; with ``wait_replicas``, also WAIT on its connection."""
        if not self.wait_replicas:
            return await script(keys=keys, args=args)
        try:
            with self.redis.ensure_replication(self.wait_replicas, self.wait_timeout_ms):
                return await script(keys=keys, args=args)
        except ReplicationError:
            self.not_replicated += 1
            raise NotReplicated(
                f"written on the Redis master but not confirmed by {self.wait_replicas} replica(s) within"
                f" {self.wait_timeout_ms} ms; it may still appear"
            ) from None

    def _call(self, comment: Comment) -> AppendCall:
        return AppendCall.of(
            comment, self.keys, window_ms=self.window_ms, hot_size=self.hot_size, ttl_s=self.ttl_s,
            moderation_max=self.moderation_max, outbox_max=self.outbox_max,
        )  # fmt: skip

    def _status(self, comment: Comment, res: Any) -> bool:
        status = int(res[0])
        if status == 0:
            skew = snowflake_ms(comment.id) - int(res[1])
            raise LateComment(f"comment id is {skew:+d} ms from Redis time (window {self.window_ms} ms); retry")
        return status == 1

    async def append(self, comment: Comment) -> bool:
        """Add a comment (idempotent: False if the id was there). Raises ``LateComment``
        when its id's time is more than the window away from Redis' clock."""
        call = self._call(comment)
        keys, args = call.script_keys(), call.script_args()
        if self.pipe is not None:
            return self._status(comment, await self.pipe.call(self._lean_append, keys, args))
        return self._status(comment, await self._write(self._append, keys, args))

    async def append_within(
        self, comment: Comment, limit_keys: Sequence[str], limit_args: Sequence[float]
    ) -> tuple[bool, bool, Any]:
        """``append`` behind the rate limits of ``lua/sliding_window.lua`` (its KEYS and
        ARGV, from ``RedisRateLimiter.script_call``), in one call on one Redis server:
        (allowed, added, the limiter's retry after in ms when not allowed). Nothing is
        counted or added when a limit refuses; raises ``LateComment`` like ``append``."""
        call = self._call(comment)
        keys, args = call.script_keys(), call.script_args()
        all_keys, all_args = [*keys, *limit_keys], [len(keys), len(args), *args, *limit_args]
        if self.pipe is not None:
            res = await self.pipe.call(self._lean_post, all_keys, all_args)
        else:
            res = await self._write(self._post, all_keys, all_args)
        if int(res[0]) == 3:
            return False, False, res[1]
        return True, self._status(comment, res), None

    async def remove(self, video_id: str, comment_id: int) -> bool:
        """Take a comment out of ``recent`` (True if it was there) and record a tombstone;
        the removal goes down the stream to the cold store."""
        k = self.keys
        keys = [k.recent(video_id), k.tombstones(video_id), k.stream_of(video_id)]
        args: list[Any] = [pad(comment_id), str(comment_id), video_id, self.tombstones_kept, self.ttl_s]
        if self.outbox_max > 0:  # regions: the removal goes to the other regions too
            keys.append(k.outbox_of(video_id))
            args.append(self.outbox_max)
        res = await self._write(self._remove, keys, args)
        return int(res) == 1

    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        p = pad(comment_id)
        found = await self.redis.zrange(
            self.keys.recent(video_id), "[" + p + ":", "(" + p + ";", sortby=PureToken.BYLEX, offset=0, count=1
        )
        return from_member(found[0]) if found else None

    async def floor(self, video_id: str) -> int | None:
        """Every comment above this id is in ``recent``; None: Redis has nothing for the video."""
        value = await self.redis.hget(self.keys.meta(video_id), "floor")
        return int(value) if value is not None else None

    async def newest(self, video_id: str, count: int, below: int | None = None) -> list[Comment]:
        """Up to ``count`` newest comments (ids < ``below`` when given), newest first."""
        hi = "(" + pad(below) if below is not None else "+"
        # With REV the range is given high end first.
        raw = await self.redis.zrange(
            self.keys.recent(video_id), hi, "-", sortby=PureToken.BYLEX, rev=True, offset=0, count=count
        )
        return [from_member(m) for m in raw]

    async def after(self, video_id: str, after_id: int, count: int, below: int | None = None) -> list[Comment]:
        """Up to ``count`` comments with after_id < id (< ``below``), oldest first."""
        lo = "[" + pad(after_id + 1)
        hi = "(" + pad(below) if below is not None else "+"
        if below is not None and below <= after_id + 1:
            return []
        raw = await self.redis.zrange(self.keys.recent(video_id), lo, hi, sortby=PureToken.BYLEX, offset=0, count=count)
        return [from_member(m) for m in raw]

    async def removed_ids(self, video_id: str) -> set[int]:
        return {_tombstone(video_id, x).comment_id for x in await self.redis.zrange(self.keys.tombstones(video_id), 0, -1)}

    async def removed_since(self, video_id: str, since_ms: int) -> list[Removal]:
        raw = await self.redis.zrange(self.keys.tombstones(video_id), since_ms, "+inf", sortby=PureToken.BYSCORE)
        return [_tombstone(video_id, x) for x in raw]

    async def comments_per_s(self, video_id: str, seconds: int = 5) -> float:
        """Accepted comments per second over the last ``seconds`` whole seconds."""
        now = int(time.time())
        fields = [str(now - i) for i in range(1, seconds + 1)]
        values = await self.redis.hmget(self.keys.rate(video_id), fields)
        return sum(int(v) for v in values if v is not None) / seconds


def _merge(
    hot: Iterable[Comment], cold: Iterable[Comment], removed: set[int], descending: bool
) -> list[Comment]:
    by_id: dict[int, Comment] = {}
    for c in cold:
        if c.id not in removed:
            by_id[c.id] = c
    for c in hot:
        by_id[c.id] = c
    return sorted(by_id.values(), key=lambda c: c.id, reverse=descending)


class ClusterStore:
    """The ``Store`` of ingest and rms processes in cluster mode.

    Writes go to the hot store only (the ``persist`` worker moves them to ``cold``), so a
    cold-store outage never blocks posting. Reads come from Redis when it holds
    everything the question needs (the cursor is at or above the floor) and otherwise
    merge Redis with the cold store. When Redis is down, reads fall back to the cold
    store (possibly a little behind), and writes raise ``StoreUnavailable`` (503).

    ``read_bound(video_id)`` (rms processes: ``RedisBus.read_bound``): ``latest`` and
    ``after`` return only ids below it. The newer ones reach the video's rooms through
    the bus's reorder buffer, in id order; a room must not also get them from a read.
    """

    def __init__(self, hot: HotStore, cold: Store, *, read_bound: Callable[[str], int] | None = None) -> None:
        self.hot = hot
        self.cold = cold
        self.read_bound = read_bound

    async def append(self, comment: Comment) -> None:
        try:
            await self.hot.append(comment)
        except StoreUnavailable:
            raise
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None

    async def append_many(self, comments: Sequence[Comment]) -> None:
        """One append per comment (posts arrive one at a time; nothing batches here)."""
        for c in comments:
            await self.append(c)

    async def remove(self, video_id: str, comment_id: int) -> bool:
        try:
            if await self.hot.remove(video_id, comment_id):
                return True
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        # Not in the hot set: an older comment, which only the cold store has.
        return await self.cold.remove(video_id, comment_id)

    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        try:
            found = await self.hot.get(video_id, comment_id)
            if found is not None:
                return found
            if comment_id in await self.hot.removed_ids(video_id):
                return None
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        return await self.cold.get(video_id, comment_id)

    async def _hot_desc(
        self, video_id: str, below: int | None, limit: int, viewer_id: str | None, every_author: bool = False
    ) -> list[Comment]:
        """Up to ``limit`` visible hot comments below ``below``, newest first."""
        out: list[Comment] = []
        while len(out) < limit:
            want = limit - len(out) + 16
            page = await self.hot.newest(video_id, want, below)
            out.extend(c for c in page if c.visible_to(viewer_id, every_author=every_author))
            if len(page) < want:
                break
            below = page[-1].id
        return out[:limit]

    async def _hot_asc(
        self,
        video_id: str,
        after_id: int,
        below: int | None,
        limit: int,
        viewer_id: str | None,
        every_author: bool = False,
    ) -> list[Comment]:
        """Up to ``limit`` visible hot comments after ``after_id`` (below ``below``), oldest first."""
        out: list[Comment] = []
        while len(out) < limit:
            want = limit - len(out) + 16
            page = await self.hot.after(video_id, after_id, want, below)
            out.extend(c for c in page if c.visible_to(viewer_id, every_author=every_author))
            if len(page) < want:
                break
            after_id = page[-1].id
        return out[:limit]

    async def latest(
        self, video_id: str, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        if limit <= 0:
            return []
        bound = self.read_bound(video_id) if self.read_bound is not None else None
        try:
            floor = await self.hot.floor(video_id)
            hot: list[Comment] = []
            removed: set[int] = set()
            if floor is not None:
                hot = await self._hot_desc(video_id, bound, limit, viewer_id, every_author)
                if len(hot) >= limit and hot[-1].id > floor:
                    return hot[::-1]
                removed = await self.hot.removed_ids(video_id)
        except REDIS_ERRORS as e:
            log.warning("latest %s: Redis unavailable (%s); reading the cold store", video_id, e)
            return (await self.cold.before(video_id, bound, limit, viewer_id, every_author=every_author))[::-1]
        cold = await self.cold.before(video_id, bound, limit, viewer_id, every_author=every_author)
        return _merge(hot, cold, removed, descending=True)[:limit][::-1]

    async def after(
        self, video_id: str, after_id: int, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        if limit <= 0:
            return []
        bound = self.read_bound(video_id) if self.read_bound is not None else None
        try:
            floor = await self.hot.floor(video_id)
            hot: list[Comment] = []
            removed: set[int] = set()
            if floor is not None:
                hot = await self._hot_asc(video_id, after_id, bound, limit, viewer_id, every_author)
                if after_id >= floor:
                    return hot
                removed = await self.hot.removed_ids(video_id)
        except REDIS_ERRORS as e:
            log.warning("after %s: Redis unavailable (%s); reading the cold store", video_id, e)
            return self._cut(await self.cold.after(video_id, after_id, limit, viewer_id, every_author=every_author), bound)
        cold = self._cut(await self.cold.after(video_id, after_id, limit, viewer_id, every_author=every_author), bound)
        return _merge(hot, cold, removed, descending=False)[:limit]

    async def before(
        self,
        video_id: str,
        before_id: int | None,
        limit: int,
        viewer_id: str | None = None,
        *,
        every_author: bool = False,
    ) -> list[Comment]:
        if limit <= 0:
            return []
        try:
            floor = await self.hot.floor(video_id)
            hot: list[Comment] = []
            removed: set[int] = set()
            if floor is not None:
                hot = await self._hot_desc(video_id, before_id, limit, viewer_id, every_author)
                if len(hot) >= limit and hot[-1].id > floor:
                    return hot
                removed = await self.hot.removed_ids(video_id)
        except REDIS_ERRORS as e:
            log.warning("before %s: Redis unavailable (%s); reading the cold store", video_id, e)
            return await self.cold.before(video_id, before_id, limit, viewer_id, every_author=every_author)
        cold = await self.cold.before(video_id, before_id, limit, viewer_id, every_author=every_author)
        return _merge(hot, cold, removed, descending=True)[:limit]

    async def recent_all(self, video_id: str, after_id: int, limit: int) -> list[Comment]:
        """Everything after ``after_id`` (every author's shadowed comments included),
        oldest first: what the bus feeds a room when it joins a video or backfills after
        an outage. Below the hot floor the cold store fills in."""
        floor = await self.hot.floor(video_id)
        hot = await self.hot.after(video_id, after_id, limit) if floor is not None else []
        if floor is not None and after_id >= floor:
            return hot
        removed = await self.hot.removed_ids(video_id) if floor is not None else set()
        cold = await self.cold.after(video_id, after_id, limit, every_author=True)
        return _merge(hot, cold, removed, descending=False)[:limit]

    async def aclose(self) -> None:
        """The hot store holds no buffers; the cold store is closed by its owner."""

    @staticmethod
    def _cut(comments: list[Comment], bound: int | None) -> list[Comment]:
        return comments if bound is None else [c for c in comments if c.id < bound]

