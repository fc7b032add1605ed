"""What one presence report costs Redis: ``python -m benches.presence_cost [--calls N]``.

Starts a redis-server of its own, reports ``--calls`` viewer counts (one per video, as an
rms node does once a second for each of its rooms) through ``adapters.redis.presence``
over ``--concurrency`` connections, and prints the server's CPU per report (from /proc)
and reports per second. docs/scaling.md uses the figure for the presence line of the
fleet.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

import trio

from adapters.redis.client import open_redis
from adapters.redis.keys import Keys
from adapters.redis.presence import Presence


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(url: str, calls: int, concurrency: int) -> None:
    async with open_redis(url) as redis:
        presence = Presence(redis, Keys("bench", 1), "rms-bench", ttl_s=5.0)
        per = calls // concurrency

        async def worker(w: int) -> None:
            for i in range(per):
                await presence.report(f"v{w}-{i}", 100)

        async with trio.open_nursery() as nursery:
            for w in range(concurrency):
                nursery.start_soon(worker, w)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40000)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", d],
                                stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            before, t = cpu_s(proc.pid), time.monotonic()
            trio.run(run, f"redis://127.0.0.1:{port}", args.calls, args.concurrency)
            used, wall = cpu_s(proc.pid) - before, time.monotonic() - t
            print(f"{args.calls} reports in {wall:.2f} s ({args.calls / wall:,.0f}/s over {args.concurrency} connections); "
                  f"Redis CPU {used:.2f} s = {used / args.calls * 1e6:.1f} µs per report")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
