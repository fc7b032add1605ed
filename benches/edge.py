"""``cdn-edge`` (P8): many viewers polling ``snapshot.json`` through the nginx edge.

One ``livecomments serve`` (pinned to the server CPU) sits behind nginx configured from
``deploy/nginx/edge.conf`` (the same file ``livecomments cluster up`` renders, with the one
server as both the rms and the ingest upstream). The server's tier thresholds are set so
the video goes to ``cdn`` with the few SSE viewers this run holds; a publisher posts at a
low rate so the snapshot changes every second. Then ``--viewers`` pollers, each polling
once a second with ``If-None-Match`` like the page in cdn mode, run in a child process
(pinned to the load generator CPU) over a pool of keep-alive connections to the edge.

What counts is the edge's access log for the measured window: every poll is a line, and
the lines whose ``upstream=`` is not ``-`` are the requests that reached the origin. The
result: polls per second, 200/304/errors, origin requests per second (target: about 1),
poll latency, and the CPU of the server, nginx and the pollers (a run whose pollers are
saturated, or that saw errors, is marked invalid).
"""

from __future__ import annotations

import heapq
import json
import multiprocessing as mp
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benches.procstat import descendants, pin, raise_nofile, sample
from benches.runner import Progress
from benches.targets import HOST, LivecommentsTarget, TargetUnavailable, free_port, http_request

EDGE = "cdn-edge"
CDN_TIERS = {
    "LIVECOMMENTS_TIER_SAMPLED_AT": "1",
    "LIVECOMMENTS_TIER_SAMPLED_BELOW": "1",
    "LIVECOMMENTS_TIER_CDN_AT": "1",
    "LIVECOMMENTS_TIER_CDN_BELOW": "1",
    "LIVECOMMENTS_TIER_MIN_DWELL_S": "0.5",
}
UPSTREAM = re.compile(rb"upstream=(\S+)")


# -- the pollers (child process) -------------------------------------------------------------


