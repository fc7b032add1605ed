"""The lean script pipe (adapters/redis/lean.py) against real redis-servers: scripts,
NOSCRIPT, concurrent calls sharing writes, an unanswered call, a restart, AUTH and SELECT."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from adapters.redis.client import REDIS_ERRORS, open_redis
from adapters.redis.lean import LuaScript, ReplyError, ScriptPipe, open_script_pipe, target_of
from tests.cluster.conftest import RedisServer, _ping, free_port

ECHO = LuaScript("-- echo\nreturn {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}")


async def test_a_script_runs_and_is_sent_whole_only_when_redis_lacks_it(redis_server: RedisServer, redis: Any) -> None:
    async with open_script_pipe(redis_server.url) as pipe:
        assert pipe is not None
        await redis.script_flush()
        before = await redis.info("commandstats")
        assert await pipe.call(ECHO, ["k"], ["a", 41]) == [b"k", b"a", 42]  # NOSCRIPT, then EVAL
        assert await pipe.call(ECHO, ["k"], ["b", 1]) == [b"k", b"b", 2]  # EVALSHA alone
        after = await redis.info("commandstats")
        calls = {n: after[f"cmdstat_{n}"]["calls"] - before.get(f"cmdstat_{n}", {"calls": 0})["calls"] for n in ("eval", "evalsha")}
        assert calls == {"eval": 1, "evalsha": 2}
        with pytest.raises(ReplyError, match="boom"):
            await pipe.call(LuaScript("return redis.error_reply('boom')"), [], [])
        assert await pipe.call(ECHO, ["k"], ["c", 2]) == [b"k", b"c", 3]  # an error reply leaves the connection usable
        assert pipe.connections == 1


async def test_concurrent_calls_get_their_own_answers(redis_server: RedisServer) -> None:
    async with open_script_pipe(redis_server.url) as pipe:
        assert pipe is not None
        got: dict[int, Any] = {}

        async def one(i: int) -> None:
            got[i] = await pipe.call(ECHO, [f"k{i}"], [f"v{i}", i])

        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(one, i)
        assert got == {i: [f"k{i}".encode(), f"v{i}".encode(), i + 1] for i in range(300)}
        assert pipe.connections == 1


async def test_an_unanswered_call_fails_and_the_next_one_reconnects(redis_server: RedisServer, redis: Any) -> None:
    async with open_script_pipe(redis_server.url, timeout_s=0.3) as pipe:
        assert pipe is not None
        assert await pipe.call(ECHO, ["k"], ["a", 1]) == [b"k", b"a", 2]
        await redis.client_pause(1500)  # Redis holds every client's commands for 1.5 s
        with pytest.raises(ConnectionError, match="no answer"):
            await pipe.call(ECHO, ["k"], ["b", 1])
        pipe.timeout_s = 5.0
        assert await pipe.call(ECHO, ["k"], ["c", 1]) == [b"k", b"c", 2]
        assert pipe.connections == 2


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


async def test_a_restarted_redis_is_an_outage_then_served_again(private_redis: RedisServer) -> None:
    async with open_script_pipe(private_redis.url) as pipe:
        assert pipe is not None
        assert await pipe.call(ECHO, ["k"], ["a", 1]) == [b"k", b"a", 2]
        private_redis.stop()
        for _ in range(3):
            with pytest.raises(REDIS_ERRORS):
                await pipe.call(ECHO, ["k"], ["b", 1])
        private_redis.start()
        assert await pipe.call(ECHO, ["k"], ["c", 1]) == [b"k", b"c", 2]  # the script is gone: EVAL again


@pytest.fixture
def redis_with_password() -> Iterator[str]:
    exe = shutil.which("redis-server")
    assert exe is not None
    port, workdir = free_port(), tempfile.mkdtemp(prefix="lc-auth-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir,
         "--requirepass", "s3cret"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _ping(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"redis://:s3cret@127.0.0.1:{port}/5"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_the_url_s_password_and_database_are_used(redis_with_password: str) -> None:
    async with open_script_pipe(redis_with_password) as pipe:
        assert pipe is not None
        await pipe.call(LuaScript("redis.call('SET', KEYS[1], ARGV[1]) return 1"), ["here"], ["yes"])
    async with open_redis(redis_with_password) as redis:
        assert await redis.get("here") == b"yes"  # in database 5
    target = target_of(redis_with_password)
    assert target is not None
    async with trio.open_nursery() as nursery:
        wrong = ScriptPipe(target.__class__(host=target.host, port=target.port, password="nope"), nursery)
        with pytest.raises(ConnectionError, match="AUTH"):
            await wrong.call(ECHO, ["k"], ["a", 1])
        await wrong.aclose()
        nursery.cancel_scope.cancel()


def test_no_pipe_for_urls_coredis_alone_speaks() -> None:
    async def main() -> None:
        for url in ("rediss://127.0.0.1:1", "redis+cluster://127.0.0.1:1"):
            async with open_script_pipe(url) as pipe:
                assert pipe is None

    trio.run(main)
