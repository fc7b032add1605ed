"""Dispatcher against Redis pub/sub on a local cluster (docs/performance.md, "Dispatcher").

For each bus: ``livecomments cluster up`` (its own Redis, 2 rms, 1 ingest), ``viewers`` SSE
viewers of one video through the edge, of whom ``churn`` (a fraction) are replaced every
second, and a poster at ``rate`` comments/s for ``seconds``. Reports post->delivery latency
(from sending the POST to a viewer reading the comment; it includes the reorder hold),
comments every steady viewer missed, and CPU ms per comment per role from ``/proc``.

    .venv/bin/python -m benches.dispatcher --seconds 15 --rate 20 --viewers 40 --churn 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from benches.procstat import cpu_seconds
from domain.identity import TokenIssuer

SECRET = "bench-dispatcher-secret-0123456789abcdef"
VIDEO = "benchvideo"


def start(bus: str, run_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    env = {**os.environ, "LIVECOMMENTS_BUS": bus, "LIVECOMMENTS_JWT_SECRET": SECRET, "LIVECOMMENTS_RATE_LIMIT": "1000/1s"}
    cmd = [sys.executable, "-m", "livecomments", "cluster", "up", "--rms", "2", "--ingest", "1", "--edge-port", "0",
           "--run-dir", str(run_dir)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            info = json.loads((run_dir / "cluster.json").read_text())
            if info.get("edge") and info.get("nginx"):
                return proc, info
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("cluster did not start")


def roles(info: dict[str, Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for n in info["nodes"]:
        out.setdefault(n["role"], []).append(n["pid"])
    for server in (info.get("redis") or {}).get("nodes", []) or [info["redis"]]:
        if server.get("pid"):
            out.setdefault("redis", []).append(server["pid"])
    return out


def cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {role: sum(cpu_seconds(p) for p in ps) for role, ps in pids.items()}


async def viewer(http: httpx.AsyncClient, edge: str, arrivals: dict[int, float], seen: list[int]) -> None:
    async with http.stream("GET", f"{edge}/v1/videos/{VIDEO}/events", headers={"Accept": "text/event-stream"}) as r:
        eid = None
        async for line in r.aiter_lines():
            if line.startswith("id:"):
                eid = int(line[3:].strip())
            elif line == "" and eid is not None:
                arrivals.setdefault(eid, time.monotonic())
                seen.append(eid)
                eid = None


async def measure(bus: str, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"lc-bench-{bus}-"))
    proc, info = start(bus, run_dir)
    edge = info["edge"] if isinstance(info["edge"], str) else info["edge"]["url"]
    pids = roles(info)
    issuer = TokenIssuer(SECRET)
    sent: dict[int, float] = {}
    arrivals: dict[int, float] = {}
    steady_seen: list[list[int]] = []
    try:
        limits = httpx.Limits(max_connections=args.viewers + 20)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http, trio.open_nursery() as nursery:
            scopes: list[trio.CancelScope] = []

            def spawn(steady: bool) -> None:
                scope = trio.CancelScope()
                seen: list[int] = []
                if steady:
                    steady_seen.append(seen)
                else:
                    scopes.append(scope)

                async def run() -> None:
                    with scope:
                        try:
                            await viewer(http, edge, arrivals, seen)
                        except httpx.HTTPError:
                            pass

                nursery.start_soon(run)

            n_churn = int(args.viewers * args.churn)
            for i in range(args.viewers):
                spawn(steady=i < args.viewers - max(n_churn * 3, 1))
            await trio.sleep(3)  # rooms open (the dispatcher gates a new room ~1.2 s)
            cpu0, t0, trio_t0 = cpu(pids), time.monotonic(), trio.current_time()
            headers = [{"Authorization": f"Bearer {issuer.issue(f'u{u}', f'u{u}')}"} for u in range(20)]
            n = 0
            end = t0 + args.seconds
            next_churn = t0 + 1
            while time.monotonic() < end:
                at = time.monotonic()
                r = await http.post(f"{edge}/v1/videos/{VIDEO}/comments", json={"text": f"c{n}"}, headers=headers[n % 20])
                if r.status_code == 201:
                    sent[int(r.json()["id"])] = at
                n += 1
                if time.monotonic() >= next_churn:
                    next_churn += 1
                    for _ in range(n_churn):
                        if scopes:
                            scopes.pop(random.randrange(len(scopes))).cancel()
                        spawn(steady=False)
                await trio.sleep_until(trio_t0 + n / args.rate)
            await trio.sleep(2)
            cpu1 = cpu(pids)
            nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = sorted((arrivals[i] - t) * 1000 for i, t in sent.items() if i in arrivals)
    missed = sum(len(set(sent) - set(s)) for s in steady_seen)
    per = {role: round((cpu1[role] - cpu0[role]) * 1000 / max(len(sent), 1), 2) for role in cpu1}
    return {
        "bus": bus,
        "accepted": len(sent),
        "latency_ms_p50": round(statistics.median(lat), 1) if lat else None,
        "latency_ms_p99": round(lat[int(len(lat) * 0.99) - 1], 1) if lat else None,
        "steady_viewers": len(steady_seen),
        "missed_by_steady_viewers": missed,
        "cpu_ms_per_comment": per,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--viewers", type=int, default=40)
    p.add_argument("--churn", type=float, default=0.1, help="fraction of viewers replaced every second")
    p.add_argument("--bus", action="append", choices=["redis", "dispatcher"])
    args = p.parse_args()
    for bus in args.bus or ["redis", "dispatcher"]:
        print(json.dumps(trio.run(measure, bus, args)), flush=True)


if __name__ == "__main__":
    main()
