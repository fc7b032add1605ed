"""The Redis pieces of cluster mode, in-process against the session's real redis-server."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from adapters.redis.bus import RedisBus, encode
from adapters.redis.client import open_redis
from adapters.redis.hotstore import ClusterStore, HotStore, LateComment
from adapters.redis.keys import Keys
from adapters.redis.persist import PersistWorker
from adapters.redis.presence import Presence
from adapters.redis.ratelimit import RedisRateLimiter
from adapters.sqlite.store import SqliteStore
from domain.errors import Unavailable
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment, Removal
from domain.ports import StoreUnavailable
from policy.rate import Rate
from policy.ratelimit import InMemoryRateLimiter
from tests.cluster.conftest import RedisServer, free_port

WORKER = SnowflakeGenerator(7)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def comment(video: str, n: int, *, cid: int | None = None, shadow: bool = False, author: str = "u1") -> Comment:
    return Comment(
        id=cid if cid is not None else WORKER.next_id(now_ms()),
        video_id=video,
        author=Author(author, author.title()),
        text=f"comment {n}",
        created_at=now_ms(),
        shadow=shadow,
    )


async def eventually(check: Callable[[], Any], limit_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` (sync or async) until it is truthy, at most ``limit_s`` seconds."""
    with trio.move_on_after(limit_s):
        while True:
            value = check()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- rate limiting -------------------------------------------------------------------------------


async def test_rate_limit_is_the_sliding_window_of_the_in_process_limiter(redis: Any, keys: Keys) -> None:
    rule = Rate(3, 2.0)
    shared_a, shared_b = RedisRateLimiter(redis, keys), RedisRateLimiter(redis, keys)
    local = InMemoryRateLimiter()
    for i in range(3):
        # Two limiters (two ingest processes) count against one key.
        limiter = shared_a if i % 2 else shared_b
        assert (await limiter.acquire("user:u1", rule, 0.0)).allowed
        assert local.check("user:u1", rule, 0.0).allowed
    refused = await shared_a.acquire("user:u1", rule, 0.0)
    expected = local.check("user:u1", rule, 0.0)
    assert not refused.allowed and not expected.allowed
    # Redis' clock moved on by a few ms meanwhile: the first event leaves the window a
    # little sooner than the in-process limiter (whose clock stood still) says.
    assert 0 < refused.retry_after <= expected.retry_after == 2.0
    assert expected.retry_after - refused.retry_after < 0.5
    assert Rate.retry_after_header(refused.retry_after) == Rate.retry_after_header(expected.retry_after) == 2
    assert (await shared_a.acquire("user:u2", rule, 0.0)).allowed  # keys are separate


async def test_acquire_many_counts_all_or_nothing(redis: Any, keys: Keys) -> None:
    limiter = RedisRateLimiter(redis, keys)
    user, slow = Rate(5, 10.0), Rate(1, 10.0)
    items = [("user:u1", user), ("slow:v1:10:u1", slow)]
    assert (await limiter.acquire_many(items, 0.0)).allowed
    refused = await limiter.acquire_many(items, 0.0)  # slow mode refuses
    assert not refused.allowed and 9.0 < refused.retry_after <= 10.0
    # The refused post did not count against the user limit: 4 more are allowed.
    for _ in range(4):
        assert (await limiter.acquire("user:u1", user, 0.0)).allowed
    sixth = await limiter.acquire("user:u1", user, 0.0)
    assert not sixth.allowed and 9.0 < sixth.retry_after <= 10.0  # when the first leaves
    # A key named twice in one call sees its first count.
    assert not (await limiter.acquire_many([("k2", Rate(1, 10.0)), ("k2", Rate(1, 10.0))], 0.0)).allowed
    assert (await limiter.acquire_many([("k3", Rate(2, 10.0)), ("k3", Rate(2, 10.0))], 0.0)).allowed
    assert not (await limiter.acquire("k3", Rate(2, 10.0), 0.0)).allowed


async def test_rate_limiter_without_redis_answers_503() -> None:
    async with open_redis(f"redis://127.0.0.1:{free_port()}", timeout_s=0.5) as down:
        with pytest.raises(Unavailable) as info:
            await RedisRateLimiter(down, Keys("x")).acquire("user:u1", Rate(5, 10.0), 0.0)
    assert info.value.status == 503 and "Retry-After" in info.value.headers()


# -- the hot store ---------------------------------------------------------------------------------


