"""Command line of the harness: ``livecomments bench`` and ``python -m benches``.

Example: ``livecomments bench --scenario popular --target nchan --duration 20 --out bench-out/p``
writes ``bench-out/p/result.json`` and PNG plots, and prints a table at the end.
``--target cluster --rms 2 --ingest 2 [--via nodes]`` measures a ``livecomments cluster up``
per role (benches/cluster.py).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benches.cluster import VIA
from benches.edge import EDGE, print_edge, run_edge
from benches.report import print_table
from benches.runner import RunOptions, run
from benches.scenarios import PRESETS, VIRAL, parse_mix, parse_tiers
from benches.targets import TargetUnavailable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="livecomments bench",
        description="Fan-out benchmark: SSE or WebSocket viewers, a paced publisher, livecomments or Nchan.",
        epilog="Presets: "
        + "; ".join(f"{s.name}: {s.description}" for s in PRESETS.values())
        + f"; {EDGE}: P8, --viewers pollers (5,000) of snapshot.json once a second through the nginx edge, "
        "the video in cdn mode; counts the requests that reach the origin",
    )
    p.add_argument("--scenario", required=True, choices=sorted([*PRESETS, EDGE]), help="named load shape")
    p.add_argument(
        "--target",
        choices=("livecomments", "nchan", "cluster"),
        default="livecomments",
        help="livecomments serve (default), nginx + Nchan, or a `livecomments cluster up` (see --rms)",
    )
    p.add_argument(
        "--transport",
        choices=("sse", "ws"),
        default="sse",
        help="viewers' transport: SSE (default) or WebSocket (ws; livecomments only)",
    )
    p.add_argument("--duration", type=float, help="measured window in seconds (preset default)")
    p.add_argument("--out", type=Path, help="output directory (default bench-out/<scenario>-<target>-<time>)")
    g = p.add_argument_group("load shape overrides")
    g.add_argument("--viewers", type=int, help="number of SSE viewers")
    g.add_argument("--rate", type=float, help="comments per second to post")
    g.add_argument(
        "--scale",
        type=float,
        help="multiply the preset's viewers (e.g. 0.01 for a tiny run; viral: and its thresholds)",
    )
    g.add_argument("--mix", help='viewer behaviours as fractions, e.g. "stalled=0.2,slow=0.1,flapping=0.05"')
    g.add_argument("--backlog", type=int, help="backlog per new viewer (join-storm preloads this many)")
    g.add_argument("--join-window", type=float, help="join-storm: seconds within which everyone connects")
    v = p.add_argument_group("viral (livecomments only; --viewers is the peak)")
    v.add_argument("--ramp-from", type=int, help="viewers at the start and the end of the ramp (preset: 50)")
    v.add_argument("--ramp-steps", type=int, help="equal steps from --ramp-from to the peak (preset: 10)")
    v.add_argument("--ramp-hold", type=int, help="extra steps held at the peak (preset: 3)")
    v.add_argument(
        "--tiers",
        help='server thresholds, e.g. "sampled_at=300,sampled_below=240,cdn_at=600,cdn_below=480,dwell_s=2,'
        "sample_target=20\" (unnamed ones keep the preset's)",
    )
    v.add_argument("--snapshot-pollers", type=int, default=10, help="viewers polling snapshot.json in cdn mode")
    e = p.add_argument_group(f"{EDGE} (--viewers is the number of pollers)")
    e.add_argument("--edge-connections", type=int, default=100, help="keep-alive connections the pollers share")
    c = p.add_argument_group("client settings (keep them the same across targets)")
    c.add_argument("--poll-ms", type=float, default=5.0, help="viewer sleep between polls, ms (default 5)")
    c.add_argument("--payload-bytes", type=int, default=250, help="size of a comment object (default 250)")
    c.add_argument("--publishers", type=int, help="keep-alive publisher connections (preset default, 1)")
    c.add_argument("--slow-bps", type=int, default=16_384, help="bytes/s a slow viewer reads (default 16384)")
    c.add_argument("--small-rcvbuf", type=int, default=0, help="SO_RCVBUF for slow/stalled viewers (0: kernel)")
    c.add_argument("--flap-interval", type=float, default=5.0, help="flapping viewers drop about every S s")
    c.add_argument("--flap-pause", type=float, default=0.5, help="flapping viewers come back after S s")
    c.add_argument("--connect-rate", type=float, default=2_000.0, help="initial connections/s (not join-storm)")
    c.add_argument("--warmup", type=float, default=2.0, help="seconds of posting before the window opens")
    c.add_argument("--loadgen-procs", type=int, default=0, help="viewer processes (0: one per 10,000)")
    s = p.add_argument_group("machine and server")
    s.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to (default 0)")
    s.add_argument("--loadgen-cpu", type=int, default=1, help="CPU the load generator is pinned to (default 1)")
    s.add_argument(
        "--server-cmd",
        help="livecomments command line; {python} {host} {port} {data_dir} are filled in "
        "(default: {python} -m livecomments serve --host {host} --port {port} --data-dir {data_dir})",
    )
    s.add_argument("--server-env", action="append", default=[], metavar="K=V", help="extra server environment")
    s.add_argument("--nchan-buffer", type=int, default=1_000, help="Nchan messages kept per channel")
    s.add_argument("--max-loadgen-util", type=float, default=0.85, help="loadgen CPU share that marks a run invalid")
    k = p.add_argument_group("--target cluster")
    k.add_argument("--rms", type=int, help="rms nodes (default 2)")
    k.add_argument("--ingest", type=int, help="ingest nodes (default 2)")
    k.add_argument(
        "--via",
        choices=VIA,
        help="edge: all load through the nginx edge (default); nodes: posts round-robin straight to the "
        "ingest nodes, viewers straight to the rms node the edge would pick for the video",
    )
    s.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    s.add_argument("--quiet", action="store_true", help="no progress line")
    s.add_argument("--keep-workdir", action="store_true", help="keep the server's temporary directory")
    return p


def options_from_args(args: argparse.Namespace, argv: list[str]) -> RunOptions:
    preset = PRESETS[args.scenario]
    viewers = args.viewers
    if viewers is None and args.scale is not None:
        viewers = max(1, round(preset.viewers * args.scale))
    mix = parse_mix(args.mix) if args.mix is not None else None
    ramp_from, tiers = args.ramp_from, None
    if preset.kind == VIRAL:
        tiers = dict(preset.tiers)
        if args.scale is not None:
            if ramp_from is None:
                ramp_from = max(1, round(preset.ramp_from * args.scale))
            for key in ("sampled_at", "sampled_below", "cdn_at", "cdn_below"):
                tiers[key] = max(1, round(tiers[key] * args.scale))
        tiers = parse_tiers(args.tiers or "", tiers)
    elif args.ramp_from is not None or args.tiers is not None:
        raise ValueError("--ramp-from and --tiers apply to the viral scenario only")
    sc = preset.with_overrides(
        viewers=viewers,
        comments_per_s=args.rate,
        duration_s=args.duration,
        mix=mix,
        backlog=args.backlog,
        join_window_s=args.join_window,
        publishers=args.publishers,
        ramp_from=ramp_from,
        ramp_steps=args.ramp_steps,
        ramp_hold=args.ramp_hold,
        tiers=tiers,
    )
    sc.class_counts()  # validates the mix
    if sc.kind == VIRAL and not 0 <= sc.ramp_from <= sc.viewers:
        raise ValueError(f"--ramp-from must be between 0 and the peak ({sc.viewers})")
    label = f"{args.target}-{args.via or 'edge'}" if args.target == "cluster" else args.target
    out = args.out or Path("bench-out") / f"{sc.name}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    env = {}
    for item in args.server_env:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"--server-env wants K=V, got {item!r}")
        env[k] = v
    return RunOptions(
        scenario=sc,
        target=args.target,
        transport=args.transport,
        out_dir=out,
        command="livecomments bench " + shlex.join(argv),
        warmup_s=args.warmup,
        poll_ms=args.poll_ms,
        payload_bytes=args.payload_bytes,
        slow_bps=args.slow_bps,
        small_rcvbuf=args.small_rcvbuf,
        flap_interval_s=args.flap_interval,
        flap_pause_s=args.flap_pause,
        loadgen_procs=args.loadgen_procs,
        connect_rate=args.connect_rate,
        server_cpu=args.server_cpu,
        loadgen_cpu=args.loadgen_cpu,
        server_cmd=args.server_cmd,
        server_env=env,
        nchan_buffer=args.nchan_buffer,
        max_loadgen_util=args.max_loadgen_util,
        snapshot_pollers=max(0, args.snapshot_pollers),
        plots=not args.no_plots,
        progress=not args.quiet,
        keep_workdir=args.keep_workdir,
        rms=args.rms or 2,
        ingest=args.ingest or 2,
        via=args.via or "edge",
    )


def main(argv: list[str]) -> int:
    """Run one benchmark; 0 on a valid run, 1 when the load generator was the bottleneck, 2 on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scenario == EDGE:
        return _edge(args, argv)
    if args.target != "cluster" and (args.via, args.rms, args.ingest) != (None, None, None):
        parser.error("--via, --rms and --ingest apply to --target cluster only")
    if args.target == "cluster" and min(args.rms or 2, args.ingest or 2) < 1:
        parser.error("--target cluster needs at least one rms and one ingest node")
    if args.target == "cluster" and args.server_cmd:
        parser.error("--server-cmd does not apply to --target cluster (use --server-env for its settings)")
    if PRESETS[args.scenario].kind == VIRAL and args.target == "nchan":
        print(
            f"livecomments bench: the {args.scenario} scenario runs against livecomments only: it drives the "
            f"server's fan-out tiers (push, sampled, cdn), which {args.target} does not have",
            file=sys.stderr,
        )
        return 2
    if args.transport == "ws" and args.target == "nchan":
        print(
            f"livecomments bench: --transport ws runs against livecomments only: {args.target} is measured "
            "with SSE viewers (use --transport sse)",
            file=sys.stderr,
        )
        return 2
    try:
        opts = options_from_args(args, argv)
    except ValueError as e:
        parser.error(str(e))
    return _run_and_report(lambda: run(opts), f"{opts.target} is not available", opts.out_dir, print_table)


