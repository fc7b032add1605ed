"""The cluster's write path, per role: CPU and Redis commands per accepted comment.

Starts ``livecomments cluster up --rms 1 --ingest 1`` (its own Redis, persist and
moderate workers, the nginx edge) in a temporary run directory, posts comments at a
fixed rate over keep-alive connections (the paced publisher of ``benches.loadgen``, one
user per connection, on its own CPU) straight at the ingest node or through the edge,
and reports for the measured window:

- accepted posts per second, post latency p50 / p99;
- CPU ms per accepted comment of each role (ingest, persist, moderate, Redis, rms, edge),
  from ``/proc/<pid>/stat`` utime + stime before and after the window;
- Redis commands per accepted comment, by command: all of them (``INFO commandstats``
  deltas, which count the commands scripts run too) and the ones clients sent, i.e.
  round trips (``MONITOR`` for 2 s after the window, script calls left out);
- how many of the posts the ingest node served on the lean front door and how many it
  handed to Hypercorn (``livecomments_posts_served_total{path}``);
- with ``--profile DIR``: a py-spy flame graph of the ingest, persist and moderate
  processes over the window (``pip install py-spy``).

    python -m benches.writepath --rate 500 --duration 15
    python -m benches.writepath --rate 500 --duration 15 --via edge --profile bench-out/wp

The cluster runs with the rate limits raised (one user per connection posts hundreds of
comments a second) and stops at the end (SIGTERM, as Ctrl-C would).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benches.loadgen import PublisherConfig, publisher_main
from benches.procstat import cpu_seconds

SECRET = "writepath-bench-secret-of-32-bytes-or-more"
VIDEO = "wp_bench"
ROLES = ("ingest", "persist", "moderate", "redis", "rms", "edge")


def redis_command(port: int, *args: str) -> bytes:
    """One command over a fresh connection (RESP), the raw bulk reply."""
    req = f"*{len(args)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf.startswith(b"$"):
                head, _, rest = buf.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[: int(head[1:])]
            elif buf.endswith(b"\r\n"):
                return buf
    return buf


def commandstats(port: int) -> dict[str, int]:
    """calls per command from ``INFO commandstats`` (``cmdstat_xadd:calls=3,...``)."""
    out: dict[str, int] = {}
    for line in redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            fields = dict(kv.split("=", 1) for kv in rest.split(","))
            out[name[len("cmdstat_") :]] = int(fields["calls"])
    return out


def monitor(port: int, seconds: float) -> dict[str, int]:
    """Commands clients sent (not those scripts ran) for ``seconds``, from ``MONITOR``:
    a script's own calls show as ``[0 lua]`` and are left out."""
    counts: dict[str, int] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"MONITOR\r\n")
        s.settimeout(0.2)
        buf = b""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                break
            buf += chunk
        for line in buf.split(b"\r\n"):
            if not line.startswith(b"+") or b" lua]" in line or b'"' not in line:
                continue
            name = line.split(b'"', 2)[1].decode().lower()
            counts[name] = counts.get(name, 0) + 1
    return counts


