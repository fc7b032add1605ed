"""What ``LIVECOMMENTS_REDIS_WAIT_REPLICAS`` costs: the same paced posting with and without
``WAIT 1`` after each append, on a Redis Cluster (3 masters + 3 replicas) or a Sentinel
setup (a primary, a replica, 3 sentinels) started here (``livecomments.redis_local``).

``--via hotstore`` (default) times ``HotStore.append`` in this process: the Redis round
trip(s) alone. ``--via ingest`` starts one ``livecomments ingest`` node per setting and
times ``POST /v1/videos/busy/comments`` over ``--concurrency`` keep-alive connections:
what a poster sees. Posting is open-loop at ``--rate`` (latency counts from the moment a
post was due, so a stall shows), to one video (one master and its replica). CPU is read
from ``/proc`` for the masters (or primary), the replicas, and the client or ingest node,
over the measured window, and reported per accepted comment. The settings alternate for
``--rounds`` rounds, so drift hits both alike.

    python -m benches.redis_wait --topology cluster --via ingest --duration 10 --rate 500
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio

from adapters.redis.client import REDIS_ERRORS, open_redis
from adapters.redis.hotstore import HotStore, LateComment, NotReplicated
from adapters.redis.keys import Keys
from benches.loadgen import _response_complete
from benches.procstat import cpu_seconds
from benches.report import percentile
from domain.identity import TokenIssuer
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment
from livecomments.redis_local import LocalRedisCluster, LocalSentinel, RedisProcess, free_port, role_of

SECRET = "bench-secret-0123456789abcdef0123456789"
VIDEO = "busy"
SHARDS = 16


def cpu_of(servers: list[RedisProcess]) -> float:
    total = 0.0
    for s in servers:
        try:
            total += cpu_seconds(s.pid)
        except OSError:
            pass
    return total


async def paced(rate: float, duration: float, concurrency: int, one: Any) -> tuple[list[float], Counter[str]]:
    """Call ``one()`` ``rate`` times a second for ``duration`` s (at most ``concurrency`` at
    once); latency counts from when each call was due."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(concurrency)
    start = trio.current_time()
    n = int(rate * duration)

    async def run(due: float) -> None:
        async with limiter:
            outcome = await one()
        outcomes[outcome] += 1
        if outcome == "ok":
            latencies.append(trio.current_time() - due)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            due = start + i / rate
            await trio.sleep_until(due)
            nursery.start_soon(run, due)
    return latencies, outcomes


async def via_hotstore(url: str, wait: int, args: argparse.Namespace) -> dict[str, Any]:
    keys = Keys(f"bench{time.time_ns() % 100000}", SHARDS)
    gen = SnowflakeGenerator(7)
    async with open_redis(url) as redis:
        hot = HotStore(redis, keys, wait_replicas=wait, wait_timeout_ms=args.wait_timeout_ms, hot_size=1000)

        async def one() -> str:
            now = time.time_ns() // 1_000_000
            c = Comment(gen.next_id(now), VIDEO, Author("u", "U"), "x" * 120, now)
            try:
                await hot.append(c)
            except NotReplicated:
                return "not_replicated"
            except LateComment:
                return "late"  # stalled longer than the reorder window: a 503 for a poster
            except REDIS_ERRORS:
                return "error"
            return "ok"

        await paced(args.rate, 1.0, args.concurrency, one)  # warm-up: connections, script cache
        return await measure(lambda: paced(args.rate, args.duration, args.concurrency, one), [os.getpid()])