class _Conn:
    __slots__ = ("buf", "poller", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.poller = -1  # the poller whose request is in flight, -1 when idle
        self.sent_at = 0.0


def _connect(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return s


def _response(buf: bytes) -> tuple[int, bytes | None, bool, int] | None:
    """(status, etag, connection closes, bytes used) of the first whole response in
    ``buf``, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].split(b"\r\n")
    status = int(head[0].split(b" ", 2)[1])
    length, etag, closes = 0, None, False
    for line in head[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"etag":
            etag = value.strip()
        elif name == b"connection":
            closes = value.strip().lower() == b"close"
    used = end + 4 + length
    return (status, etag, closes, used) if len(buf) >= used else None


def pollers_main(cfg: dict[str, Any], ctl: Connection) -> None:
    """``cfg["pollers"]`` pollers, each polling every ``interval_s`` over ``connections``
    keep-alive connections; runs until told to stop, then sends its counts."""
    pin(cfg.get("cpu"))
    raise_nofile()
    n, interval, port, path = cfg["pollers"], cfg["interval_s"], cfg["port"], cfg["path"].encode()
    conns = [_Conn(_connect(port)) for _ in range(min(cfg["connections"], n))]
    by_fd = {c.sock.fileno(): c for c in conns}
    ep = select.epoll()
    for c in conns:
        ep.register(c.sock.fileno(), select.EPOLLIN)
    etags: list[bytes | None] = [None] * n
    # Poller i is due at start + i * interval / n, then every interval: evenly spread.
    start = time.monotonic() + 0.1
    due = [(start + i * interval / n, i) for i in range(n)]
    heapq.heapify(due)
    counts: Counter[str] = Counter()
    lat_ms: list[float] = []
    idle = list(conns)
    measuring = False
    ctl.send(("ready", os.getpid()))

    def request(c: _Conn, i: int, now: float) -> None:
        req = b"GET " + path + b" HTTP/1.1\r\nHost: edge\r\n"
        etag = etags[i]
        if etag is not None:
            req += b"If-None-Match: " + etag + b"\r\n"
        c.sock.send(req + b"\r\n")  # a few hundred bytes: the socket always takes them
        c.poller, c.sent_at = i, now

    def reopen(c: _Conn) -> None:
        """nginx closes a keep-alive connection after ``keepalive_requests``: reconnect,
        and ask again for the poller whose answer did not come."""
        ep.unregister(c.sock.fileno())
        del by_fd[c.sock.fileno()]
        c.sock.close()
        c.sock, c.buf = _connect(port), b""
        by_fd[c.sock.fileno()] = c
        ep.register(c.sock.fileno(), select.EPOLLIN)
        counts["reconnects"] += 1
        if c.poller >= 0:
            request(c, c.poller, c.sent_at)

    while True:
        if ctl.poll():
            msg = ctl.recv()
            if msg[0] == "measure":
                measuring = bool(msg[1])
                if measuring:
                    counts.clear()
                    lat_ms.clear()
            elif msg[0] == "stop":
                ctl.send(("done", dict(counts), lat_ms))
                return
        now = time.monotonic()
        while idle and due and due[0][0] <= now:
            t, i = heapq.heappop(due)
            c = idle.pop()
            request(c, i, now)
            heapq.heappush(due, (max(t + interval, now), i))
            if now - t > interval / 2:
                counts["late"] += measuring
        wait = 0.01 if not due else max(0.0, min(0.01, due[0][0] - now))
        for fd, _ev in ep.poll(wait if idle else 0.01):
            c = by_fd[fd]
            try:
                data = c.sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                reopen(c)
                continue
            c.buf += data
            got = _response(c.buf)
            if got is None:
                continue
            status, etag, closes, used = got
            c.buf = c.buf[used:]
            if measuring:
                counts[str(status)] += 1
                lat_ms.append((time.monotonic() - c.sent_at) * 1000.0)
            if status == 200 and etag:
                etags[c.poller] = etag
            c.poller = -1
            if closes:
                reopen(c)
            idle.append(c)


# -- the run --------------------------------------------------------------------------------------


def _start_edge(workdir: Path, server_port: int) -> tuple[subprocess.Popen[bytes], int, Path]:
    from livecomments.cluster import edge_template, make_edge_dirs, render_edge

    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise TargetUnavailable("nginx is not installed (apt-get install nginx)")
    ndir = make_edge_dirs(workdir / "nginx")
    port = free_port()
    addr = f"{HOST}:{server_port}"
    conf = render_edge(edge_template(), run_dir=str(ndir), listen=f"{HOST}:{port}", rms=[addr], ingest=[addr])
    (ndir / "edge.conf").write_text(conf)
    cmd = [exe, "-p", str(ndir), "-c", str(ndir / "edge.conf"), "-e", str(ndir / "error.log")]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetUnavailable(f"nginx exited with {proc.returncode}: {(ndir / 'error.log').read_text()[-500:]}")
        try:
            if http_request(port, "GET", "/healthz", timeout=1.0)[0] == 200:
                return proc, port, ndir / "access.log"
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise TargetUnavailable("the nginx edge did not answer within 15 s")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (nginx's master and workers)."""
    return sample(descendants(pid)).cpu_s


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def _stream_viewer(port: int, path: str, stop: threading.Event) -> None:
    """One SSE viewer that reads and discards (it keeps the video's viewer count up)."""
    with socket.create_connection((HOST, port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                if not s.recv(65536):
                    return
            except TimeoutError:
                continue


def run_edge(args: Any, command: str) -> dict[str, Any]:
    pollers = args.viewers if args.viewers is not None else 5_000
    duration = args.duration if args.duration is not None else 20.0
    rate = args.rate if args.rate is not None else 10.0
    workdir = Path(tempfile.mkdtemp(prefix="lcbench-edge-"))
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(CDN_TIERS)
    for item in args.server_env:
        k, _, v = item.partition("=")
        env[k] = v
    target = LivecommentsTarget(workdir, args.server_cpu, args.server_cmd, env)
    stop_viewers = threading.Event()
    progress = Progress(args.progress, EDGE)
    threads: list[threading.Thread] = []
    nginx: subprocess.Popen[bytes] | None = None
    worker: Any = None
    try:
        target.start()
        video = target.stream
        nginx, edge_port, access_log = _start_edge(workdir, target.port)
        for _ in range(3):
            t = threading.Thread(target=_stream_viewer, args=(target.port, target.viewer_path(0), stop_viewers), daemon=True)
            t.start()
            threads.append(t)
        # Wait for cdn mode (the tier loop sees the viewers, then the dwell passes).
        deadline = time.monotonic() + 30
        mode = "push"
        while time.monotonic() < deadline and mode != "cdn":
            status, body = http_request(target.port, "GET", f"/v1/videos/{video}/stats")
            mode = json.loads(body).get("mode", "push") if status == 200 else mode
            time.sleep(0.1)
        if mode != "cdn":
            raise TargetUnavailable(f"the video did not go to cdn mode within 30 s (mode {mode})")
        spec = target.publish_spec(1, "edge bench comment")
        headers = dict(h.split(": ", 1) for h in spec.headers_per_connection[0])
        headers["Content-Type"] = "application/json"

        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        cfg = {
            "pollers": pollers,
            "connections": max(1, min(args.edge_connections, pollers)),
            "interval_s": 1.0,
            "port": edge_port,
            "path": f"/v1/videos/{video}/snapshot.json",
            "cpu": args.loadgen_cpu,
        }
        worker = ctx.Process(target=pollers_main, args=(cfg, child), daemon=True)
        worker.start()
        child.close()
        if not parent.poll(30):
            raise TimeoutError("the pollers did not start")
        poller_pid = int(parent.recv()[1])
        time.sleep(max(0.0, args.warmup) + 1.0)  # every poller has polled once: ETags set

        log_start = access_log.stat().st_size
        server_pids = target.server_pids()
        srv0, ngx0, pol0 = sample(server_pids), _tree_cpu(nginx.pid), sample([poller_pid])
        parent.send(("measure", True))
        t0 = time.monotonic()
        posted, seq = 0, 0
        next_post = t0
        while time.monotonic() - t0 < duration:
            now = time.monotonic()
            if now >= next_post:
                body = spec.body_template % {b"seq": seq, b"ms": int(time.time() * 1000)}
                seq += 1
                posted += http_request(target.port, "POST", spec.path, body, headers)[0] == 201
                next_post += 1.0 / rate
            else:
                time.sleep(min(0.05, next_post - now))
            el = time.monotonic() - t0
            progress.show(f"{el:4.1f}/{duration:.0f} s, {pollers:,} pollers, {posted} comments")
        t1 = time.monotonic()
        srv1, ngx1, pol1 = sample(server_pids), _tree_cpu(nginx.pid), sample([poller_pid])
        parent.send(("stop",))
        if not parent.poll(30):
            raise TimeoutError("the pollers did not report")
        _, counts, lat = parent.recv()
        progress.done()
        time.sleep(0.2)  # nginx writes its access log line after the response
        with open(access_log, "rb") as f:
            f.seek(log_start)
            lines = [ln for ln in f.read().splitlines() if b"/snapshot.json" in ln]
    finally:
        stop_viewers.set()
        if worker is not None and worker.is_alive():
            worker.terminate()
        if nginx is not None and nginx.poll() is None:
            nginx.terminate()
            nginx.wait(10)
        target.stop()
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = t1 - t0
    origin = [ln for ln in lines if (m := UPSTREAM.search(ln)) and m.group(1) != b"-"]
    polls = sum(v for k, v in counts.items() if k.isdigit())
    errors = counts.get("errors", 0) + sum(v for k, v in counts.items() if k.isdigit() and k not in ("200", "304"))
    poller_util = (pol1.cpu_s - pol0.cpu_s) / elapsed * 100.0
    notes: list[str] = []
    invalid: list[str] = []
    if poller_util > args.max_loadgen_util * 100:
        invalid.append(f"the pollers used {poller_util:.0f}% of their core: they, not the edge, set the pace")
    if errors:
        invalid.append(f"{errors} polls failed")
    if counts.get("late", 0) > polls * 0.01:
        notes.append(f"{counts['late']} polls started more than half an interval late")
    return {
        "scenario": EDGE,
        "target": "livecomments",
        "description": "P8: cdn mode behind the nginx edge, pollers of snapshot.json",
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "pollers": pollers,
        "poll_interval_s": 1.0,
        "edge_connections": cfg["connections"],
        "duration_s": round(elapsed, 3),
        "comments_posted": posted,
        "comments_per_s": round(posted / elapsed, 2),
        "polls": polls,
        "polls_per_s": round(polls / elapsed, 1),
        "statuses": {k: v for k, v in counts.items() if k.isdigit()},
        "edge_log_lines": len(lines),
        "origin_requests": len(origin),
        "origin_requests_per_s": round(len(origin) / elapsed, 2),
        "poll_latency_ms": {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99), "max": _pct(lat, 1.0)},
        "server_cpu_s": round(srv1.cpu_s - srv0.cpu_s, 2),
        "nginx_cpu_s": round(ngx1 - ngx0, 2),
        "pollers_cpu_util_pct": round(poller_util, 1),
        "errors": errors,
        "notes": notes,
        "invalid_reasons": invalid,
        "valid": not invalid,
    }


def print_edge(r: dict[str, Any]) -> None:
    rows = [
        ("scenario / target", f"{r['scenario']} / {r['target']}"),
        ("pollers (interval)", f"{r['pollers']:,} ({r['poll_interval_s']} s) over {r['edge_connections']} connections"),
        ("polls/s", f"{r['polls_per_s']:,}"),
        ("statuses", ", ".join(f"{k}: {v:,}" for k, v in sorted(r["statuses"].items()))),
        ("origin requests (per s)", f"{r['origin_requests']} ({r['origin_requests_per_s']})"),
        ("comments/s", f"{r['comments_per_s']}"),
        ("poll latency ms p50/p99/max", "/".join(str(r["poll_latency_ms"][k]) for k in ("p50", "p99", "max"))),
        ("CPU s server / nginx", f"{r['server_cpu_s']} / {r['nginx_cpu_s']}"),
        ("pollers CPU % of a core", f"{r['pollers_cpu_util_pct']}"),
        ("errors", f"{r['errors']}"),
        ("valid", "yes" if r["valid"] else "no: " + "; ".join(r["invalid_reasons"])),
    ]
    width = max(len(k) for k, _ in rows) + 2
    print("-" * (width + 30))
    for k, v in rows:
        print(f"{k:<{width}}{v}")
    print("-" * (width + 30))
