"""``livecomments cluster status``: each process of a ``cluster up``, its health and load.

It reads the ``cluster.json`` that the running ``cluster up`` keeps up to date in its run
directory (pids, restart counts, last exits) and asks each process:

- health: is the pid alive (not a zombie), and does it answer: ``/readyz`` of ingest and
  rms nodes, ``/healthz`` of the edge, ``PING`` to Redis; persist and moderate have no
  port, so a live pid is their health (their load below shows whether they keep up);
- load: CPU seconds and resident memory of its process group (``/proc/<pid>/stat``; the
  edge's group holds nginx' workers), plus per role: posts by status (ingest, from
  ``/metrics``), viewers, rooms, stream connections and deliveries (rms), the lag and
  pending entries of the ``persist`` and ``moderate`` consumer groups (Redis ``XINFO
  GROUPS``), clients, operations per second and memory (Redis ``INFO``).

Exit status: 0 when every process is healthy, 1 otherwise, 2 without a ``cluster.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def find_run_dir(given: str | None) -> Path:
    """``given``, or the newest ``livecomments-cluster-*`` (with a ``cluster.json``) in the
    temp dir, where ``cluster up`` makes one when not told ``--run-dir``."""
    if given:
        return Path(given)
    found = sorted(
        (p for p in Path(tempfile.gettempdir()).glob("livecomments-cluster-*") if (p / "cluster.json").is_file()),
        key=lambda p: (p / "cluster.json").stat().st_mtime,
    )
    if not found:
        raise FileNotFoundError(f"no livecomments-cluster-* run dir in {tempfile.gettempdir()}; pass --run-dir")
    return found[-1]


# -- processes -----------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def usage(pid: int | None) -> dict[str, Any]:
    """Whether ``pid`` runs, and the CPU time and memory of its process group (the
    processes ``cluster up`` starts lead groups of their own)."""
    if not pid:
        return {"alive": False}
    own = _stat(pid)
    if own is None or own[0] in ("Z", "X"):
        return {"alive": False}
    members = [own]
    if int(own[2]) == pid:  # a group leader: add the rest of its group
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != pid:
                st = _stat(int(entry.name))
                if st is not None and int(st[2]) == pid:
                    members.append(st)
    cpu = sum(int(st[11]) + int(st[12]) for st in members) / CLK_TCK  # utime + stime
    rss = sum(int(st[21]) for st in members) * PAGE
    return {"alive": True, "cpu_s": round(cpu, 2), "rss_mb": round(rss / 2**20, 1), "processes": len(members)}


def supervisor_running(pid: int | None) -> bool:
    if not pid:
        return False
    st = _stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    try:
        return b"cluster" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# -- asking the processes --------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: ``{'name{labels}': value}`` (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def _sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def node_load(role: str, metrics: dict[str, float]) -> dict[str, Any]:
    if role == "ingest":
        by_status = {
            k.split('status="', 1)[1].split('"', 1)[0]: int(v)
            for k, v in metrics.items()
            if k.startswith("livecomments_posts_total{")
        }
        return {"posts": sum(by_status.values()), "posts_by_status": by_status}
    if role == "rms":
        return {
            "viewers": int(_sum(metrics, "livecomments_viewers")),
            "rooms": int(_sum(metrics, "livecomments_rooms")),
            "connections": int(_sum(metrics, "livecomments_connections_total")),
            "deliveries": int(_sum(metrics, "livecomments_deliveries_total")),
            "bus_connected": bool(_sum(metrics, "livecomments_bus_connected")),
            "bus_channels": int(_sum(metrics, "livecomments_bus_channels")),
        }
    return {}


async def _http(
    client: Any, url: str, role: str, health_path: str, timeout_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    import httpx

    health: dict[str, Any]
    load: dict[str, Any] = {}
    try:
        with trio.fail_after(timeout_s):
            r = await client.get(url + health_path)
        health = {"ok": r.status_code == 200, "detail": f"{health_path.strip('/')} {r.status_code}"}
        if role in ("ingest", "rms"):
            with trio.fail_after(timeout_s):
                m = await client.get(url + "/metrics")
            if m.status_code == 200:
                load = node_load(role, parse_metrics(m.text))
    except (httpx.HTTPError, OSError, trio.TooSlowError) as e:
        health = {"ok": False, "detail": f"{health_path.strip('/')}: {type(e).__name__}"}
    return health, load


def _group(groups: Any, name: str) -> dict[str, Any] | None:
    for g in groups:
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in dict(g).items()}
        got = d.get("name")
        if (got.decode() if isinstance(got, bytes) else got) == name:
            return d
    return None


async def _redis(url: str, prefix: str, shards: int, timeout_s: float) -> dict[str, Any]:
    """PING, INFO and the consumer groups of the persist and moderate workers."""
    from adapters.redis.client import REDIS_ERRORS, open_redis
    from adapters.redis.keys import Keys
    from adapters.redis.moderation import GROUP as MODERATE_GROUP
    from adapters.redis.persist import GROUP as PERSIST_GROUP

    keys = Keys(prefix, shards)
    failures: tuple[type[BaseException], ...] = (*REDIS_ERRORS, trio.TooSlowError)
    out: dict[str, Any] = {"health": {"ok": False, "detail": "no answer"}, "load": {}, "groups": {}}
    try:
        with trio.fail_after(timeout_s * 2):
            async with open_redis(url, timeout_s=timeout_s) as r:
                pong = await r.ping()
                out["health"] = {"ok": True, "detail": pong.decode() if isinstance(pong, bytes) else str(pong)}
                info = await r.info()
                out["load"] = {
                    "clients": info.get("connected_clients"),
                    "ops_per_s": info.get("instantaneous_ops_per_sec"),
                    "commands": info.get("total_commands_processed"),
                    "memory": info.get("used_memory_human"),
                    "memory_bytes": info.get("used_memory"),
                }
                for role, group, streams in (
                    ("persist", PERSIST_GROUP, keys.streams()),
                    ("moderate", MODERATE_GROUP, keys.moderation_streams()),
                ):
                    lag: int | None = 0
                    pending = 0
                    length = 0
                    for stream in streams:
                        length += int(await r.xlen(stream))
                        try:
                            g = _group(await r.xinfo_groups(stream), group)
                        except REDIS_ERRORS:  # no stream yet
                            g = None
                        if g is None:
                            continue
                        pending += int(g.get("pending") or 0)
                        glag = g.get("lag")
                        lag = None if lag is None or glag is None else lag + int(glag)
                    out["groups"][role] = {"stream_entries": length, "lag": lag, "pending": pending}
    except failures as e:
        out["health"] = {"ok": False, "detail": f"{type(e).__name__}: {e}"[:120]}
    return out


def processes(desc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every process of ``cluster.json``: Redis (when started there, or given), the nodes, the edge."""
    procs: list[dict[str, Any]] = []
    redis = desc.get("redis") or {}
    procs.append({"name": "redis", "role": "redis", **redis, "url": redis.get("url", "")})
    procs.extend({**n} for n in desc.get("nodes", []))
    nginx = desc.get("nginx") or {}
    procs.append({"name": "nginx", "role": "edge", **nginx, "url": nginx.get("url") or desc.get("edge", "")})
    return procs