class IngestNode:
    def __init__(self, url: str, wait: int, args: argparse.Namespace, work: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "LIVECOMMENTS_REDIS_URL": url,
            "LIVECOMMENTS_REDIS_SHARDS": str(SHARDS),
            "LIVECOMMENTS_REDIS_PREFIX": f"bench{wait}{time.time_ns() % 100000}",
            "LIVECOMMENTS_REDIS_WAIT_REPLICAS": str(wait),
            "LIVECOMMENTS_REDIS_WAIT_TIMEOUT_MS": str(args.wait_timeout_ms),
            "LIVECOMMENTS_JWT_SECRET": SECRET,
            "LIVECOMMENTS_RATE_LIMIT": "1000000/1s",
            "LIVECOMMENTS_WORKER_ID": "1",
            "LIVECOMMENTS_DATA_DIR": str(work / f"data-{wait}"),
            "LIVECOMMENTS_LOG_LEVEL": "warning",
        }
        self.log = open(work / f"ingest-{wait}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "livecomments", "ingest", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    async def ready(self) -> None:
        async with httpx.AsyncClient() as http:
            with trio.fail_after(60):
                while True:
                    try:
                        if (await http.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    if self.proc.poll() is not None:
                        raise RuntimeError("the ingest node exited")
                    await trio.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class RawPoster:
    """One keep-alive HTTP/1.1 connection posting comments (raw bytes: a client much
    lighter than httpx, so the load generator does not compete with the node for CPU)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.head = (
            f"POST /v1/videos/{VIDEO}/comments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.stream: trio.SocketStream | None = None
        self.n = 0

    async def post(self) -> str:
        self.n += 1
        body = b'{"text":"bench comment %d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}' % self.n
        try:
            if self.stream is None:
                self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            await self.stream.send_all(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            buf = b""
            while (done := _response_complete(buf)) is None:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise OSError("closed")
                buf += chunk
        except (OSError, trio.BrokenResourceError):
            self.stream = None
            return "error"
        status, _, close = done
        if close:
            await self.stream.aclose()
            self.stream = None
        return "ok" if status == 201 else str(status)


async def via_ingest(url: str, wait: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    node = IngestNode(url, wait, args, work)
    try:
        await node.ready()
        issuer = TokenIssuer(SECRET)
        idle = [RawPoster(node.port, issuer.issue(f"u{i}", f"U{i}", ("viewer",), ())) for i in range(args.concurrency)]

        async def one() -> str:
            poster = idle.pop()  # the limiter in ``paced`` keeps one free for each call
            try:
                return await poster.post()
            finally:
                idle.append(poster)

        await paced(args.rate, 2.0, args.concurrency, one)  # warm-up
        return await measure(lambda: paced(args.rate, args.duration, args.concurrency, one), [node.proc.pid])
    finally:
        node.stop()


TOPOLOGY: dict[str, Any] = {}


async def measure(run: Any, client_pids: list[int]) -> dict[str, Any]:
    masters, replicas = TOPOLOGY["masters"], TOPOLOGY["replicas"]
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    m0, r0, c0 = cpu_of(masters), cpu_of(replicas), sum(cpu_seconds(p) for p in client_pids)
    latencies, outcomes = await run()
    m1, r1, c1 = cpu_of(masters), cpu_of(replicas), sum(cpu_seconds(p) for p in client_pids)
    wall = time.monotonic() - t0
    ok = max(1, outcomes["ok"])
    ms = [x * 1000 for x in latencies]
    return {
        "accepted_per_s": round(outcomes["ok"] / wall, 1),
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "outcomes": dict(outcomes),
        "latency_ms": {p: round(percentile(ms, q) or 0.0, 2) for p, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))}
        | {"max": round(max(ms, default=0.0), 2)},
        "cpu_ms_per_comment": {
            "masters": round((m1 - m0) * 1000 / ok, 4),
            "replicas": round((r1 - r0) * 1000 / ok, 4),
            "client" if client_pids == [os.getpid()] else "ingest": round((c1 - c0) * 1000 / ok, 4),
        },
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="lc-bench-wait-"))
    servers: LocalRedisCluster | LocalSentinel
    if args.topology == "cluster":
        servers = LocalRedisCluster(work / "redis", masters=3, replicas=1)
    else:
        servers = LocalSentinel(work / "redis", replicas=1, sentinels=3)
    servers.start()
    try:
        nodes = servers.nodes if isinstance(servers, LocalRedisCluster) else servers.servers
        TOPOLOGY["masters"] = [n for n in nodes if role_of(n.port) == "master"]
        TOPOLOGY["replicas"] = [n for n in nodes if role_of(n.port) == "replica"]
        rounds: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
        for _ in range(args.rounds):
            for wait in (0, 1):
                if args.via == "hotstore":
                    res = await via_hotstore(servers.url, wait, args)
                else:
                    res = await via_ingest(servers.url, wait, args, work)
                rounds[wait].append(res)
                print(f"wait_replicas={wait}: {json.dumps(res)}", flush=True)
        return {
            "command": "python -m benches.redis_wait " + " ".join(sys.argv[1:]),
            "topology": args.topology,
            "via": args.via,
            "rate": args.rate,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "wait_timeout_ms": args.wait_timeout_ms,
            "runs": {f"wait_replicas={w}": r for w, r in rounds.items()},
        }
    finally:
        servers.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benches.redis_wait", description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", choices=("cluster", "sentinel"), default="cluster")
    p.add_argument("--via", choices=("hotstore", "ingest"), default="hotstore")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    p.add_argument("--rate", type=float, default=500.0, help="posts per second (default 500)")
    p.add_argument("--concurrency", type=int, default=8, help="posts in flight at most (default 8)")
    p.add_argument("--wait-timeout-ms", type=int, default=100, help="LIVECOMMENTS_REDIS_WAIT_TIMEOUT_MS (default 100)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two settings (default 2)")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = trio.run(main_async, args)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
