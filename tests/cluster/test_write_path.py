"""The cluster's batched write path, in process against the session's redis-server:

- a post on an ingest node is one Redis call (its rate limits, the append, the persist
  and moderation streams in ``lua/post.lua``), or two on a Redis Cluster;
- the persist and moderate workers read a batch with one ``XREADGROUP`` and acknowledge
  it with one ``XACK`` (and one ``XDEL``), counted with ``INFO commandstats``;
- a worker that dies in the middle of a batch loses nothing: the unacknowledged entries
  are read again, by the same consumer after a restart or claimed by another one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import CollectorRegistry

from adapters.redis.broker import RedisBroker
from adapters.redis.bus import RedisBus
from adapters.redis.hotstore import ClusterStore, HotStore
from adapters.redis.keys import Keys
from adapters.redis.lean import open_script_pipe
from adapters.redis.moderation import RedisModerationSource
from adapters.redis.persist import PersistWorker
from adapters.redis.ratelimit import RedisRateLimiter
from adapters.sqlite.store import SqliteStore
from domain.errors import RateLimited
from domain.identity import Identity
from domain.metrics import Metrics
from domain.model import Comment
from domain.settings import Settings
from ingest.moderation.automod import Automod, ModerationMetrics
from ingest.moderation.rules import Limits, Rules, RuleSet
from ingest.service import CommentService
from tests.cluster.conftest import RedisServer
from tests.cluster.test_redis_parts import comment, eventually


async def calls(redis: Any) -> dict[str, int]:
    """Calls per command since the server started (scripts' own calls included)."""
    info = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


async def append_fresh(hot: HotStore, video: str, n: int, flagged: frozenset[int] = frozenset()) -> list[Comment]:
    """``n`` comments appended, each made just before its append (the script refuses ids
    further than the reorder window from Redis' clock); those at the ``flagged``
    positions say a blocked word."""
    out = []
    for i in range(n):
        c = comment(video, i)
        if i in flagged:
            c = attrs.evolve(c, text="buy spamword now")
        await hot.append(c)
        out.append(c)
    return out


def delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


# -- ingest: one call per post -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one_call", "lean"), [(True, True), (True, False), (False, False)], ids=["lean-pipe", "coredis", "redis-cluster"]
)
async def test_a_post_is_one_redis_call_with_its_limits_and_both_streams(
    redis_server: RedisServer, redis: Any, keys: Keys, tmp_path: Path, one_call: bool, lean: bool
) -> None:
    async with open_script_pipe(redis_server.url) as pipe, SqliteStore.open(str(tmp_path / "cold.sqlite3")) as cold:
        hot = HotStore(redis, keys, moderation_max=1000, pipe=pipe if lean else None)
        limiter = RedisRateLimiter(redis, keys)
        queued = ModerationMetrics(CollectorRegistry()).queued
        broker = RedisBroker(hot, limiter, one_call=one_call, moderation_queued=queued.inc)
        service = CommentService(
            Settings(rate_limit="3/60s"), broker, ClusterStore(hot, cold), RedisBus(redis, keys), limiter, Metrics(),
            limited=broker,
        )  # fmt: skip
        who = Identity("u1", "U1")
        await service.post("v0", Identity("u0", "U0"), "warm-up")  # Redis learns the scripts (EVALSHA, NOSCRIPT, EVAL)
        before = await calls(redis)
        posted = [await service.post("v1", who, f"hello {i}") for i in range(3)]
        after = await calls(redis)
        # One script per post on one Redis server; the limiter's, then the append's, on a
        # Redis Cluster (the user's keys and the video's keys are in other slots).
        assert delta(before, after, "evalsha") == (3 if one_call else 6)
        assert delta(before, after, "xadd") == 6  # the persist and the moderation stream
        with pytest.raises(RateLimited) as refused:
            await service.post("v1", who, "one too many")
        assert refused.value.retry_after > 0
    streamed = [json.loads(e.field_values[b"r"]) for e in await redis.xrange(keys.stream_of("v1"))]
    assert [r["id"] for r in streamed if r["video_id"] == "v1"] == [str(c.id) for c in posted]
    moderated = [json.loads(e.field_values[b"r"]) for e in await redis.xrange(keys.moderation_stream_of("v1"))]
    assert [r["id"] for r in moderated if r["video_id"] == "v1"] == [str(c.id) for c in posted]  # not the refused one
    assert await redis.zcard(keys.limiter("user:u1", "user:u1")) == 3  # nor counted
    assert [c.id for c in await hot.newest("v1", 10)] == [c.id for c in posted[::-1]]
    assert queued._value.get() == 4


# -- workers: one read and one acknowledgement per batch -------------------------------------------


async def test_a_persist_batch_costs_one_read_and_one_ack(redis: Any, keys: Keys, tmp_path: Path) -> None:
    hot = HotStore(redis, keys)
    cs = await append_fresh(hot, "v1", 50)
    async with SqliteStore.open(str(tmp_path / "cold.sqlite3")) as cold:
        worker = PersistWorker(redis, keys, cold, consumer="p1", batch=100, block_ms=30_000)
        before = await calls(redis)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)

            async def drained() -> bool:
                return await redis.xlen(keys.stream_of("v1")) == 0

            await eventually(drained, what="the stream to drain")
            after = await calls(redis)
            nursery.cancel_scope.cancel()
        assert [c.id for c in await cold.after("v1", 0, 100)] == [c.id for c in cs]
    assert worker.stats.batches == 1
    assert delta(before, after, "xack") == 1
    assert delta(before, after, "xdel") == 1
    # Its own pending entries first (none), then the 50 new ones; a third, blocking read
    # may be waiting already.
    assert delta(before, after, "xreadgroup") <= 3