def _run_and_report(
    go: Callable[[], dict[str, Any]], unavailable: str, out_dir: Path, show: Callable[[dict[str, Any]], None]
) -> int:
    """Run, write ``result.json``, print the table, notes and plots; the exit code."""
    try:
        result = go()
    except TargetUnavailable as e:
        print(f"livecomments bench: {unavailable}: {e}", file=sys.stderr)
        return 2
    except (TimeoutError, OSError) as e:
        print(f"livecomments bench: the run failed: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlivecomments bench: interrupted", file=sys.stderr)
        return 130
    path = out_dir / "result.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    show(result)
    for note in result.get("notes", []):
        print(f"note: {note}")
    print(f"result: {path}" + "".join(f"\nplot: {out_dir / p}" for p in result.get("plots", [])))
    return 0 if result["valid"] else 1


def _edge(args: argparse.Namespace, argv: list[str]) -> int:
    """``cdn-edge``: its own small run (benches/edge.py), livecomments and nginx only."""
    if args.target != "livecomments" or args.transport != "sse":
        print(f"livecomments bench: {EDGE} runs against livecomments behind its nginx edge only", file=sys.stderr)
        return 2
    args.out = args.out or Path("bench-out") / f"{EDGE}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.progress = not args.quiet
    command = "livecomments bench " + shlex.join(argv)
    return _run_and_report(lambda: run_edge(args, command), f"{EDGE} cannot run", args.out, print_edge)
