"""Cluster-mode moderation on a real redis-server: the shared ban/settings/log store, two
ingest caches hearing each other's bans, and the automod queue through a Redis Stream."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry

from adapters.redis.broker import RedisBroker
from adapters.redis.client import open_redis
from adapters.redis.hotstore import HotStore
from adapters.redis.keys import Keys
from adapters.redis.moderation import RedisModerationSource, RedisModerationStore
from domain.errors import Forbidden
from domain.identity import Identity
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment
from domain.moderation import GLOBAL
from ingest.moderation.automod import Automod, ModerationMetrics
from ingest.moderation.bans import ModerationService
from ingest.moderation.rules import Limits, Rules, RuleSet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run scripts/setup.sh --system")
    port, workdir = _free_port(), tempfile.mkdtemp(prefix="lc-mod-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if b"PONG" in s.recv(64):
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def keys() -> Keys:
    return Keys(f"m{secrets.token_hex(4)}", shards=2)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    async with open_redis(redis_url) as client:
        yield client


HOST = Identity("host", "Host", frozenset({"viewer"}), frozenset({"v1"}))
ADMIN = Identity("adm", "Admin", frozenset({"viewer", "admin"}))


def who(user: str) -> Identity:
    return Identity(user, user)


async def test_the_store_keeps_bans_settings_and_the_log(redis: Any, keys: Keys) -> None:
    mod = ModerationService(RedisModerationStore(redis, keys))
    await mod.load()
    await mod.ban("v1", HOST, "u1", "shadow", "spam")
    await mod.ban(GLOBAL, ADMIN, "u2", "overt", None)
    await mod.set_settings("v1", HOST, 30)
    await mod.unban("v1", HOST, "u1")
    # A fresh cache (another process, or a restart) reads the same state.
    other = ModerationService(RedisModerationStore(redis, keys))
    await other.load()
    assert other.ban_of("v1", "u1") is None
    assert other.ban_of("v9", "u2") is not None
    assert other.slow_mode("v1") == 30
    with pytest.raises(Forbidden):
        other.policy("v1", who("u2"))
    entries = await other.log_page("v1", None, 10)
    assert [e.action for e in entries] == ["unban", "settings", "ban"]
    assert entries[2].reason == "spam" and entries[2].details == {"mode": "shadow"}
    page = await other.log_page("v1", entries[0].id, 1)
    assert [e.id for e in page] == [entries[1].id]
    assert [e.action for e in await other.log_page(GLOBAL, None, 10)] == ["ban"]
    await mod.set_settings("v1", HOST, 0)
    assert await RedisModerationStore(redis, keys).all_settings() == []


async def test_a_ban_on_one_ingest_reaches_the_others(redis: Any, keys: Keys) -> None:
    first = ModerationService(RedisModerationStore(redis, keys))
    second_store = RedisModerationStore(redis, keys)
    second = ModerationService(second_store)
    await first.load()
    await second.load()
    reloaded = trio.Event()

    async def on_change() -> None:
        await second.load()
        reloaded.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second_store.watch, on_change, 0.02)
        with trio.fail_after(5):
            while second_store._seen_version is None:  # noqa: ASYNC110 - the watcher's first poll
                await trio.sleep(0.01)
        await first.ban("v1", HOST, "spammer", "overt", None)
        with trio.fail_after(5):
            await reloaded.wait()
        nursery.cancel_scope.cancel()
    with pytest.raises(Forbidden):
        second.policy("v1", who("spammer"))


class Removed:
    def __init__(self) -> None:
        self.comments: list[tuple[Comment, str | None]] = []
        self.changed = trio.Event()

    async def remove(self, comment: Comment, *, actor: str, action: str = "delete", reason: str | None = None, details: Any = None, on_removed: Any = None) -> bool:
        self.comments.append((comment, reason))
        if on_removed is not None:
            on_removed()
        self.changed.set()
        return True


IDS = SnowflakeGenerator(9)


def live(text: str, video: str = "v1", user: str = "u1", *, shadow: bool = False) -> Comment:
    """A comment with an id of now (the append script refuses ids far from Redis' clock)."""
    now = time.time_ns() // 1_000_000
    return Comment(IDS.next_id(now), video, Author(user, user), text, now, shadow=shadow)


async def test_the_append_queues_comments_on_the_moderation_stream(redis: Any, keys: Keys) -> None:
    registry = CollectorRegistry()
    metrics = ModerationMetrics(registry)
    # Ingest's side: the append script puts every accepted comment that is not shadowed
    # on its video's moderation stream, in the same call.
    broker = RedisBroker(HotStore(redis, keys, moderation_max=1000), moderation_queued=metrics.queued.inc)
    removed = Removed()
    automod = Automod(Rules(RuleSet.parse("spamword\n"), Limits(new_account_s=0)), ModerationMetrics(CollectorRegistry()), remover=removed)
    source = RedisModerationSource(redis, keys, automod, consumer="worker-1", block_ms=50)
    posts = [("a", "hello", False), ("b", "SPAMWORD!", False), ("c", "fine", False), ("d", "spamword again", False),
             ("e", "spamword in the shadow", True)]  # fmt: skip
    made = [live(text, video, shadow=shadow) for video, text, shadow in posts]
    async with trio.open_nursery() as nursery:
        await nursery.start(source.run)
        for c in made:
            await broker.publish(c)
        with trio.fail_after(10):
            while len(removed.comments) < 2 or source.handled < 4:  # noqa: ASYNC110 - a stream consumer
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sorted(c.id for c, _ in removed.comments) == [made[1].id, made[3].id]
    assert {reason for _, reason in removed.comments} == {"blocked_word"}
    assert source.handled == 4  # the shadowed comment reached nobody: nothing to moderate
    assert metrics.queued._value.get() == 4
    for stream in keys.moderation_streams():  # handled, acknowledged and deleted
        assert await redis.xlen(stream) == 0


async def test_the_moderation_stream_is_capped(redis: Any, keys: Keys) -> None:
    one_shard = Keys(keys.prefix)
    hot = HotStore(redis, one_shard, moderation_max=10)
    for i in range(400):
        await hot.append(live(f"comment {i}", "v1"))
    # MAXLEN ~: trimmed in whole stream nodes (100 entries each by default), never to 400.
    assert 10 <= await redis.xlen(one_shard.moderation_stream(0)) <= 200
    assert await redis.xlen(one_shard.stream(0)) == 400  # persist's stream is not capped
