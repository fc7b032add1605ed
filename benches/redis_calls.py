"""CPU of one post's Redis call on the client side: coredis against the lean script pipe.

Starts its own redis-server (a free port, no persistence), then measures the CPU time of
this process (``time.process_time``) per call for: a coredis ``PING``; a ``PING`` on a
plain socket with a reader task (the floor for any Trio client); and
``RedisBroker.publish_within`` (the post script: rate limit, append, both streams,
publish) through coredis and through ``adapters.redis.lean.ScriptPipe``, one call at a
time and from 8 tasks at once (as 8 posters would).

    python -m benches.redis_calls --calls 3000
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from adapters.redis.broker import RedisBroker
from adapters.redis.client import open_redis
from adapters.redis.hotstore import HotStore
from adapters.redis.keys import Keys
from adapters.redis.lean import open_script_pipe
from adapters.redis.ratelimit import RedisRateLimiter
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment
from policy.rate import Rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def cpu_per_call(fn: Callable[[], Awaitable[object]], calls: int, tasks: int = 1) -> float:
    """ms of this process' CPU per call of ``fn``, from ``tasks`` tasks at once."""
    for _ in range(100):
        await fn()
    t0 = time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):

            async def loop() -> None:
                for _ in range(calls // tasks):
                    await fn()

            nursery.start_soon(loop)
    return round((time.process_time() - t0) * 1000 / calls, 4)


async def measure(url: str, calls: int) -> dict[str, float]:
    out: dict[str, float] = {}
    port = int(url.rsplit(":", 1)[1])
    async with open_redis(url) as redis, open_script_pipe(url) as pipe:
        out["coredis_ping"] = await cpu_per_call(redis.ping, calls)
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", port))
        waiting: list[trio.Event] = []

        async def reader() -> None:
            while True:
                data = await sock.recv(65536)
                for _ in range(data.count(b"\r\n")):
                    waiting.pop(0).set()

        async def raw_ping() -> None:
            done = trio.Event()
            waiting.append(done)
            await sock.send(b"*1\r\n$4\r\nPING\r\n")
            await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            out["plain_socket_ping"] = await cpu_per_call(raw_ping, calls)
            nursery.cancel_scope.cancel()
        sock.close()
        ids = SnowflakeGenerator(3)
        rule = Rate(1_000_000, 1.0)
        for name, lean in (("coredis", False), ("lean_pipe", True)):
            keys = Keys("bench-" + name)
            hot = HotStore(redis, keys, moderation_max=100_000, pipe=pipe if lean else None)
            broker = RedisBroker(hot, RedisRateLimiter(redis, keys))

            async def post(broker: RedisBroker = broker) -> None:
                now = time.time_ns() // 1_000_000
                c = Comment(ids.next_id(now), "v1", Author("u1", "U1"), "x" * 120, now)
                await broker.publish_within(c, [("user:u1", rule)])

            out[f"{name}_post"] = await cpu_per_call(post, calls)
            out[f"{name}_post_8_tasks"] = await cpu_per_call(post, calls, tasks=8)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.redis_calls", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    args = p.parse_args(argv)
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port, work = free_port(), tempfile.mkdtemp(prefix="lc-redis-calls-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        result = trio.run(measure, f"redis://127.0.0.1:{port}", args.calls)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"ms_cpu_per_call": result, "calls": args.calls, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
