"""Hostile-input bounds in cluster mode, in process against the session's redis-server:
guests of one address share the post limit across ingest processes (the Redis limiter),
and the cluster store gives a room's ring every author's shadowed comments, hot and cold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters.memory import InProcessBus, LocalBroker
from adapters.redis.hotstore import ClusterStore, HotStore
from adapters.redis.keys import Keys
from adapters.redis.ratelimit import RedisRateLimiter
from adapters.sqlite.store import SqliteStore
from domain.errors import RateLimited
from domain.identity import Identity
from domain.metrics import Metrics
from domain.settings import Settings
from ingest.service import CommentService
from tests.cluster.test_redis_parts import comment


async def test_guests_of_one_address_share_the_post_limit_across_ingest_processes(
    redis: Any, keys: Keys, tmp_path: Path
) -> None:
    settings = Settings(rate_limit="100/1s", guest_post_rate_limit="3/60s")
    async with SqliteStore.open(str(tmp_path / "c.sqlite3")) as store:
        # Two ingest processes: their own services and limiters, one Redis.
        one, two = (
            CommentService(settings, LocalBroker(store, bus), store, bus, RedisRateLimiter(redis, keys), Metrics())
            for bus in (InProcessBus(), InProcessBus())
        )
        guests = [Identity(f"g_{i}", f"G{i}", address="tag-of-one-64") for i in range(4)]
        for i, (svc, who) in enumerate(zip((one, two, one), guests)):
            await svc.post("v1", who, f"hello {i}")
        with pytest.raises(RateLimited) as refused:
            await two.post("v1", guests[3], "one too many")
        assert refused.value.retry_after >= 1
        # Another address, and a user who is not a guest, are not counted with them.
        await two.post("v1", Identity("g_other", "O", address="tag-of-another"), "hi")
        await one.post("v1", Identity("u1", "U"), "hi")


async def test_the_cluster_store_reads_every_author_s_shadowed_comments(redis: Any, keys: Keys, tmp_path: Path) -> None:
    hot = HotStore(redis, keys, hot_size=3)
    cs = [comment("v1", n, shadow=n % 2 == 1, author="mallory" if n % 2 else "alice") for n in range(6)]
    async with SqliteStore.open(str(tmp_path / "cold.sqlite3")) as cold:
        store = ClusterStore(hot, cold)
        for c in cs:
            await store.append(c)
        for c in cs[:3]:  # below the hot floor: what persist wrote to the cold store
            await cold.append(c)
        every = [c.id for c in cs]
        for viewer in (None, "alice"):
            assert [c.id for c in await store.latest("v1", 6, viewer, every_author=True)] == every
            assert [c.id for c in await store.before("v1", None, 6, viewer, every_author=True)] == every[::-1]
            assert [c.id for c in await store.after("v1", 0, 6, viewer, every_author=True)] == every
        assert [c.id for c in await store.latest("v1", 6)] == [c.id for c in cs if not c.shadow]
        # The bus's join and backfill read: below the floor too.
        assert [c.id for c in await store.recent_all("v1", 0, 10)] == every