async def gather(desc: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any]:
    """The whole status as a dict (what ``--json`` prints)."""
    import httpx

    now = time.time()
    sup = desc.get("supervisor") or {}
    running = supervisor_running(sup.get("pid"))
    redis = desc.get("redis") or {}
    procs = processes(desc)
    results: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    redis_out: dict[str, Any] = {}

    async with httpx.AsyncClient(verify=False, timeout=timeout_s) as client:

        async def ask(p: dict[str, Any]) -> None:
            if p["role"] in ("ingest", "rms"):
                results[p["name"]] = await _http(client, p["url"], p["role"], "/readyz", timeout_s)
            elif p["role"] == "edge" and p.get("url"):
                results[p["name"]] = await _http(client, p["url"], "edge", "/healthz", timeout_s)

        async def ask_redis() -> None:
            redis_out.update(
                await _redis(redis.get("url", ""), redis.get("prefix", "lc"), int(redis.get("shards") or 1), timeout_s)
            )

        async with trio.open_nursery() as nursery:
            if redis.get("url"):
                nursery.start_soon(ask_redis)
            for p in procs:
                nursery.start_soon(ask, p)

    groups = redis_out.get("groups", {})
    rows = []
    healthy = True
    for p in procs:
        proc = usage(p.get("pid")) if p["role"] != "redis" or redis.get("started_here") else {"alive": None}
        if p["role"] == "redis":
            health, load = redis_out.get("health", {"ok": False, "detail": "no URL"}), redis_out.get("load", {})
        elif p["role"] in ("persist", "moderate", "forward"):
            health = {"ok": bool(proc["alive"]), "detail": "pid alive" if proc["alive"] else "pid gone"}
            load = groups.get(p["role"], {})
        else:
            health, load = results.get(p["name"], ({"ok": False, "detail": "not asked"}, {}))
        if proc.get("alive") is False:
            health = {"ok": False, "detail": "down" + (" (restarting)" if running else "")}
        healthy = healthy and bool(health.get("ok"))
        started = p.get("started_at")
        rows.append(
            {
                "name": p["name"],
                "role": p["role"],
                "pid": p.get("pid"),
                "url": p.get("url") or None,
                "alive": proc.get("alive"),
                "uptime_s": round(now - started, 1) if started and proc.get("alive") else None,
                "restarts": p.get("restarts", 0),
                "last_exit": p.get("last_exit"),
                "health": health,
                "cpu_s": proc.get("cpu_s"),
                "rss_mb": proc.get("rss_mb"),
                "load": load,
            }
        )
    return {
        "run_dir": desc.get("run_dir"),
        "edge": desc.get("edge"),
        "supervisor": {"pid": sup.get("pid"), "running": running},
        "healthy": healthy and running,
        "processes": rows,
    }