def posts_served(url: str) -> dict[str, float]:
    """``livecomments_posts_served_total`` by path (lean | asgi) from a node's /metrics."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    out: dict[str, float] = {}
    for line in buf.decode(errors="replace").splitlines():
        if line.startswith("livecomments_posts_served_total{"):
            path = line.split('path="', 1)[1].split('"', 1)[0]
            out[path] = float(line.rsplit(" ", 1)[1])
    return out


def nginx_pids(master: int) -> list[int]:
    pids = [master]
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    raw = f.read()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2 :].split()[1]) == master:
                pids.append(int(name))
    return pids


def role_pids(info: dict[str, Any]) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {r: [] for r in ROLES}
    for node in info["nodes"]:
        pids.setdefault(node["role"], []).append(int(node["pid"]))
    pids["redis"] = [int(info["redis"]["pid"])]
    pids["edge"] = nginx_pids(int(info["nginx"]["pid"]))
    return pids


def cpu_of(pids: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for role, ps in pids.items():
        total = 0.0
        for p in ps:
            try:
                total += cpu_seconds(p)
            except OSError:
                pass
        out[role] = total
    return out


def start_cluster(run_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    cmd = [sys.executable, "-m", "livecomments", "cluster", "up", "--rms", "1", "--ingest", "1",
           "--edge-port", "0", "--run-dir", str(run_dir)]  # fmt: skip
    log = open(run_dir.parent / "cluster-up.log", "wb")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    info_path = run_dir / "cluster.json"
    deadline = time.monotonic() + 90
    while not info_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("cluster up failed: " + (run_dir.parent / "cluster-up.log").read_text()[-3000:])
        time.sleep(0.2)
    time.sleep(0.3)  # written whole after start; give the writer a moment
    return proc, json.loads(info_path.read_text())


def stop_cluster(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benches.writepath", description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=500.0, help="comments per second to post (default 500)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive poster connections (default 8)")
    p.add_argument("--duration", type=float, default=15.0, help="measured window, s (default 15)")
    p.add_argument("--warmup", type=float, default=3.0, help="posting before the window, s (default 3)")
    p.add_argument("--via", choices=("ingest", "edge"), default="ingest", help="post at the ingest node or the edge")
    p.add_argument("--loadgen-cpu", type=int, default=1, help="CPU the poster is pinned to (default 1)")
    p.add_argument("--profile", type=Path, help="write py-spy flame graphs of ingest/persist/moderate here")
    p.add_argument("--profile-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph",
                   help="py-spy output format (raw: collapsed stacks, one line per stack)")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    args = p.parse_args(argv)

    from domain.identity import TokenIssuer

    work = Path(tempfile.mkdtemp(prefix="lc-writepath-"))
    run_dir = work / "run"
    env = {
        **os.environ,
        "LIVECOMMENTS_JWT_SECRET": SECRET,
        "LIVECOMMENTS_RATE_LIMIT": "1000000/1s",
        "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "1000000/1s",
        "PYTHONUNBUFFERED": "1",
    }
    proc, info = start_cluster(run_dir, env)
    result: dict[str, Any] = {}
    spies: list[subprocess.Popen[bytes]] = []
    try:
        pids = role_pids(info)
        redis_port = int(info["redis"]["url"].rsplit(":", 1)[1])
        target = info["edge"] if args.via == "edge" else next(n["url"] for n in info["nodes"] if n["role"] == "ingest")
        host, port = target.split("//", 1)[1].rsplit(":", 1)
        issuer = TokenIssuer(SECRET)
        headers = [[f"Authorization: Bearer {issuer.issue(f'wp{i}', f'Poster {i}')}"] for i in range(args.connections)]
        text = "x" * 120  # with the JSON around it, a comment record of about 250 bytes
        body = json.dumps({"text": "TEXT", "client_id": "CLIENT"}, separators=(",", ":")).encode()
        template = body.replace(b"CLIENT", b"c%(seq)d").replace(b"TEXT", b"%(seq)d " + text.encode())
        cfg = PublisherConfig(
            host=host, port=int(port), path=f"/v1/videos/{VIDEO}/comments", body_template=template,
            rate=args.rate, headers_per_connection=headers, cpu=args.loadgen_cpu,
        )  # fmt: skip
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        pub = ctx.Process(target=publisher_main, args=(cfg, child), daemon=True)
        pub.start()
        if parent.recv()[0] != "ready":
            raise RuntimeError("publisher did not start")
        parent.send(("start",))
        time.sleep(args.warmup)
        if args.profile:
            if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
                raise RuntimeError("py-spy is not installed (pip install py-spy)")
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            args.profile.mkdir(parents=True, exist_ok=True)
            for role in ("ingest", "persist", "moderate"):
                for pid in pids.get(role, []):
                    ext = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}[args.profile_format]
                    out = args.profile / f"{role}-{pid}.{ext}"
                    spies.append(subprocess.Popen(
                        [spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)), "--rate", "200",
                         "--nonblocking", "-f", args.profile_format, "-o", str(out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    ))  # fmt: skip
        ingest_url = next(n["url"] for n in info["nodes"] if n["role"] == "ingest")
        served0 = posts_served(ingest_url)
        cmds0 = commandstats(redis_port)
        cpu0 = cpu_of(pids)
        parent.send(("snap",))
        ok0 = parent.recv()["ok"]
        parent.send(("measure", True))
        t0 = time.monotonic()
        time.sleep(args.duration)
        parent.send(("snap",))
        ok1 = parent.recv()["ok"]
        elapsed = time.monotonic() - t0
        cpu1 = cpu_of(pids)
        cmds1 = commandstats(redis_port)
        served1 = posts_served(ingest_url)
        # Round trips: what the clients sent (MONITOR leaves out what scripts ran), while
        # posting goes on; MONITOR itself costs Redis CPU, so only after the window.
        parent.send(("snap",))
        okm0 = parent.recv()["ok"]
        sent = monitor(redis_port, 2.0)
        parent.send(("snap",))
        okm1 = parent.recv()["ok"]
        parent.send(("measure", False))
        parent.send(("stop",))
        pub_result = parent.recv()
        pub.join(10)
        for s in spies:
            s.wait(60)
        accepted = ok1 - ok0
        lat = pub_result["latencies_ms"]
        per = {r: (cpu1[r] - cpu0[r]) * 1000.0 / max(accepted, 1) for r in cpu0}
        calls = {c: cmds1.get(c, 0) - cmds0.get(c, 0) for c in cmds1}
        calls = {c: n for c, n in sorted(calls.items(), key=lambda x: -x[1]) if n > 0}
        write_path = sum(per[r] for r in ("ingest", "persist", "moderate", "redis")) + (
            per["edge"] if args.via == "edge" else 0.0
        )
        result = {
            "command": "python -m benches.writepath " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(),
            "via": args.via,
            "rate": args.rate,
            "connections": args.connections,
            "window_s": round(elapsed, 2),
            "accepted": accepted,
            "accepted_per_s": round(accepted / elapsed, 1),
            "statuses": pub_result["statuses"],
            "errors": pub_result["errors"],
            "ingest_posts_served_by_path": {p: int(served1.get(p, 0) - served0.get(p, 0)) for p in served1},
            "post_ms_p50": round(percentile(lat, 0.5), 2),
            "post_ms_p99": round(percentile(lat, 0.99), 2),
            "cpu_ms_per_comment": {r: round(v, 3) for r, v in per.items()},
            "write_path_cpu_ms_per_comment": round(write_path, 3),
            "poster_cpu_s": round(pub_result["cpu_s"], 2),
            "redis_calls_per_comment": {c: round(n / max(accepted, 1), 3) for c, n in calls.items()},
            "redis_calls_per_comment_total": round(sum(calls.values()) / max(accepted, 1), 3),
            "redis_client_commands_per_comment": {
                c: round(n / max(okm1 - okm0, 1), 3) for c, n in sorted(sent.items(), key=lambda x: -x[1])
            },
            "redis_client_commands_per_comment_total": round(sum(sent.values()) / max(okm1 - okm0, 1), 3),
        }
    finally:
        for s in spies:
            if s.poll() is None:
                s.kill()
        stop_cluster(proc)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"run directory kept: {work}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
