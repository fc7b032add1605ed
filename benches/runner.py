"""The orchestrator of one benchmark run: start the target, drive the load, collect figures.

Timeline of a steady run: start the server (pinned to the server CPU) and wait for
``/healthz``; connect every viewer; start posting; warm up; open the measured window
(server CPU/RSS and load generator CPU read from ``/proc``, viewers count frames and
sample latency only inside it); close the window; stop posting; let the healthy viewers
drain and check each got every comment exactly once; stop everything. A join storm
opens the window first and then connects everyone within ``join_window_s``; a reconnect
storm makes every viewer drop and resume halfway through the window. A viral run starts
the server with scaled-down tier thresholds, connects the ramp's first viewers, and in
the window steps the number of connected viewers up and back down, recording each second
the viewers, the server's mode (``/stats``) and the deliveries (``timeline``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benches import report, viral
from benches.cluster import ROLES, ClusterTarget, role_figures
from benches.loadgen import READ_SIZE, PublisherConfig, ViewerConfig, publisher_main, viewer_main
from benches.procstat import ProcSample, busy_pct, cpu_busy_times, pin, raise_nofile, sample, sample_sticky
from benches.scenarios import JOIN_STORM, RECONNECT_STORM, TIER_ENV, VIEWER_CLASSES, VIRAL, Scenario
from benches.targets import HOST, LivecommentsTarget, NchanTarget, Target, comment_text

FD_RESERVE = 200  # open files a server needs besides its viewers' sockets


@dataclass
class RunOptions:
    """Everything that shapes one run (the command line, parsed)."""

    scenario: Scenario
    target: str
    out_dir: Path
    transport: str = "sse"  # viewers' transport: "sse" or "ws" (livecomments only)
    command: str = ""
    warmup_s: float = 2.0
    poll_ms: float = 5.0
    payload_bytes: int = 250
    slow_bps: int = 16_384
    small_rcvbuf: int = 0
    flap_interval_s: float = 5.0
    flap_pause_s: float = 0.5
    loadgen_procs: int = 0
    viewers_per_proc: int = 10_000
    connect_rate: float = 2_000.0
    server_cpu: int | None = 0
    loadgen_cpu: int | None = 1
    server_cmd: str | None = None
    server_env: dict[str, str] = field(default_factory=dict)
    nchan_buffer: int = 1_000
    max_loadgen_util: float = 0.85
    drain_s: float = 5.0
    snapshot_pollers: int = 10  # viral: simulated viewers polling snapshot.json in cdn mode
    plots: bool = True
    progress: bool = True
    keep_workdir: bool = False
    # --target cluster: nodes of each kind, and where the load goes ("edge" or "nodes")
    rms: int = 2
    ingest: int = 2
    via: str = "edge"


class Worker:
    """A load generator child process and its control pipe."""

    def __init__(self, ctx: Any, fn: Callable[[Any, Connection], None], cfg: Any, name: str) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=fn, args=(cfg, child), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.name = name
        msg = self.recv(30.0)
        self.pid = int(msg[1])

    def send(self, msg: tuple[Any, ...]) -> None:
        self.conn.send(msg)

    def recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"load generator process {self.name} did not answer in {timeout:.0f} s")
        return self.conn.recv()

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(5)
        self.conn.close()


class Progress:
    """One status line on stderr: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        line = f"[{self.label}] {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _bar(frac: float, width: int = 20) -> str:
    frac = min(max(frac, 0.0), 1.0)
    filled = int(frac * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class Run:
    """State of one run; :meth:`execute` returns the result document."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.sc = opts.scenario
        self.notes: list[str] = []
        self.viewers: list[Worker] = []
        self.publisher: Worker | None = None
        self.samples: list[dict[str, float]] = []
        self.t_origin = time.monotonic()
        self.progress = Progress(opts.progress, f"{self.sc.name} -> {opts.target}")
        self.target: Target | None = None
        self.srv_pids: list[int] = []
        self.role_pids: dict[str, list[int]] = {}  # --target cluster: the processes of each role
        self.roles_now: dict[str, ProcSample] = {}  # their figures at the last sample
        self.last_cpu: dict[int, float] = {}  # CPU seconds of each role process at its last reading
        self.timeline: list[dict[str, Any]] = []
        self.tiers: dict[str, float] = {}

    # -- measurement helpers ------------------------------------------------------------

    def loadgen_pids(self) -> list[int]:
        pids = [os.getpid()] + [w.pid for w in self.viewers]
        if self.publisher is not None:
            pids.append(self.publisher.pid)
        return pids

    def take_sample(self, mark: str = "") -> tuple[ProcSample, ProcSample]:
        per_role: dict[str, float] = {}
        if self.role_pids:
            # A cluster: the server's figures are the sum of its roles' (so they add up exactly).
            self.roles_now = {role: sample_sticky(pids, self.last_cpu) for role, pids in self.role_pids.items()}
            parts = self.roles_now.values()
            srv = ProcSample(sum(p.cpu_s for p in parts), sum(p.rss_kb for p in parts), sum(p.hwm_kb for p in parts))
            per_role = {f"cpu_s:{role}": p.cpu_s for role, p in self.roles_now.items()}
        else:
            srv = sample(self.srv_pids)
        lg = sample(self.loadgen_pids())
        self.samples.append(
            {
                "t": round(time.monotonic() - self.t_origin, 3),
                "server_cpu_s": srv.cpu_s,
                "server_rss_kb": srv.rss_kb,
                "loadgen_cpu_s": lg.cpu_s,
                **per_role,
                **({"mark": 1.0} if mark else {}),
            }
        )
        return srv, lg

    def snap_viewers(self) -> dict[str, Any]:
        for w in self.viewers:
            w.send(("snap",))
        total: Counter[str] = Counter()
        by_class: Counter[str] = Counter()
        by_mode: Counter[str] = Counter()
        for w in self.viewers:
            s = w.recv(60.0)
            by_class.update(s.pop("frames_by_class"))
            by_mode.update(s.pop("viewers_by_mode", {}))
            total.update({k: v for k, v in s.items() if isinstance(v, int)})
        out: dict[str, Any] = dict(total)
        out["frames_by_class"] = dict(by_class)
        out["viewers_by_mode"] = dict(by_mode)
        return out

    def snap_publisher(self) -> dict[str, Any]:
        assert self.publisher is not None
        self.publisher.send(("snap",))
        return dict(self.publisher.recv(60.0))

    def tell_all(self, msg: tuple[Any, ...]) -> None:
        for w in self.viewers:
            w.send(msg)
        if self.publisher is not None:
            self.publisher.send(msg)

    # -- phases -------------------------------------------------------------------------

    def wait_connected(self, n: int) -> None:
        deadline = time.monotonic() + 30.0 + n / 500.0
        t0 = time.monotonic()
        while True:
            s = self.snap_viewers()
            self.take_sample()
            done = s.get("connected_once", 0)
            self.progress.show(
                f"connecting {_bar(done / max(n, 1))} {done:,}/{n:,} viewers, "
                f"{s.get('errors', 0)} errors, {time.monotonic() - t0:.1f} s"
            )
            if done >= n:
                return
            if time.monotonic() > deadline:
                self.notes.append(f"only {done} of {n} viewers connected within the set-up deadline")
                return
            time.sleep(0.2)

    def window(self, duration: float, storm_at: float | None, until_backlog: int = 0) -> dict[str, Any]:
        """Run the measured window; returns its start/end samples and storm time."""
        self.tell_all(("measure", True))
        cpus0 = cpu_busy_times()
        srv0, lg0 = self.take_sample("start")
        roles0, pidcpu0 = dict(self.roles_now), dict(self.last_cpu)
        t0 = time.monotonic()
        if until_backlog:
            for w in self.viewers:
                w.send(("connect",))
        storm_t = None
        last_frames, last_t = 0, t0
        pub: dict[str, Any] = {}
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            if storm_at is not None and storm_t is None and now - t0 >= storm_at:
                storm_t = time.monotonic()
                for w in self.viewers:
                    w.send(("storm",))
            srv, lg = self.take_sample()
            s = self.snap_viewers()
            pub = self.snap_publisher() if self.publisher else {}
            frames = s.get("frames", 0)
            rate = (frames - last_frames) / max(now - last_t, 1e-6)
            last_frames, last_t = frames, now
            el = now - t0
            extra = ""
            if until_backlog:
                extra = f" | with backlog {s.get('with_backlog', 0):,}/{until_backlog:,}"
            if storm_t is not None:
                extra = f" | storm: reconnected {s.get('storm_reconnected', 0):,}, live {s.get('storm_live', 0):,}"
            self.progress.show(
                f"measuring {_bar(el / duration)} {el:4.1f}/{duration:.0f} s | streaming {s.get('streaming', 0):,}"
                f" | posts {pub.get('ok', 0):,} | {rate:,.0f} deliveries/s"
                f" | server CPU {100 * (srv.cpu_s - srv0.cpu_s) / max(el, 1e-6):.0f}%"
                f" | loadgen CPU {100 * (lg.cpu_s - lg0.cpu_s) / max(el, 1e-6):.0f}%"
                f" | RSS {srv.rss_kb / 1024:.1f} MiB | errors {s.get('errors', 0)}{extra}"
            )
            if until_backlog and s.get("with_backlog", 0) >= until_backlog:
                break
            if el >= duration:
                if until_backlog:
                    self.notes.append(f"join storm: not every viewer had its backlog after {duration:.0f} s")
                break
        self.tell_all(("measure", False))
        srv1, lg1 = self.take_sample("end")
        roles1, pidcpu1 = dict(self.roles_now), dict(self.last_cpu)
        t1 = time.monotonic()
        cpu_busy = busy_pct(cpus0, cpu_busy_times())
        self.progress.show("window closed", force=True)
        return {
            "t0": t0, "t1": t1, "srv0": srv0, "srv1": srv1, "lg0": lg0, "lg1": lg1,
            "roles0": roles0, "roles1": roles1, "pidcpu0": pidcpu0, "pidcpu1": pidcpu1,
            "storm_t": storm_t, "cpu_busy": cpu_busy,
        }  # fmt: skip

    def set_active(self, n: int) -> None:
        """viral: keep ``n`` viewers connected in all, spread over the viewer processes."""
        for w, k in zip(self.viewers, _split(n, len(self.viewers))):
            w.send(("active", k))

    def viral_window(self) -> dict[str, Any]:
        """Step the viewers through the ramp; one ``timeline`` row per second."""
        assert self.target is not None and self.publisher is not None
        sc, port, video = self.sc, self.target.port, self.target.stream
        schedule = sc.ramp()
        pollers = viral.SnapshotPollers(port, video, self.opts.snapshot_pollers)
        self.tell_all(("measure", True))
        cpus0 = cpu_busy_times()
        srv0, lg0 = self.take_sample("start")
        roles0, pidcpu0 = dict(self.roles_now), dict(self.last_cpu)
        t0 = time.monotonic()
        step = 0
        wanted = schedule[0][1]
        prev_t, prev_cpu = t0, srv0.cpu_s
        prev_frames = self.snap_viewers().get("frames", 0)
        prev_ok = self.snap_publisher().get("ok", 0)
        prev_viewers = sc.ramp_from
        next_tick = t0 + 1.0
        try:
            while True:
                now = time.monotonic()
                while step < len(schedule) and now - t0 >= schedule[step][0]:
                    wanted = schedule[step][1]
                    self.set_active(wanted)
                    step += 1
                if now < next_tick:
                    due = next_tick if step >= len(schedule) else min(next_tick, t0 + schedule[step][0])
                    time.sleep(max(0.0, due - now))
                    continue
                while next_tick <= now:
                    next_tick += 1.0
                srv, _ = self.take_sample()
                s = self.snap_viewers()
                pub = self.snap_publisher()
                stats = viral.fetch_stats(port, video)
                now = time.monotonic()
                dt = max(now - prev_t, 1e-6)
                frames, ok, streaming = s.get("frames", 0), pub.get("ok", 0), s.get("streaming", 0)
                dps = (frames - prev_frames) / dt
                # Steps are applied just before a row is taken, so the second before it had the
                # old count and the next one the new: the larger of the two covers both ways.
                viewers_then = max(streaming, prev_viewers)
                mode = stats.get("mode") if stats else None
                row: dict[str, Any] = {
                    "t": round(now - t0, 2),
                    "viewers_wanted": wanted,
                    "viewers": streaming,
                    "server_viewers": stats.get("viewers") if stats else None,
                    "mode": mode,
                    "viewers_told": s.get("viewers_by_mode", {}),
                    "comments_per_s": round((ok - prev_ok) / dt, 1),
                    "server_comments_per_s": stats.get("comments_per_s") if stats else None,
                    "deliveries_per_s": round(dps, 1),
                    "deliveries_per_viewer_per_s": round(dps / viewers_then, 2) if viewers_then else None,
                    "server_cpu_pct": round(100 * (srv.cpu_s - prev_cpu) / dt, 1),
                }
                if mode == "cdn" and pollers.count:
                    polled = pollers.poll()
                    counted = polled.get("counted", 0)
                    row["snapshot"] = {
                        "polls": polled.get("polls", 0),
                        "not_modified": polled.get("not_modified", 0),
                        "errors": polled.get("errors", 0),
                        "missed": polled.get("missed", 0),
                        "comments_per_poller_per_s": round(polled.get("new_comments", 0) / counted / dt, 1)
                        if counted
                        else None,
                    }
                else:
                    pollers.pause()
                self.timeline.append(row)
                prev_t, prev_cpu, prev_frames, prev_ok, prev_viewers = now, srv.cpu_s, frames, ok, streaming
                el = now - t0
                self.progress.show(
                    f"viral {_bar(el / sc.duration_s)} {el:4.1f}/{sc.duration_s:.0f} s | viewers {streaming:,}"
                    f" (want {wanted:,}) | mode {mode or '?'} | {dps:,.0f} deliveries/s"
                    f" | posts {row['comments_per_s']:.0f}/s | server CPU {row['server_cpu_pct']:.0f}%"
                    f" | errors {s.get('errors', 0)}"
                )
                if el >= sc.duration_s:
                    break
        finally:
            pollers.close()
        self.tell_all(("measure", False))
        srv1, lg1 = self.take_sample("end")
        roles1, pidcpu1 = dict(self.roles_now), dict(self.last_cpu)
        t1 = time.monotonic()
        cpu_busy = busy_pct(cpus0, cpu_busy_times())
        self.progress.show("ramp done", force=True)
        if pollers.totals:
            self.notes.append(
                f"snapshot pollers ({pollers.count}) in cdn mode: {pollers.totals.get('polls', 0)} polls, "
                f"{pollers.totals.get('not_modified', 0)} not modified, {pollers.totals.get('errors', 0)} errors, "
                f"{pollers.totals.get('missed', 0)} comments missed between two polls"
            )
        return {
            "t0": t0, "t1": t1, "srv0": srv0, "srv1": srv1, "lg0": lg0, "lg1": lg1,
            "roles0": roles0, "roles1": roles1, "pidcpu0": pidcpu0, "pidcpu1": pidcpu1,
            "storm_t": None, "cpu_busy": cpu_busy,
        }  # fmt: skip

    def drain(self, expected: int, readers: int) -> None:
        """Wait (bounded) until the reading viewers have every comment posted, or stop progressing."""
        if expected <= 0 or readers <= 0:
            return
        t0 = time.monotonic()
        deadline = t0 + self.opts.drain_s
        last, last_change = -1, time.monotonic()
        got = 0
        while time.monotonic() < deadline:
            s = self.snap_viewers()
            got = s["frames_by_class"].get("healthy", 0) + s["frames_by_class"].get("flapping", 0)
            self.progress.show(f"draining {got:,}/{expected * readers:,} frames")
            if got >= expected * readers:
                return
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > 1.5:
                break
            time.sleep(0.2)
        self.notes.append(
            f"drain: the reading viewers had {got:,} of the {expected * readers:,} frames posted "
            f"{time.monotonic() - t0:.1f} s after the publisher stopped"
        )

    # -- the run ------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        opts, sc = self.opts, self.sc
        if sc.kind == VIRAL and opts.target == "nchan":
            raise ValueError(f"the {sc.name} scenario needs livecomments' fan-out tiers; {opts.target} has none")
        if opts.transport not in ("sse", "ws"):
            raise ValueError(f"unknown transport {opts.transport!r}: use sse or ws")
        if opts.transport == "ws" and opts.target == "nchan":
            raise ValueError(f"WebSocket viewers need livecomments; {opts.target} is measured with SSE only")
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        nofile_before, nofile_soft, nofile_hard = raise_nofile()
        orig_affinity = os.sched_getaffinity(0)
        server_cpu = opts.server_cpu if opts.server_cpu in orig_affinity else None
        loadgen_cpu = opts.loadgen_cpu if opts.loadgen_cpu in orig_affinity else None
        pinned = server_cpu is not None and loadgen_cpu is not None and server_cpu != loadgen_cpu
        if not pinned:
            self.notes.append("server and load generator could not be pinned to two different CPUs")
            server_cpu = loadgen_cpu = None
        requested = sc.viewers
        cap = nofile_hard - FD_RESERVE
        if sc.viewers > cap:
            self.notes.append(
                f"viewers capped at {cap:,} (requested {requested:,}): the open-file hard limit is "
                f"{nofile_hard:,} and one server process needs a descriptor per viewer"
            )
            sc = sc.with_overrides(viewers=cap)
            self.sc = sc
        workdir = Path(tempfile.mkdtemp(prefix=f"lcbench-{opts.target}-"))
        ctx = mp.get_context("fork")
        try:
            pin(loadgen_cpu)
            if opts.target == "nchan":
                self.target = NchanTarget(
                    workdir,
                    server_cpu,
                    sc.backlog,
                    opts.nchan_buffer,
                    join_storm=sc.kind == JOIN_STORM,
                    viewers=sc.viewers,
                )
            else:
                env = dict(opts.server_env)
                if sc.kind == VIRAL:
                    env = {**sc.tier_env(), **env}  # --server-env still wins
                    self.tiers = {k: float(env[name]) for k, name in TIER_ENV.items() if name in env}
                if opts.target == "cluster":
                    self.target = ClusterTarget(
                        workdir, server_cpu, rms=opts.rms, ingest=opts.ingest, via=opts.via, env=env
                    )
                else:
                    self.target = LivecommentsTarget(workdir, server_cpu, opts.server_cmd, env)
            target = self.target
            self.progress.show(f"starting {target.name}", force=True)
            target.start()
            self.srv_pids = target.server_pids()
            self.role_pids = target.roles()
            idle = self.take_sample()[0] if self.role_pids else sample(self.srv_pids)
            text = comment_text(opts.payload_bytes)
            pub_ports = target.publish_ports()
            # Round-robin over several ports (ingest nodes) needs a connection to each.
            connections = -(-sc.publishers // len(pub_ports)) * len(pub_ports)
            if connections != sc.publishers:
                self.notes.append(
                    f"{connections} publisher connections instead of {sc.publishers}: one or more "
                    f"to each of the {len(pub_ports)} ingest nodes"
                )
            spec = target.publish_spec(connections, text)
            preloaded = 0
            if sc.kind == JOIN_STORM and sc.backlog:
                preloaded = target.preload(spec, sc.backlog)
            self.publisher = Worker(
                ctx,
                publisher_main,
                PublisherConfig(
                    host=HOST,
                    port=pub_ports[0],
                    ports=pub_ports,
                    path=spec.path,
                    body_template=spec.body_template,
                    rate=sc.comments_per_s,
                    headers_per_connection=spec.headers_per_connection,
                    cpu=loadgen_cpu,
                    series_origin=self.t_origin,
                ),
                "publisher",
            )
            if opts.transport == "ws":
                assert isinstance(target, LivecommentsTarget)  # a ClusterTarget is one too
                viewer_path = target.ws_path(sc.backlog)
            else:
                viewer_path = target.viewer_path(sc.backlog)
            counts = sc.class_counts()
            nprocs = opts.loadgen_procs or max(1, math.ceil(sc.viewers / opts.viewers_per_proc))
            per_proc = {c: _split(n, nprocs) for c, n in counts.items()}
            join = sc.kind == JOIN_STORM
            total_rate = sc.viewers / sc.join_window_s if join else opts.connect_rate
            for i in range(nprocs):
                classes = [(c, per_proc[c][i]) for c in VIEWER_CLASSES if per_proc.get(c, [0] * nprocs)[i]]
                cfg = ViewerConfig(
                    host=HOST,
                    port=target.viewer_port(),
                    path=viewer_path,
                    classes=classes,
                    connect_rate=total_rate / nprocs,
                    poll_s=opts.poll_ms / 1000.0,
                    slow_bps=opts.slow_bps,
                    small_rcvbuf=opts.small_rcvbuf,
                    flap_interval_s=opts.flap_interval_s,
                    flap_pause_s=opts.flap_pause_s,
                    backlog_target=min(sc.backlog, preloaded) if join else 0,
                    track_ids=sc.kind == RECONNECT_STORM or counts.get("flapping", 0) > 0,
                    series_origin=self.t_origin,
                    cpu=loadgen_cpu,
                    seed=i,
                    transport=opts.transport,
                )
                self.viewers.append(Worker(ctx, viewer_main, cfg, f"viewers-{i}"))

            if join:
                self.publisher.send(("start",))
                win = self.window(sc.duration_s, None, until_backlog=sc.viewers)
            elif sc.kind == VIRAL:
                self.set_active(sc.ramp_from)
                self.wait_connected(sc.ramp_from)
                self.publisher.send(("start",))
                warm_end = time.monotonic() + opts.warmup_s
                while time.monotonic() < warm_end:
                    self.take_sample()
                    self.progress.show(f"warming up {warm_end - time.monotonic():.1f} s")
                    time.sleep(0.25)
                win = self.viral_window()
            else:
                for w in self.viewers:
                    w.send(("connect",))
                self.wait_connected(sc.viewers)
                self.publisher.send(("start",))
                warm_end = time.monotonic() + opts.warmup_s
                while time.monotonic() < warm_end:
                    self.take_sample()
                    self.progress.show(f"warming up {warm_end - time.monotonic():.1f} s")
                    time.sleep(0.25)
                storm_at = sc.duration_s / 2 if sc.kind == RECONNECT_STORM else None
                win = self.window(sc.duration_s, storm_at)

            problem = target.problem()
            self.publisher.send(("stop",))
            pub = self.publisher.recv(30.0)
            # viral: sampled and cdn modes leave comments out by design, so no delivery check.
            expected = -1 if join or sc.kind == VIRAL else pub["ok"] + preloaded
            readers = counts.get("healthy", 0) + counts.get("flapping", 0)
            self.drain(expected, readers)
            for w in self.viewers:
                w.send(("stop", expected))
            vres = [w.recv(60.0) for w in self.viewers]
            self.take_sample()
            self.progress.done()
            result = self.assemble(win, idle, pub, vres, preloaded, requested, counts, text)
            if problem:
                result["valid"] = False
                result["invalid_reasons"].append(problem)
            result["open_files"] = {"soft_before": nofile_before, "soft": nofile_soft, "hard": nofile_hard}
            result["pinning"] = {"server_cpu": server_cpu, "loadgen_cpu": loadgen_cpu, "pinned": pinned}
            result["machine"] = self.machine(win, result, server_cpu, loadgen_cpu)
            result["server"] = target.describe()
            result["server"]["log"] = target.log_tail(10)
            if sc.kind == VIRAL:
                self.add_viral(result)
            return result
        finally:
            for w in self.viewers:
                w.close()
            if self.publisher is not None:
                self.publisher.close()
            if self.target is not None:
                self.target.stop()
            try:
                os.sched_setaffinity(0, orig_affinity)
            except OSError:
                pass
            if opts.keep_workdir:
                self.notes.append(f"work directory kept: {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    def assemble(
        self,
        win: dict[str, Any],
        idle: ProcSample,
        pub: dict[str, Any],
        vres: list[dict[str, Any]],
        preloaded: int,
        requested: int,
        counts: dict[str, int],
        text: str,
    ) -> dict[str, Any]:
        """Fold the workers' counters and the /proc samples into the result document."""
        opts, sc = self.opts, self.sc
        assert self.target is not None
        window = win["t1"] - win["t0"]
        srv0, srv1, lg0, lg1 = win["srv0"], win["srv1"], win["lg0"], win["lg1"]
        server_cpu = srv1.cpu_s - srv0.cpu_s
        lg_cpu = lg1.cpu_s - lg0.cpu_s
        lg_util = lg_cpu / window if window > 0 else 0.0

        cls_names = [c for c in VIEWER_CLASSES if counts.get(c)]
        hists: dict[str, dict[int, int]] = {}
        lat_by_class: dict[str, Any] = {}
        agg: dict[str, Counter[str]] = {c: Counter() for c in cls_names}
        events: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for r in vres:
            errors.update(r["errors"])
        for c in cls_names:
            parts = [r["classes"][c] for r in vres if c in r["classes"]]
            hists[c] = report.merge_hists(p["hist"] for p in parts)
            lat_max = max((p["lat_max"] for p in parts), default=0.0)
            lat_by_class[c] = report.hist_percentiles(hists[c], lat_max)
            for p in parts:
                agg[c].update({k: v for k, v in p.items() if isinstance(v, int)})
                events.update(p["events"])
        deliveries = sum(a["frames_window"] for a in agg.values())
        frames_all = sum(a["frames"] for a in agg.values())
        bytes_all = sum(a["bytes"] for a in agg.values())
        reads_window = sum(a["reads_window"] for a in agg.values())
        streaming = sum(a["streaming"] for a in agg.values())
        headline = "healthy" if "healthy" in lat_by_class else (cls_names[0] if cls_names else "healthy")
        latency = lat_by_class.get(headline, report.hist_percentiles({}, 0.0))
        errors.update({f"publisher: {k}": v for k, v in pub["errors"].items()})
        series: list[int] = []
        for r in vres:
            for i, c in enumerate(r["series"]):
                if i >= len(series):
                    series.extend([0] * (i + 1 - len(series)))
                series[i] += c
        post_lat = pub["latencies_ms"]
        invalid = []
        if deliveries and lg_cpu > server_cpu:
            self.notes.append(
                f"the load generator spent more CPU per delivery than the server "
                f"({1e6 * lg_cpu / deliveries:.2f} vs {1e6 * server_cpu / deliveries:.2f} us); "
                "it is on its own core and not saturated, but it has little headroom"
            )
        if lg_util > opts.max_loadgen_util:
            invalid.append(
                f"load generator used {100 * lg_util:.0f}% of its core (limit {100 * opts.max_loadgen_util:.0f}%)"
            )
        result: dict[str, Any] = {
            "scenario": sc.name,
            "target": self.target.name,
            "transport": opts.transport,
            "description": sc.description,
            "command": opts.command,
            "date": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "viewers": sc.viewers,
            "viewers_requested": requested,
            "viewers_by_class": counts,
            "viewers_streaming": streaming,
            "comments_per_s": round(pub["ok_window"] / window, 2) if window > 0 else 0.0,
            "comments_per_s_target": sc.comments_per_s,
            "comments_posted": pub["ok"],
            "posts_skipped_late": pub["skipped"],
            "publisher_max_lag_s": round(pub["max_lag_s"], 3),
            "duration_s": round(window, 3),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / window, 1) if window > 0 else 0.0,
            "server_cpu_s": round(server_cpu, 3),
            "server_cpu_util_pct": round(100 * server_cpu / window, 1) if window > 0 else None,
            "cpu_us_per_delivery": round(1e6 * server_cpu / deliveries, 4) if deliveries else None,
            "cpu_us_per_comment": round(1e6 * server_cpu / pub["ok_window"], 3) if pub["ok_window"] else None,
            "server_rss_kb": srv1.rss_kb,
            "server_rss_idle_kb": idle.rss_kb,
            "server_rss_peak_kb": srv1.hwm_kb,
            "server_rss_kb_per_viewer": round((srv1.rss_kb - idle.rss_kb) / streaming, 2) if streaming else None,
            "latency_ms": latency,
            "latency_viewer_class": headline,
            "latency_ms_by_class": lat_by_class,
            "post_latency_ms": {
                "p50": _round(report.percentile(post_lat, 0.50)),
                "p99": _round(report.percentile(post_lat, 0.99)),
                "max": _round(max(post_lat) if post_lat else None),
                "samples": len(post_lat),
            },
            "post_statuses": {str(k): v for k, v in pub["statuses"].items()},
            "gaps": sum(a["gaps"] for a in agg.values()),
            "missed": sum(a["missed"] for a in agg.values()),
            "events": dict(events),
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "reconnects": {c: agg[c]["reconnects"] for c in cls_names},
            "server_closed": {c: agg[c]["server_closed"] for c in cls_names},
            "bytes_per_frame": round(bytes_all / frames_all, 1) if frames_all else None,
            "frames_per_read": round(deliveries / reads_window, 2) if reads_window else None,
            "valid": not invalid,
            "invalid_reasons": invalid,
            "loadgen": {
                "cpu_s": round(lg_cpu, 3),
                "cpu_util_pct": round(100 * lg_util, 1),
                "max_util_pct": round(100 * opts.max_loadgen_util),
                "viewer_processes": len(vres),
                "publisher_cpu_s_total": round(pub["cpu_s"], 3),
                "viewer_cpu_s_total": round(sum(r["cpu_s"] for r in vres), 3),
                "viewer_cpu_sys_s_total": round(sum(r["cpu_sys_s"] for r in vres), 3),
                "cpu_us_per_delivery": round(1e6 * lg_cpu / deliveries, 4) if deliveries else None,
            },
            "client": {
                "poll_ms": opts.poll_ms,
                "read_size": READ_SIZE,
                "latency_sampling": "first and last comment of each read, live comments only",
                "payload_bytes": opts.payload_bytes,
                "text_chars": len(text),
                "publishers": sc.publishers,
                "slow_bps": opts.slow_bps,
                "small_rcvbuf": opts.small_rcvbuf,
                "flap_interval_s": opts.flap_interval_s,
                "flap_pause_s": opts.flap_pause_s,
                "connect_rate": round(sc.viewers / sc.join_window_s) if sc.kind == JOIN_STORM else opts.connect_rate,
                "warmup_s": opts.warmup_s,
            },
            "notes": self.notes,
        }
        connect_lat = [x * 1000 for r in vres for x in r["connect_latency_s"]]
        result["connect_latency_ms"] = {
            "p50": _round(report.percentile(connect_lat, 0.5)),
            "p99": _round(report.percentile(connect_lat, 0.99)),
            "max": _round(max(connect_lat) if connect_lat else None),
        }
        if sc.kind == JOIN_STORM:
            at = [x for r in vres for x in r.get("backlog_at", [])]
            done = [x - win["t0"] for x in at if x is not None]
            result["backlog"] = preloaded
            result["join_with_backlog"] = len(done)
            result["join_all_backlog_s"] = round(max(done), 3) if done and len(done) == len(at) else None
            result["join_backlog_s"] = {
                "p50": _round(report.percentile(done, 0.5), 3),
                "p99": _round(report.percentile(done, 0.99), 3),
            }
        if sc.kind == RECONNECT_STORM and win["storm_t"] is not None:
            st = win["storm_t"]
            rec = [x for r in vres for x in r.get("storm_reconnect_at", [])]
            live = [x for r in vres for x in r.get("storm_live_at", [])]
            rec_ok = [x - st for x in rec if x is not None]
            live_ok = [x - st for x in live if x is not None]
            result["storm_at_s"] = round(st - win["t0"], 3)
            result["storm_reconnected"] = len(rec_ok)
            result["storm_live"] = len(live_ok)
            result["storm_reconnect_all_s"] = round(max(rec_ok), 3) if rec_ok and len(rec_ok) == len(rec) else None
            result["storm_live_all_s"] = round(max(live_ok), 3) if live_ok and len(live_ok) == len(live) else None
        if any("missing" in r["classes"].get(c, {}) for r in vres for c in ("healthy", "flapping")):
            checked = [c for c in ("healthy", "flapping") if c in agg]
            result["delivery_check"] = {
                "expected_per_viewer": pub["ok"] + preloaded,
                "classes": checked,
                "missing": sum(agg[c]["missing"] for c in checked),
                "duplicates": sum(agg[c]["duplicates"] for c in checked),
                "complete_viewers": sum(agg[c]["complete"] for c in checked),
                "viewers": sum(counts.get(c, 0) for c in checked),
            }
        if self.role_pids:
            r0, r1 = win["roles0"], win["roles1"]
            roles, total = role_figures(
                {role: r1[role].cpu_s - r0[role].cpu_s for role in self.role_pids},
                {role: r1[role].rss_kb for role in self.role_pids},
                pub["ok_window"],
                deliveries,
                window,
            )
            for role, fig in roles.items():
                fig["processes"] = len(self.role_pids[role])
            if isinstance(self.target, ClusterTarget):
                t = self.target
                result["cluster"] = {
                    "via": t.via,
                    "rms": t.rms,
                    "ingest": t.ingest,
                    "posts_accepted_by": {t.port_name(port): n for port, n in pub["ok_by_port"].items()},
                    "viewers_on": t.port_name(t.viewer_port()),
                }
                # Each node's share of its role (is the round-robin even? which rms has the room?)
                c0, c1 = win["pidcpu0"], win["pidcpu1"]
                for name, (role, pids) in t.nodes().items():
                    cpu = sum(c1.get(p, 0.0) - c0.get(p, 0.0) for p in pids)
                    roles[role].setdefault("nodes", {})[name] = round(cpu, 4)
            result["roles"] = roles
            result["roles_total"] = total
        result["series"] = {"deliveries_per_s": series, "samples": self.samples}
        if opts.plots:
            title = f"{sc.name} / {self.target.name}"
            if isinstance(self.target, ClusterTarget):
                title += f" via {self.target.via}"
            result["plots"] = report.write_plots(opts.out_dir, title, hists, series, self.samples)
            if self.role_pids and result["plots"]:
                result["plots"].append(report.write_roles_plot(opts.out_dir, title, result["roles"], ROLES))
        return result

    def add_viral(self, result: dict[str, Any]) -> None:
        """The ramp, the tiers, the per-second timeline, its summary and ``viral.png``."""
        sc = self.sc
        result["ramp"] = {
            "from": sc.ramp_from,
            "peak": sc.viewers,
            "steps": sc.ramp_steps,
            "hold_steps": sc.ramp_hold,
            "schedule": [{"t": t, "viewers": n} for t, n in sc.ramp()],
        }
        result["tiers"] = viral.summarize(self.timeline, self.tiers)
        # The viewers change through the window: RSS per viewer at its end means nothing.
        result["server_rss_kb_per_viewer"] = None
        result["timeline"] = self.timeline
        if self.opts.plots:
            assert self.target is not None
            title = f"{sc.name} / {self.target.name}"
            name = viral.write_plot(self.opts.out_dir, title, self.timeline, self.tiers, sc.ramp())
            if name:
                result.setdefault("plots", []).append(name)

    def machine(
        self, win: dict[str, Any], result: dict[str, Any], server_cpu: int | None, loadgen_cpu: int | None
    ) -> dict[str, Any]:
        """How busy each CPU was during the window, and how much of that was other processes."""
        busy: dict[int, float] = win["cpu_busy"]
        out: dict[str, Any] = {"cpu_busy_pct": busy, "loadavg": list(os.getloadavg())}
        if server_cpu is not None and loadgen_cpu is not None:
            srv_other = max(0.0, busy.get(server_cpu, 0.0) - (result["server_cpu_util_pct"] or 0.0))
            lg_other = max(0.0, busy.get(loadgen_cpu, 0.0) - result["loadgen"]["cpu_util_pct"])
            out["server_cpu_other_pct"] = round(srv_other, 1)
            out["loadgen_cpu_other_pct"] = round(lg_other, 1)
            for what, other in (("server", srv_other), ("load generator", lg_other)):
                if other > 10.0:
                    self.notes.append(
                        f"other processes used {other:.0f}% of the {what}'s CPU during the window: "
                        "throughput and latency are pessimistic, compare only within one session"
                    )
        return out


def _round(v: float | None, digits: int = 2) -> float | None:
    return None if v is None else round(v, digits)


def run(opts: RunOptions) -> dict[str, Any]:
    """Run one benchmark and return its result document (also written by the CLI)."""
    return Run(opts).execute()