async def test_hot_store_reads_trims_and_merges_with_the_cold_store(redis: Any, keys: Keys, tmp_path: Path) -> None:
    hot = HotStore(redis, keys, hot_size=5)
    cs = [comment("v1", n) for n in range(8)]
    async with SqliteStore.open(str(tmp_path / "cold.sqlite3")) as cold:
        store = ClusterStore(hot, cold)
        for c in cs:
            await store.append(c)
        # Redis keeps the newest 5; everything above the floor is there.
        assert await hot.floor("v1") == cs[2].id
        assert [c.id for c in await store.latest("v1", 5)] == [c.id for c in cs[3:]]
        assert [c.id for c in await store.after("v1", cs[4].id, 10)] == [c.id for c in cs[5:]]
        assert [c.id for c in await store.before("v1", cs[7].id, 3)] == [cs[6].id, cs[5].id, cs[4].id]
        # Older than the floor: the cold store fills in (once persist wrote it there).
        for c in cs[:3]:
            await cold.append(c)
        assert [c.id for c in await store.latest("v1", 8)] == [c.id for c in cs]
        assert [c.id for c in await store.after("v1", 0, 100)] == [c.id for c in cs]
        assert [c.id for c in await store.before("v1", None, 100)] == [c.id for c in reversed(cs)]
        assert (await store.get("v1", cs[0].id)) == cs[0]
        assert (await store.get("v1", cs[7].id)) == cs[7]


async def test_append_is_idempotent_refuses_late_ids_and_streams_everything(redis: Any, keys: Keys) -> None:
    hot = HotStore(redis, keys, window_ms=250)
    c = comment("v1", 1)
    assert await hot.append(c) is True
    assert await hot.append(c) is False  # the same id again: stored once, streamed once
    stale = comment("v1", 2, cid=SnowflakeGenerator(3).next_id(now_ms() - 5000))
    with pytest.raises(LateComment):
        await hot.append(stale)
    assert await hot.get("v1", stale.id) is None
    entries = await redis.xrange(keys.stream_of("v1"))
    assert len(entries) == 1


async def test_removal_tombstones_hide_cold_copies(redis: Any, keys: Keys, tmp_path: Path) -> None:
    hot = HotStore(redis, keys, hot_size=100)
    async with SqliteStore.open(str(tmp_path / "cold.sqlite3")) as cold:
        store = ClusterStore(hot, cold)
        a, b, shadow = comment("v1", 1), comment("v1", 2), comment("v1", 3, shadow=True, author="troll")
        for c in (a, b, shadow):
            await store.append(c)
            await cold.append(c)  # as if persist had written them already
        assert await store.remove("v1", a.id) is True
        assert await store.get("v1", a.id) is None
        # The cold copy is still there until persist applies the removal; reads merge it away.
        assert [c.id for c in await store.before("v1", None, 10)] == [b.id]
        assert [c.id for c in await store.before("v1", None, 10, "troll")] == [shadow.id, b.id]
        kinds = [e.field_values[b"k"] for e in await redis.xrange(keys.stream_of("v1"))]
        assert kinds == [b"c", b"c", b"c", b"r"]
        assert await hot.removed_since("v1", now_ms() - 60_000) == [Removal("v1", a.id)]
        # A shadowed comment's tombstone remembers whose it was (only they hear of it).
        assert await store.remove("v1", shadow.id) is True
        assert (await hot.removed_since("v1", now_ms() - 60_000))[-1] == Removal("v1", shadow.id, "troll", True)


# -- the bus -------------------------------------------------------------------------------------------


async def test_bus_releases_each_video_in_id_order(redis: Any, keys: Keys) -> None:
    got: list[Any] = []
    bus = RedisBus(redis, keys, hold_ms=150)
    async with trio.open_nursery() as nursery:
        await nursery.start(bus.run)
        await bus.wait_connected()
        await bus.subscribe("v1", got.append)
        assert await redis.pubsub_shardnumsub(keys.channel("v1")) == {keys.channel("v1").encode(): 1}
        t = now_ms()
        late_worker, early_worker = SnowflakeGenerator(1), SnowflakeGenerator(2)
        ahead = comment("v1", 1, cid=early_worker.next_id(t))
        behind = comment("v1", 2, cid=late_worker.next_id(t - 20))  # a lower id, published later
        removed = comment("v1", 3, cid=early_worker.next_id(t))
        for c in (ahead, removed, behind):
            await redis.spublish(keys.channel("v1"), encode(c))
        await redis.spublish(keys.channel("v1"), encode(Removal("v1", removed.id)))
        await eventually(lambda: len([e for e in got if isinstance(e, Comment)]) >= 2, what="two releases")
        await eventually(lambda: not bus.buffer.next_release_ms(), what="nothing held any more")
        assert [e.id for e in got if isinstance(e, Comment)] == [behind.id, ahead.id]
        assert Removal("v1", removed.id) in got
        await bus.unsubscribe("v1", got.append)

        async def unsubscribed() -> bool:
            return bool(await redis.pubsub_shardnumsub(keys.channel("v1")) == {keys.channel("v1").encode(): 0})

        await eventually(unsubscribed, what="the channel to be unsubscribed")
        nursery.cancel_scope.cancel()


