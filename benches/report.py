"""Turning raw counters into result figures: percentiles, the terminal table, PNG plots."""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Plots need matplotlib, which ``pip install livecomments`` does not bring: the bench extra does.
NO_PLOTS = "matplotlib is not installed: no plots (pip install 'livecomments[bench]')"

PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def merge_hists(hists: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for k, c in h.items():
            out[int(k)] = out.get(int(k), 0) + c
    return out


def hist_percentiles(hist: Mapping[int, int], lat_max: float) -> dict[str, float | None]:
    """p50/p90/p99/max in ms from a histogram of 1 ms bins (the bin's lower edge)."""
    total = sum(hist.values())
    out: dict[str, float | None] = {name: None for name, _ in PERCENTILES}
    out["max"] = round(lat_max, 1) if total else None
    out["samples"] = total
    if not total:
        return out
    keys = sorted(hist)
    for name, p in PERCENTILES:
        need = math.ceil(p * total)
        acc = 0
        for k in keys:
            acc += hist[k]
            if acc >= need:
                out[name] = float(k)
                break
    return out


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of a list; None when empty."""
    if not values:
        return None
    s = sorted(values)
    idx = min(len(s) - 1, max(0, math.ceil(p * len(s)) - 1))
    return s[idx]


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table_rows(r: Mapping[str, Any]) -> list[tuple[str, str]]:
    lat = r.get("latency_ms", {})
    rows: list[tuple[str, str]] = [
        ("scenario / target", f"{r['scenario']} / {r['target']}"),
        ("viewers (streaming at end)", f"{_fmt(r['viewers'])} ({_fmt(r.get('viewers_streaming'))})"),
        ("comments/s (target)", f"{_fmt(r['comments_per_s'])} ({_fmt(r.get('comments_per_s_target'))})"),
        ("deliveries (per s)", f"{_fmt(r['deliveries'])} ({_fmt(r.get('deliveries_per_s'))})"),
        ("server CPU s (% of a core)", f"{_fmt(r['server_cpu_s'])} ({_fmt(r.get('server_cpu_util_pct'), 1)}%)"),
        ("server CPU us / delivery", _fmt(r["cpu_us_per_delivery"], 3)),
        ("server RSS KiB (idle)", f"{_fmt(r['server_rss_kb'])} ({_fmt(r.get('server_rss_idle_kb'))})"),
        ("server RSS KiB / viewer", _fmt(r.get("server_rss_kb_per_viewer"), 2)),
        (
            "latency ms p50/p90/p99/max",
            "/".join(_fmt(lat.get(k), 0) for k in ("p50", "p90", "p99")) + f"/{_fmt(lat.get('max'), 0)}",
        ),
        (
            "post latency ms p50/p99",
            f"{_fmt(r.get('post_latency_ms', {}).get('p50'))}/{_fmt(r.get('post_latency_ms', {}).get('p99'))}",
        ),
        ("gaps / missed", f"{_fmt(r['gaps'])} / {_fmt(r.get('missed'))}"),
        ("errors", _fmt(r["errors"])),
        ("loadgen CPU % of a core", _fmt(r.get("loadgen", {}).get("cpu_util_pct"), 1)),
        ("valid", _fmt(r["valid"])),
    ]
    for cls, v in r.get("latency_ms_by_class", {}).items():
        if cls != "healthy" and v.get("samples"):
            rows.append((f"  {cls} latency p50/p99 ms", f"{_fmt(v.get('p50'), 0)}/{_fmt(v.get('p99'), 0)}"))
    for key, label in (
        ("join_all_backlog_s", "all viewers have backlog (s)"),
        ("storm_reconnect_all_s", "storm: all reconnected (s)"),
        ("storm_live_all_s", "storm: all live again (s)"),
    ):
        if key in r:
            rows.append((label, _fmt(r[key], 2)))
    if "delivery_check" in r:
        dc = r["delivery_check"]
        rows.append(("missing / duplicate frames", f"{_fmt(dc.get('missing'))} / {_fmt(dc.get('duplicates'))}"))
    if r.get("roles"):
        c = r.get("cluster", {})
        rows.append(("cluster (via)", f"{c.get('rms', '?')} rms, {c.get('ingest', '?')} ingest ({c.get('via', '?')})"))
        rows.append(("CPU by role", "CPU s (% core) | us/comment | us/delivery | RSS KiB"))
        for role, f in [*r["roles"].items(), ("total", r.get("roles_total", {}))]:
            rows.append(
                (
                    f"  {role}",
                    f"{_fmt(f.get('cpu_s'), 2)} ({_fmt(f.get('cpu_util_pct'), 1)}%) | "
                    f"{_fmt(f.get('cpu_us_per_comment'), 1)} | {_fmt(f.get('cpu_us_per_delivery'), 3)} | "
                    f"{_fmt(f.get('rss_kb'))}",
                )
            )
    if r.get("invalid_reasons"):
        rows.append(("invalid because", "; ".join(r["invalid_reasons"])))
    return rows


def print_table(r: Mapping[str, Any], file: Any = None) -> None:
    rows = table_rows(r)
    w = max(len(k) for k, _ in rows)
    out = file or sys.stdout
    print("-" * (w + 30), file=out)
    for k, v in rows:
        print(f"{k:<{w}}  {v}", file=out)
    print("-" * (w + 30), file=out)


def write_plots(
    out_dir: Path,
    title: str,
    hists: Mapping[str, Mapping[int, int]],
    deliveries_series: Sequence[int],
    cpu_samples: Sequence[Mapping[str, float]],
) -> list[str]:
    """Latency CDF per viewer class, and deliveries/s and CPU over time; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(NO_PLOTS, stacklevel=2)
        return []
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for cls, h in hists.items():
        total = sum(h.values())
        if not total:
            continue
        xs, ys, acc = [], [], 0
        for k in sorted(h):
            acc += h[k]
            xs.append(max(k, 0) + 1)  # bin upper edge (and > 0 for the log axis)
            ys.append(acc / total)
        ax.step(xs, ys, where="post", label=f"{cls} ({total:,} samples)")
    ax.set_xscale("log")
    ax.set_xlabel("broadcast latency, ms (post accepted -> frame read)")
    ax.set_ylabel("fraction of samples")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{title}: latency CDF")
    fig.tight_layout()
    fig.savefig(out_dir / "latency_cdf.png", dpi=100)
    plt.close(fig)
    written.append("latency_cdf.png")

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(range(len(deliveries_series)), list(deliveries_series), drawstyle="steps-post")
    ax1.set_ylabel("deliveries / s")
    ax1.grid(True, alpha=0.3)
    ax1.set_title(f"{title}: deliveries and CPU over time")
    ts, srv, lg = [], [], []
    # A cluster's samples also carry each role's CPU ("cpu_s:ingest", ...): a line each.
    role_keys = [rk for rk in (cpu_samples[-1] if cpu_samples else {}) if rk.startswith("cpu_s:")]
    by_role: dict[str, list[float]] = {rk: [] for rk in role_keys}
    for a, b in itertools.pairwise(cpu_samples):
        dt = b["t"] - a["t"]
        if dt <= 0:
            continue
        ts.append(b["t"])
        srv.append(100 * (b["server_cpu_s"] - a["server_cpu_s"]) / dt)
        lg.append(100 * (b["loadgen_cpu_s"] - a["loadgen_cpu_s"]) / dt)
        for rk in role_keys:
            by_role[rk].append(100 * (b.get(rk, 0.0) - a.get(rk, 0.0)) / dt)
    if role_keys:  # colours as in roles.png
        ax2.plot(ts, srv, label="cluster, all roles", color="black")
        ax2.plot(ts, lg, label="load generator", color="grey", linestyle="--")
        for i, (rk, values) in enumerate(by_role.items()):
            ax2.plot(ts, values, label=rk.split(":", 1)[1], linewidth=0.8, color=f"C{i}")
    else:
        ax2.plot(ts, srv, label="server")
        ax2.plot(ts, lg, label="load generator")
    ax2.set_ylabel("CPU, % of a core")
    ax2.set_xlabel("seconds since the harness started")
    ax2.grid(True, alpha=0.3)
    ax2.legend(loc="upper left")
    for s in cpu_samples:
        if s.get("mark"):
            for ax in (ax1, ax2):
                ax.axvline(s["t"], color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    fig.savefig(out_dir / "timeseries.png", dpi=100)
    plt.close(fig)
    written.append("timeseries.png")
    return written


def write_roles_plot(out_dir: Path, title: str, roles: Mapping[str, Mapping[str, Any]], order: Sequence[str]) -> str:
    """``roles.png``: a cluster's CPU per accepted comment and per delivery, stacked by role.

    Call only after :func:`write_plots` returned plots (matplotlib is there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r for r in order if r in roles] + [r for r in roles if r not in order]
    fig, axes = plt.subplots(1, 2, figsize=(9, 5))
    for ax, key, label in (
        (axes[0], "cpu_us_per_comment", "CPU µs per accepted comment"),
        (axes[1], "cpu_us_per_delivery", "CPU µs per delivered comment"),
    ):
        bottom = 0.0
        for i, role in enumerate(names):
            v = roles[role].get(key) or 0.0
            ax.bar([0], [v], bottom=[bottom], width=0.6, label=role, color=f"C{i}")
            bottom += v
        top = bottom
        bottom = 0.0
        for role in names:  # labels on the segments tall enough to hold one
            v = roles[role].get(key) or 0.0
            if v > 0.04 * top:
                ax.text(0.33, bottom + v / 2, f"{role} {_num(v)}", va="center", fontsize=8)
            bottom += v
        ax.set_xlim(-0.5, 1.5)
        ax.set_xticks([])
        ax.set_ylabel(label)
        ax.set_title(f"{label}: {_num(top)} in all", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="center right", fontsize=8)
    fig.subplots_adjust(right=0.85)
    fig.suptitle(f"{title}: CPU by role")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(out_dir / "roles.png", dpi=100)
    plt.close(fig)
    return "roles.png"


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"