async def test_a_moderation_batch_is_checked_then_acknowledged_at_once(redis: Any, keys: Keys) -> None:
    hot = HotStore(redis, keys, moderation_max=1000)
    cs = await append_fresh(hot, "v1", 40, flagged=frozenset({5, 17}))
    flagged = {cs[5].id, cs[17].id}
    removed = Removals()
    automod = Automod(Rules(RuleSet.parse("spamword\n"), Limits(new_account_s=0)), ModerationMetrics(CollectorRegistry()), remover=removed)
    source = RedisModerationSource(redis, keys, automod, consumer="m1", batch=100, block_ms=30_000)
    before = await calls(redis)
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        await eventually(lambda: source.handled == 40, what="the batch to be handled")

        async def drained() -> bool:
            return await redis.xlen(keys.moderation_stream_of("v1")) == 0

        await eventually(drained, what="the stream to drain")
        after = await calls(redis)
        nursery.cancel_scope.cancel()
    assert removed.ids == flagged
    assert delta(before, after, "xack") == 1
    assert delta(before, after, "xdel") == 1
    assert delta(before, after, "xreadgroup") <= 3


# -- a crash in the middle of a batch --------------------------------------------------------------


class DiesMidBatch:
    """A cold store that writes the first half of a batch and then never returns: the
    process dies there, before any acknowledgement."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.stuck = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_many(self, cs: Sequence[Comment]) -> None:
        await self.inner.append_many(cs[: len(cs) // 2])
        self.stuck.set()
        await trio.sleep_forever()


@pytest.mark.parametrize("successor", ["p1", "p2"], ids=["restarted", "another-consumer"])
async def test_a_persist_worker_dying_mid_batch_loses_nothing(
    redis: Any, keys: Keys, tmp_path: Path, successor: str
) -> None:
    hot = HotStore(redis, keys)
    cs = await append_fresh(hot, "v1", 20)
    stream = keys.stream_of("v1")
    async with SqliteStore.open(str(tmp_path / "cold.sqlite3")) as cold:
        dying = DiesMidBatch(cold)
        first = PersistWorker(redis, keys, dying, consumer="p1", batch=100, block_ms=100)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await dying.stuck.wait()
            nursery.cancel_scope.cancel()  # the process is gone: nothing was acknowledged
        assert (await redis.xpending(stream, "persist")).pending == 20
        assert len(await cold.after("v1", 0, 100)) == 10
        # The same consumer after a restart reads its own pending entries first; another
        # one claims them once they have been idle for claim_idle_s.
        second = PersistWorker(redis, keys, cold, consumer=successor, batch=100, block_ms=100, claim_idle_s=0.05)
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run)

            async def drained() -> bool:
                return await redis.xlen(stream) == 0

            await eventually(drained, what="the pending entries to be written")
            nursery.cancel_scope.cancel()
        # Every comment once: the half written before the crash was written again, as a no-op.
        assert [c.id for c in await cold.after("v1", 0, 100)] == [c.id for c in cs]
    assert (await redis.xpending(stream, "persist")).pending == 0


class Removals:
    """A remover that records what automod removed (the first call may hang forever)."""

    def __init__(self, *, hang_first: bool = False) -> None:
        self.ids: set[int] = set()
        self.hang_first = hang_first
        self.stuck = trio.Event()

    async def remove(self, comment: Comment, **kw: Any) -> bool:
        if self.hang_first:
            self.hang_first = False
            self.stuck.set()
            await trio.sleep_forever()
        self.ids.add(comment.id)
        if kw.get("on_removed") is not None:
            kw["on_removed"]()
        return True


async def test_a_moderate_worker_dying_mid_batch_loses_nothing(redis: Any, keys: Keys) -> None:
    hot = HotStore(redis, keys, moderation_max=1000)
    cs = await append_fresh(hot, "v1", 30, flagged=frozenset({3, 20}))
    flagged = {cs[3].id, cs[20].id}
    stream = keys.moderation_stream_of("v1")
    rules = RuleSet.parse("spamword\n")
    hanging = Removals(hang_first=True)
    first = RedisModerationSource(
        redis, keys, Automod(Rules(rules, Limits(new_account_s=0)), ModerationMetrics(CollectorRegistry()), remover=hanging),
        consumer="m1", batch=100, block_ms=100,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await hanging.stuck.wait()  # removing the first flagged comment of the batch
        nursery.cancel_scope.cancel()
    assert (await redis.xpending(stream, "moderate")).pending == 30
    removals = Removals()
    second = RedisModerationSource(
        redis, keys, Automod(Rules(rules, Limits(new_account_s=0)), ModerationMetrics(CollectorRegistry()), remover=removals),
        consumer="m1", batch=100, block_ms=100,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)

        async def drained() -> bool:
            return await redis.xlen(stream) == 0

        await eventually(drained, what="the pending entries to be moderated")
        nursery.cancel_scope.cancel()
    assert removals.ids == flagged
    assert second.handled == 30