# -- printing ------------------------------------------------------------------------------------------


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _load_text(role: str, load: dict[str, Any]) -> str:
    if not load:
        return ""
    if role == "ingest":
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(load.get("posts_by_status", {}).items()))
        return f"posts {load.get('posts', 0)}" + (f" ({statuses})" if statuses else "")
    if role == "rms":
        return (
            f"viewers {load['viewers']}, rooms {load['rooms']}, connections {load['connections']},"
            f" deliveries {load['deliveries']}, bus {'up' if load['bus_connected'] else 'DOWN'}"
        )
    if role in ("persist", "moderate"):
        lag = load.get("lag")
        return f"lag {'?' if lag is None else lag}, pending {load.get('pending', 0)}, in stream {load.get('stream_entries', 0)}"
    if role == "redis":
        return f"clients {load.get('clients')}, ops/s {load.get('ops_per_s')}, memory {load.get('memory')}"
    return ""


def render(status: dict[str, Any]) -> str:
    sup = status["supervisor"]
    head = (
        f"cluster up pid {sup['pid']} {'running' if sup['running'] else 'NOT RUNNING (this is its last description)'}"
        f"; run dir {status['run_dir']}; edge {status['edge']}"
    )
    table = [("NAME", "ROLE", "PID", "UP", "RESTARTS", "HEALTH", "CPU_S", "RSS_MB", "LOAD")]
    for r in status["processes"]:
        restarts = str(r["restarts"]) + (f" (last: {r['last_exit']})" if r.get("last_exit") else "")
        health = ("ok" if r["health"].get("ok") else "FAIL") + f": {r['health'].get('detail', '')}"
        table.append(
            (
                r["name"], r["role"], str(r["pid"] or "-"), _duration(r["uptime_s"]), restarts, health,
                "-" if r["cpu_s"] is None else f"{r['cpu_s']:.2f}", "-" if r["rss_mb"] is None else f"{r['rss_mb']:.0f}",
                _load_text(r["role"], r["load"]),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    lines = [head]
    for row in table:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)


def main(args: argparse.Namespace) -> int:
    try:
        run_dir = find_run_dir(args.run_dir)
        desc = json.loads((run_dir / "cluster.json").read_text())
    except (OSError, ValueError) as e:
        print(f"livecomments cluster status: {e}", file=sys.stderr)
        return 2
    if "regions" in desc:  # cluster up --regions N: each region's own cluster.json
        return _regions(desc, args)
    status = trio.run(gather, desc, float(args.timeout_s))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(render(status))
    return 0 if status["healthy"] else 1


def _regions(desc: dict[str, Any], args: argparse.Namespace) -> int:
    """Every region's status (``--json``: {"regions": {name: status}, "links": ..., "healthy"})."""
    out: dict[str, Any] = {}
    for name, region in desc["regions"].items():
        sub = json.loads((Path(region["run_dir"]) / "cluster.json").read_text())
        out[name] = trio.run(gather, sub, float(args.timeout_s))
    healthy = all(s["healthy"] for s in out.values())
    if args.json:
        print(json.dumps({"regions": out, "links": desc.get("links", []), "healthy": healthy}, indent=2))
    else:
        for name, status in out.items():
            print(f"region {name}:")
            print(render(status))
        for link in desc.get("links", []):
            state = "down" if link["down"] else "up"
            print(f"link {link['from']} -> {link['to']}: {state}, {link['bytes']} bytes carried")
    return 0 if healthy else 1
