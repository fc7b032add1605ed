"""Each Lua script of cluster mode on its own, against the session's real redis-server.

The scripts are the files in ``livecomments/redis/lua`` (``scripts.source``); these tests
call them with raw KEYS and ARGV (the append script through ``AppendCall``, its one
calling convention) and read what they left in Redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from adapters.redis import scripts
from adapters.redis.bus import decode
from adapters.redis.client import shard_subscriber
from adapters.redis.hotstore import AppendCall, pad, record_json
from adapters.redis.keys import Keys
from domain.ids import SnowflakeGenerator, snowflake_ms
from domain.model import Author, Comment

GEN = SnowflakeGenerator(5)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def comment(video: str, n: int, *, at_ms: int | None = None, shadow: bool = False) -> Comment:
    # A generator never goes back in time: an id of another time needs one of its own.
    return Comment(
        id=GEN.next_id(now_ms()) if at_ms is None else SnowflakeGenerator(6).next_id(at_ms),
        video_id=video,
        author=Author("u1", "U1"),
        text=f"comment {n}",
        created_at=now_ms(),
        shadow=shadow,
    )


def s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@asynccontextmanager
async def listening(redis: Any, channel: str) -> AsyncIterator[Any]:
    async with shard_subscriber(redis) as ps:  # the scripts SPUBLISH on shard channels
        await ps.subscribe(channel)
        yield ps


async def next_message(ps: Any) -> str:
    with trio.fail_after(5):  # only detects a hang
        while True:
            msg = await ps.get_message(timeout=1)
            if msg is not None and msg["type"] == "message":
                return s(msg["data"])


def test_every_script_is_shipped_and_says_its_arguments() -> None:
    for name in scripts.NAMES:
        text = scripts.source(name)
        assert text.startswith("-- ") and "KEYS" in text and "ARGV" in text
        assert "redis.call" in text
    with pytest.raises(ValueError):
        scripts.source("nonexistent")


# -- append.lua -------------------------------------------------------------------------------------


def append_call(c: Comment, keys: Keys, *, hot_size: int = 100, window_ms: int = 250) -> AppendCall:
    return AppendCall.of(c, keys, window_ms=window_ms, hot_size=hot_size, ttl_s=600)


async def test_append_stores_streams_counts_and_publishes_in_one_call(redis: Any, keys: Keys) -> None:
    append = scripts.register(redis, "append")
    c = comment("v1", 1)
    call = append_call(c, keys)
    assert call.script_keys() == [keys.recent("v1"), keys.meta("v1"), keys.stream_of("v1"), keys.rate("v1")]
    async with listening(redis, keys.channel("v1")) as ps:
        status, redis_now = await append(keys=call.script_keys(), args=call.script_args())
        assert int(status) == 1 and abs(int(redis_now) - now_ms()) < 60_000
        assert decode(await next_message(ps)) == c
    members = await redis.zrange(keys.recent("v1"), 0, -1)
    assert [s(m) for m in members] == [pad(c.id) + ":" + record_json(c)]
    assert s(await redis.hget(keys.meta("v1"), "floor")) == pad(c.id - 1)
    [entry] = await redis.xrange(keys.stream_of("v1"))
    fields = {s(k): s(v) for k, v in dict(entry.field_values).items()}
    assert fields == {"k": "c", "v": "v1", "r": record_json(c)}
    assert sum(int(v) for v in (await redis.hgetall(keys.rate("v1"))).values()) == 1
    for key in (keys.recent("v1"), keys.meta("v1"), keys.rate("v1")):
        assert await redis.ttl(key) > 0


async def test_append_refuses_ids_outside_the_window_and_ignores_repeats(redis: Any, keys: Keys) -> None:
    append = scripts.register(redis, "append")
    c = comment("v1", 1)
    call = append_call(c, keys)
    assert int((await append(keys=call.script_keys(), args=call.script_args()))[0]) == 1
    assert int((await append(keys=call.script_keys(), args=call.script_args()))[0]) == 2
    for skew in (-5000, 5000):
        odd = comment("v1", 2, at_ms=now_ms() + skew)
        odd_call = append_call(odd, keys)
        status, redis_now = await append(keys=odd_call.script_keys(), args=odd_call.script_args())
        assert int(status) == 0
        assert abs(snowflake_ms(odd.id) - int(redis_now) - skew) < 1000
    assert await redis.zcard(keys.recent("v1")) == 1
    assert await redis.xlen(keys.stream_of("v1")) == 1


async def test_append_trims_to_the_hot_size_and_raises_the_floor(redis: Any, keys: Keys) -> None:
    append = scripts.register(redis, "append")
    cs = [comment("v1", n) for n in range(5)]
    for c in cs:
        call = append_call(c, keys, hot_size=3)
        await append(keys=call.script_keys(), args=call.script_args())
    assert [s(m)[:19] for m in await redis.zrange(keys.recent("v1"), 0, -1)] == [pad(c.id) for c in cs[2:]]
    assert s(await redis.hget(keys.meta("v1"), "floor")) == pad(cs[1].id)
    assert await redis.xlen(keys.stream_of("v1")) == 5  # the stream keeps everything for persist


async def test_append_puts_comments_on_the_region_outbox_with_or_without_moderation(redis: Any, keys: Keys) -> None:
    append = scripts.register(redis, "append")
    plain, moderated, shadowed = comment("v1", 1), comment("v1", 2), comment("v1", 3, shadow=True)
    for c, moderation_max in ((plain, 0), (moderated, 50), (shadowed, 50)):
        call = AppendCall.of(c, keys, window_ms=250, hot_size=100, ttl_s=600, moderation_max=moderation_max, outbox_max=10)
        assert int((await append(keys=call.script_keys(), args=call.script_args()))[0]) == 1
    outbox = await redis.xrange(keys.outbox_of("v1"))
    assert [{s(k): s(v) for k, v in dict(e.field_values).items()} for e in outbox] == [
        {"v": "v1", "r": record_json(c)} for c in (plain, moderated)  # the shadowed one stays here
    ]
    assert [s(dict(e.field_values)[b"r"]) for e in await redis.xrange(keys.moderation_stream_of("v1"))] == [
        record_json(moderated)
    ]
    for n in range(200):  # capped at about outbox_max (MAXLEN ~: whole nodes of 100 entries)
        newest = comment("v1", 10 + n)
        call = AppendCall.of(newest, keys, window_ms=250, hot_size=100, ttl_s=600, outbox_max=10)
        await append(keys=call.script_keys(), args=call.script_args())
    assert await redis.xlen(keys.outbox_of("v1")) <= 110
    remove = scripts.register(redis, "remove")
    k = [keys.recent("v1"), keys.tombstones("v1"), keys.stream_of("v1"), keys.outbox_of("v1")]
    assert await remove(keys=k, args=[pad(newest.id), str(newest.id), "v1", 10, 600, 1000]) == 1
    last = (await redis.xrevrange(keys.outbox_of("v1"), count=1))[0]
    assert {s(a): s(b) for a, b in dict(last.field_values).items()} == {"k": "r", "v": "v1", "id": str(newest.id)}


# -- remove.lua -----------------------------------------------------------------------------------


async def test_remove_takes_the_comment_out_and_leaves_a_tombstone(redis: Any, keys: Keys) -> None:
    append, remove = scripts.register(redis, "append"), scripts.register(redis, "remove")
    plain, shadowed = comment("v1", 1), comment("v1", 2, shadow=True)
    for c in (plain, shadowed):
        call = append_call(c, keys)
        await append(keys=call.script_keys(), args=call.script_args())
    k = [keys.recent("v1"), keys.tombstones("v1"), keys.stream_of("v1")]
    assert await remove(keys=k, args=[pad(plain.id), str(plain.id), "v1", 10, 600]) == 1
    assert await remove(keys=k, args=[pad(shadowed.id), str(shadowed.id), "v1", 10, 600]) == 1
    assert await redis.zcard(keys.recent("v1")) == 0
    assert [s(m) for m in await redis.zrange(keys.tombstones("v1"), 0, -1)] == [str(plain.id), f"{shadowed.id}:u1"]
    kinds = [(s(e.field_values[b"k"]), s(e.field_values.get(b"id", b""))) for e in await redis.xrange(keys.stream_of("v1"))]
    assert kinds == [("c", ""), ("c", ""), ("r", str(plain.id)), ("r", str(shadowed.id))]
    # Not in the hot set (an older comment): only the tombstone, nothing streamed.
    assert await remove(keys=k, args=[pad(12345), "12345", "v1", 2, 600]) == 0
    assert [s(m) for m in await redis.zrange(keys.tombstones("v1"), 0, -1)] == [f"{shadowed.id}:u1", "12345"]
    assert await redis.xlen(keys.stream_of("v1")) == 4
    assert await redis.ttl(keys.tombstones("v1")) > 0


# -- presence_report.lua --------------------------------------------------------------------------


async def test_presence_report_sums_live_counts_and_drops_expired_ones(redis: Any, keys: Keys) -> None:
    report = scripts.register(redis, "presence_report")
    k = [keys.presence("v1")]
    assert await report(keys=k, args=["a", 3, 60_000, "0"]) == 3
    assert await report(keys=k, args=["b", 4, 60_000, "0"]) == 7
    assert await report(keys=k, args=["c", 0, 60_000, "1"]) == 7  # read only: nothing written
    assert set(await redis.hkeys(keys.presence("v1"))) == {b"a", b"b"}
    await redis.hset(keys.presence("v1"), {"dead": f"5:{now_ms() - 1000}"})  # expired a second ago
    assert await report(keys=k, args=["c", 0, 60_000, "1"]) == 7
    assert b"dead" in await redis.hkeys(keys.presence("v1"))  # a read leaves it
    assert await report(keys=k, args=["a", 0, 60_000, "0"]) == 4  # 0 withdraws; a write sweeps
    assert set(await redis.hkeys(keys.presence("v1"))) == {b"b"}
    assert await redis.pttl(keys.presence("v1")) > 60_000


# -- mode_propose.lua -----------------------------------------------------------------------------


async def test_mode_propose_changes_only_a_current_view_after_the_dwell(redis: Any, keys: Keys) -> None:
    propose = scripts.register(redis, "mode_propose")
    k, ch = [keys.mode("v1")], keys.channel("v1")
    async with listening(redis, ch) as ps:
        assert s(await propose(keys=k, args=["push", "sampled", 0, ch, "to-sampled"])) == "sampled"
        assert await next_message(ps) == "to-sampled"
    mode, _, since = s(await redis.get(keys.mode("v1"))).partition(":")
    assert mode == "sampled" and abs(int(since) - now_ms()) < 60_000
    assert s(await propose(keys=k, args=["push", "cdn", 0, ch, "x"])) == "sampled"  # stale view
    assert s(await propose(keys=k, args=["sampled", "sampled", 0, ch, "x"])) == "sampled"  # no change
    assert s(await propose(keys=k, args=["sampled", "push", 60_000, ch, "x"])) == "sampled"  # dwell not over
    assert s(await propose(keys=k, args=["sampled", "push", 0, ch, "x"])) == "push"


# -- spread_propose.lua ---------------------------------------------------------------------------


async def test_spread_propose_changes_only_a_current_view(redis: Any, keys: Keys) -> None:
    propose = scripts.register(redis, "spread_propose")
    k = [keys.spread("v1")]
    assert await propose(keys=k, args=[1, 3, 60_000]) == 3
    assert await redis.get(keys.spread("v1")) == b"3" and 0 < await redis.pttl(keys.spread("v1")) <= 60_000
    assert await propose(keys=k, args=[1, 2, 60_000]) == 3  # stale view: told the count in force
    assert await propose(keys=k, args=[3, 4, 60_000]) == 4
    assert await propose(keys=k, args=[4, 1, 60_000]) == 1
    assert not await redis.exists([keys.spread("v1")])  # one shard: no key at all
    assert await propose(keys=k, args=[2, 5, 60_000]) == 1  # absent means 1


# -- shard_loads.lua ------------------------------------------------------------------------------


async def test_shard_loads_sums_live_counts_per_shard(redis: Any, keys: Keys) -> None:
    loads = scripts.register(redis, "shard_loads")
    k = [keys.shard_viewers("v1")]
    assert await loads(keys=k, args=[3]) == [0, 0, 0]
    live, dead = now_ms() + 60_000, now_ms() - 1000
    await redis.hset(
        keys.shard_viewers("v1"),
        {"rms-a/0": f"5:{live}", "rms-b/0": f"2:{live}", "rms-b/2": f"7:{live}", "rms-c/1": f"9:{dead}", "rms-c/4": f"3:{live}"},
    )
    # rms-c/1 expired; shard 4 is beyond the count in force.
    assert await loads(keys=k, args=[3]) == [7, 0, 7]
    assert await loads(keys=k, args=[5]) == [7, 0, 7, 0, 3]
    assert await redis.hlen(keys.shard_viewers("v1")) == 5  # read only


# -- snapshot_write.lua ---------------------------------------------------------------------------


async def test_snapshot_write_needs_the_lease(redis: Any, keys: Keys) -> None:
    write = scripts.register(redis, "snapshot_write")
    k = [keys.snapshot_lease("v1"), keys.snapshot("v1")]
    assert await write(keys=k, args=["rms-a", 60_000, '"e1"', "body one"]) == 1
    assert await redis.get(keys.snapshot("v1")) == b'"e1"\nbody one'
    assert await write(keys=k, args=["rms-b", 60_000, '"e2"', "body two"]) == 0  # a holds the lease
    assert await redis.get(keys.snapshot("v1")) == b'"e1"\nbody one'
    assert await write(keys=k, args=["rms-a", 60_000, '"e3"', "body three"]) == 1
    assert await redis.get(keys.snapshot_lease("v1")) == b"rms-a"
    assert 60_000 < await redis.pttl(keys.snapshot("v1")) <= 120_000


# -- sliding_window.lua ---------------------------------------------------------------------------


async def test_sliding_window_counts_all_or_nothing(redis: Any, keys: Keys) -> None:
    window = scripts.register(redis, "sliding_window")
    user, video = keys.limiter("user:u1", "user:u1"), keys.limiter("user:u1", "video:v1")
    assert [int(x) if i == 0 else s(x) for i, x in enumerate(await window(keys=[user], args=[2, 60_000]))] == [1, "0"]
    assert int((await window(keys=[user, video], args=[2, 60_000, 1, 60_000]))[0]) == 1
    allowed, retry_ms = await window(keys=[user, video], args=[5, 60_000, 1, 60_000])
    assert int(allowed) == 0 and 59_000 < float(s(retry_ms)) <= 60_000
    assert await redis.zcard(user) == 2  # the refusal counted nothing
    allowed, retry_ms = await window(keys=[user], args=[2, 60_000])
    assert int(allowed) == 0 and 0 < float(s(retry_ms)) <= 60_000
    assert 0 < await redis.pttl(user) <= 60_000


# -- moderation_write.lua ------------------------------------------------------------------------------


async def test_moderation_write_changes_logs_and_bumps_the_version(redis: Any, keys: Keys) -> None:
    write = scripts.register(redis, "moderation_write")
    k = [keys.bans(), keys.moderation_log("global"), keys.moderation_version()]
    assert await write(keys=k, args=["set", "global\nu1", '{"ban":1}', "0001:a", 2]) == 1
    assert await redis.hget(keys.bans(), "global\nu1") == b'{"ban":1}'
    assert await write(keys=k, args=["del", "global\nu9", "", "0002:b", 2]) == 0  # nothing there: not logged
    assert await write(keys=k, args=["set", "global\nu2", "{}", "0003:c", 2]) == 1
    assert await write(keys=k, args=["del", "global\nu1", "", "0004:d", 2]) == 1
    assert list(await redis.hkeys(keys.bans())) == [b"global\nu2"]
    assert [s(m) for m in await redis.zrange(keys.moderation_log("global"), 0, -1)] == ["0003:c", "0004:d"]  # log max 2
    assert await redis.get(keys.moderation_version()) == b"3"
    assert json.loads(s(await redis.hget(keys.bans(), "global\nu2"))) == {}