async def test_bus_resubscribes_and_backfills_after_a_redis_restart(
    redis_server: RedisServer, keys: Keys, tmp_path: Path
) -> None:
    got: list[Comment] = []
    async with open_redis(redis_server.url) as redis, SqliteStore.open(str(tmp_path / "c.sqlite3")) as cold:
        hot = HotStore(redis, keys)
        recent = ClusterStore(hot, cold)
        bus = RedisBus(redis, keys, hold_ms=100, recent=recent.recent_all, removed_since=hot.removed_since)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await bus.wait_connected()
            await bus.subscribe("v1", lambda e: got.append(e) if isinstance(e, Comment) else None)
            before = [comment("v1", n) for n in range(3)]
            for c in before:
                await hot.append(c)
            await eventually(lambda: len(got) == 3, what="live comments")
            redis_server.stop()
            await eventually(lambda: not bus.connected, what="the bus to notice")
            await trio.sleep(0.6)  # let the bus back off a little: it misses what comes next live
            redis_server.start()
            during = [comment("v1", n) for n in range(3, 6)]
            for c in during:
                await hot.append(c)
            await eventually(lambda: bus.reconnects == 1 and len(got) == 6, what="resubscription and backfill")
            after = comment("v1", 6)
            await hot.append(after)
            await eventually(lambda: len(got) == 7, what="live again")
            assert [c.id for c in got] == [c.id for c in [*before, *during, after]]
            assert bus.backfilled >= 1  # what came while it was away came through the backfill
            nursery.cancel_scope.cancel()


# -- persist ----------------------------------------------------------------------------------------------


class FlakyStore:
    """A cold store that is down for the first ``failures`` writes."""

    def __init__(self, inner: SqliteStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, c: Comment) -> None:
        await self.append_many([c])

    async def append_many(self, cs: Sequence[Comment]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("down")
        await self.inner.append_many(cs)


async def test_persist_drains_acks_only_what_the_cold_store_took(redis: Any, keys: Keys, tmp_path: Path) -> None:
    hot = HotStore(redis, keys)
    cs = [comment("v1", n) for n in range(30)]
    for c in cs:
        await hot.append(c)
    await hot.remove("v1", cs[3].id)
    async with SqliteStore.open(str(tmp_path / "cold.sqlite3")) as sqlite:
        cold = FlakyStore(sqlite, failures=5)
        worker = PersistWorker(redis, keys, cold, consumer="p1", batch=8, block_ms=100, max_backoff_s=0.2)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)

            async def drained() -> bool:
                return await redis.xlen(keys.stream_of("v1")) == 0

            await eventually(drained, what="the stream to drain")
            assert worker.stats.failures >= 1  # the outage was seen and survived
            rows = await sqlite.after("v1", 0, 100)
            assert [c.id for c in rows] == [c.id for c in cs if c.id != cs[3].id]
            pending = await redis.xpending(keys.stream_of("v1"), "persist")
            assert pending.pending == 0
            # Idempotent: the same entries again (a crash before the ack) change nothing.
            for c in cs[:5]:
                await redis.xadd(keys.stream_of("v1"), {"k": "c", "v": "v1", "r": __import__("json").dumps(c.to_record())})
            await eventually(drained, what="the replayed entries")
            assert [c.id for c in await sqlite.after("v1", 0, 100)] == [c.id for c in cs if c.id != cs[3].id]
            worker.stop()
            await worker.stopped.wait()


# -- presence and modes ------------------------------------------------------------------------------------


async def test_viewer_counts_sum_over_nodes_and_expire(redis: Any, keys: Keys) -> None:
    a = Presence(redis, keys, "rms-a", ttl_s=0.5)
    b = Presence(redis, keys, "rms-b", ttl_s=0.5)
    await a.report("v1", 3)
    assert await b.report("v1", 4) == 7
    assert await a.total("v1") == 7
    # rms-b dies: its count stops counting after the TTL; rms-a keeps reporting.

    async def only_a() -> bool:
        return await a.report("v1", 3) == 3

    await eventually(only_a, what="rms-b's count to expire")
    await a.report("v1", 0)
    assert await b.total("v1") == 0


async def test_modes_are_decided_once_for_the_cluster(redis: Any, keys: Keys) -> None:
    a = Presence(redis, keys, "rms-a", min_dwell_s=10.0)
    b = Presence(redis, keys, "rms-b", min_dwell_s=10.0)
    assert await a.agree_mode("v1", "push", "sampled") == "sampled"
    # rms-b still thinks "push" and proposes "cdn": stale, it is told the cluster's mode.
    assert await b.agree_mode("v1", "push", "cdn") == "sampled"
    # No change back within the dwell time, whoever asks.
    assert await a.agree_mode("v1", "sampled", "push") == "sampled"
    assert await Presence(redis, keys, "x").mode("v1") == "sampled"
