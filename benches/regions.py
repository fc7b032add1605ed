"""Two regions: what a comment costs on the link, and when it reaches the other region.

``python -m benches.regions [--comments 200] [--rate 20] [--delay-ms 40]`` starts
``livecomments cluster up --regions 2 --rms 1 --ingest 1`` (its own Redis per region),
one SSE viewer of a video in region a and one in region b, posts ``--comments`` comments
in region a at ``--rate`` per second, and prints: the time from a post's 201 to its
arrival at each viewer (median, p99), and the bytes the a->b and b->a links carried per
forwarded comment. Short by design (about 20 s)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from domain.identity import TokenIssuer

SECRET = "bench-regions-secret-0123456789abcdef"


async def viewer(http: httpx.AsyncClient, base: str, video: str, seen: dict[int, float], ready: trio.Event) -> None:
    async with http.stream("GET", f"{base}/v1/videos/{video}/events", headers={"Accept": "text/event-stream"}) as r:
        ready.set()
        eid, event = None, ""
        async for line in r.aiter_lines():
            if line.startswith("id:"):
                eid = int(line[3:].strip())
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line == "":
                if event == "comment" and eid is not None:
                    seen.setdefault(eid, time.monotonic())
                eid, event = None, ""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def measure(run_dir: Path, args: argparse.Namespace) -> None:
    info = json.loads((run_dir / "cluster.json").read_text())
    edges = {name: r["edge"] for name, r in info["regions"].items()}
    auth = {"Authorization": "Bearer " + TokenIssuer(SECRET).issue("bench", "bench", ("viewer",), ())}
    seen_a: dict[int, float] = {}
    seen_b: dict[int, float] = {}
    acked: dict[int, float] = {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http, trio.open_nursery() as nursery:
        for base, seen in ((edges["a"], seen_a), (edges["b"], seen_b)):
            ready = trio.Event()
            nursery.start_soon(viewer, http, base, "bench", seen, ready)
            await ready.wait()
        with trio.fail_after(30):  # b's presence must count the viewer before posting
            while (await http.get(f"{edges['b']}/v1/videos/bench/stats")).json().get("viewers", 0) < 1:  # noqa: ASYNC110 (polling a server)
                await trio.sleep(0.2)
        links0 = {f"{x['from']}->{x['to']}": x["bytes"] for x in json.loads((run_dir / "cluster.json").read_text())["links"]}
        for n in range(args.comments):
            r = await http.post(f"{edges['a']}/v1/videos/bench/comments", json={"text": f"bench {n}"}, headers=auth)
            if r.status_code == 201:
                acked[int(r.json()["id"])] = time.monotonic()
            await trio.sleep(1 / args.rate)
        with trio.move_on_after(30):
            while not (set(acked) <= set(seen_a) and set(acked) <= set(seen_b)):  # noqa: ASYNC110 (a bench's bounded poll)
                await trio.sleep(0.1)
        await trio.sleep(1.5)  # cluster.json's link counts are rewritten every 0.5 s
        links1 = {f"{x['from']}->{x['to']}": x["bytes"] for x in json.loads((run_dir / "cluster.json").read_text())["links"]}
        nursery.cancel_scope.cancel()
    for name, seen in (("a (same region)", seen_a), ("b (other region)", seen_b)):
        lat = [(seen[i] - t) * 1000 for i, t in acked.items() if i in seen]
        if not lat:
            print(f"viewer in {name}: nothing arrived of {len(acked)} acknowledged")
            continue
        print(f"post 201 -> viewer in {name}: {len(lat)}/{len(acked)} arrived, median {statistics.median(lat):.0f} ms, p99 {pct(lat, 0.99):.0f} ms")
    for link in sorted(links1):
        print(f"link {link}: {(links1[link] - links0.get(link, 0)) / max(1, len(acked)):.0f} bytes per comment")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benches.regions")
    p.add_argument("--comments", type=int, default=200)
    p.add_argument("--rate", type=float, default=20.0)
    p.add_argument("--delay-ms", type=float, default=40.0)
    args = p.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="lc-bench-regions-"))
    env = {**os.environ, "LIVECOMMENTS_JWT_SECRET": SECRET, "LIVECOMMENTS_RATE_LIMIT": "100000/1s", "LIVECOMMENTS_LOG_LEVEL": "warning"}
    cmd = [
        sys.executable, "-m", "livecomments", "cluster", "up", "--regions", "2", "--rms", "1", "--ingest", "1",
        "--edge-port", "0", "--run-dir", str(run_dir), "--region-delay-ms", str(args.delay_ms),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("edge: "):
                break
        trio.run(measure, run_dir, args)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
