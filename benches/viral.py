"""The ``viral`` scenario's own parts: the server's view of the video, snapshot pollers,
the per-second timeline's summary and its plot.

While the viewers ramp through the (scaled-down) tier thresholds, the orchestrator asks
``GET /v1/videos/{id}/stats`` once a second for the mode the server is in, and, while it
is ``cdn``, lets a few pollers read ``snapshot.json`` the way the page does (with
``If-None-Match``, de-duplicating by id) to show what a viewer still sees without pushes.
"""

from __future__ import annotations

import http.client
import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benches.loadgen import MODES
from benches.report import NO_PLOTS
from benches.targets import HOST

MODE_COLOURS = {"push": "#d9f2d9", "sampled": "#ffe8b3", "cdn": "#cfe2ff"}


def fetch_stats(port: int, video_id: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """The server's ``/stats`` for the video (viewers, comments_per_s, mode); None on failure."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", f"/v1/videos/{video_id}/stats")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        doc: dict[str, Any] = json.loads(body)
        return doc
    except (OSError, ValueError):
        return None
    finally:
        conn.close()


class SnapshotPollers:
    """``count`` simulated cdn-mode viewers, each polling ``snapshot.json`` once per call.

    Each keeps its ETag and the newest comment it has shown. Its first poll after a pause
    only sets that baseline (a real page shows the snapshot it lands on, but that is not
    new comments per second). The harness numbers its posts (``#00000123 ...``), so a
    poller counts exactly the comments that scrolled out of the snapshot between two of
    its polls (``missed``). All share one keep-alive connection.
    """

    def __init__(self, port: int, video_id: str, count: int, timeout: float = 2.0) -> None:
        self.port = port
        self.path = f"/v1/videos/{video_id}/snapshot.json"
        self.count = count
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.etags: list[str | None] = [None] * count
        self.last_id: list[int | None] = [None] * count
        self.last_seq: list[int | None] = [None] * count
        self.totals: Counter[str] = Counter()

    def pause(self) -> None:
        """The video left cdn mode: the next polls start a new baseline."""
        self.etags = [None] * self.count
        self.last_id = [None] * self.count
        self.last_seq = [None] * self.count

    def _get(self, etag: str | None) -> tuple[int, str | None, bytes]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            try:
                self.conn.request("GET", self.path, headers={"If-None-Match": etag} if etag else {})
                resp = self.conn.getresponse()
                body = resp.read()
                return resp.status, resp.getheader("ETag"), body
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def poll(self) -> dict[str, Any]:
        """One poll by every poller; counts of answers and of comments new to each poller."""
        out: Counter[str] = Counter()
        for i in range(self.count):
            try:
                status, etag, body = self._get(self.etags[i])
            except (OSError, http.client.HTTPException):
                out["errors"] += 1
                continue
            out["polls"] += 1
            if status == 304:
                out["not_modified"] += 1
                continue
            if status != 200:
                out["errors"] += 1
                continue
            self.etags[i] = etag
            try:
                comments = json.loads(body).get("comments", [])
                ids = [int(c["id"]) for c in comments]
                seqs = [_seq(c.get("text", "")) for c in comments]
            except (ValueError, KeyError, TypeError, AttributeError):
                out["errors"] += 1
                continue
            last, last_seq = self.last_id[i], self.last_seq[i]
            known = [q for q in seqs if q is not None]
            if last is not None and ids:
                out["new_comments"] += sum(1 for x in ids if x > last)
                out["counted"] += 1
                newer = [q for q in known if q > last_seq] if last_seq is not None else []
                if last_seq is not None and newer and min(newer) > last_seq + 1:
                    # Post numbers between the newest it had and the oldest new one: gone.
                    out["missed"] += min(newer) - last_seq - 1
            if ids:
                self.last_id[i] = max(ids) if last is None else max(last, max(ids))
            if known:
                self.last_seq[i] = max(known) if last_seq is None else max(last_seq, max(known))
        self.totals.update(out)
        return dict(out)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _seq(text: str) -> int | None:
    """The post number the harness puts at the start of each text (``#00000123 ...``)."""
    if len(text) > 9 and text[0] == "#" and text[1:9].isdigit():
        return int(text[1:9])
    return None


def mode_changes(timeline: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each change of the server's mode between two rows: when, from, to, viewers then."""
    out: list[dict[str, Any]] = []
    last = None
    for row in timeline:
        mode = row.get("mode")
        if mode is None:
            continue
        if last is not None and mode != last:
            out.append({"t": row["t"], "from": last, "to": mode, "server_viewers": row.get("server_viewers")})
        last = mode
    return out


def summarize(timeline: Sequence[Mapping[str, Any]], tiers: Mapping[str, float]) -> dict[str, Any]:
    """Figures over the whole ramp: modes reached, changes, time and delivery rate per mode."""
    seconds: Counter[str] = Counter()
    per_viewer: dict[str, list[float]] = {m: [] for m in MODES}
    prev_mode = None
    for row in timeline:
        mode = row.get("mode")
        if mode in MODES:
            seconds[mode] += 1
            pv = row.get("deliveries_per_viewer_per_s")
            if pv is not None and mode == prev_mode:  # a second that began and ended in the mode
                per_viewer[mode].append(pv)
        prev_mode = mode
    order = {m: i for i, m in enumerate(MODES)}
    reached = [m for m in MODES if seconds[m]]
    changes = mode_changes(timeline)
    return {
        "thresholds": dict(tiers),
        "modes_reached": reached,
        "highest_mode": max(reached, key=order.__getitem__) if reached else None,
        "mode_changes": changes,
        "seconds_in_mode": {m: seconds[m] for m in MODES},
        "deliveries_per_viewer_per_s_by_mode": {
            m: round(sum(v) / len(v), 2) if v else None for m, v in per_viewer.items()
        },
        "peak_viewers": max((row.get("viewers", 0) for row in timeline), default=0),
        "peak_deliveries_per_s": max((row.get("deliveries_per_s", 0.0) for row in timeline), default=0.0),
        "unknown_mode_seconds": sum(1 for row in timeline if row.get("mode") is None),
    }


def _bands(ax: Any, timeline: Sequence[Mapping[str, Any]]) -> None:
    """Shade from each row's time to the next by the mode ``/stats`` reported then (the
    first row's mode also covers the window's first second)."""
    starts = [0.0] + [row["t"] for row in timeline[1:]]
    ends = [row["t"] for row in timeline[1:]] + [timeline[-1]["t"]]
    for row, t0, t1 in zip(timeline, starts, ends):
        mode = row.get("mode")
        if mode in MODE_COLOURS:
            ax.axvspan(t0, t1, color=MODE_COLOURS[mode], linewidth=0, zorder=0)


def write_plot(
    out_dir: Path,
    title: str,
    timeline: Sequence[Mapping[str, Any]],
    tiers: Mapping[str, float],
    schedule: Sequence[tuple[float, int]] = (),
) -> str | None:
    """``viral.png``: viewers, deliveries/s and per-viewer rates over time, modes shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        warnings.warn(NO_PLOTS, stacklevel=2)
        return None
    if not timeline:
        return None
    ts = [row["t"] for row in timeline]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for ax in (ax1, ax2, ax3):
        _bands(ax, timeline)
        ax.grid(True, alpha=0.3)

    if schedule:
        xs = [t for t, _ in schedule] + [max(ts[-1], schedule[-1][0])]
        ys = [n for _, n in schedule] + [schedule[-1][1]]
        ax1.step(xs, ys, where="post", color="grey", linestyle="--", linewidth=1, label="viewers wanted (ramp)")
    ax1.plot(ts, [row["viewers"] for row in timeline], "o-", color="black", markersize=2, label="viewers connected")
    sv = [(row["t"], row["server_viewers"]) for row in timeline if row.get("server_viewers") is not None]
    if sv:
        ax1.plot([t for t, _ in sv], [v for _, v in sv], color="tab:purple", linewidth=1, alpha=0.7,
                 label="viewers per /stats")  # fmt: skip
    for key, style in (("sampled_at", "-"), ("sampled_below", ":"), ("cdn_at", "-"), ("cdn_below", ":")):
        if key in tiers:
            ax1.axhline(tiers[key], color="tab:red", linestyle=style, linewidth=0.8, alpha=0.6)
            ax1.annotate(
                f"{key} {tiers[key]:g}", (1.0, tiers[key]), xycoords=("axes fraction", "data"),
                fontsize=7, color="tab:red", ha="right", va="bottom",
            )  # fmt: skip
    ax1.set_ylabel("viewers")
    fig.suptitle(f"{title}: mode (shaded), viewers and deliveries over time")
    handles, _labels = ax1.get_legend_handles_labels()
    handles += [Patch(color=c, label=f"mode {m}") for m, c in MODE_COLOURS.items()]
    ax1.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=7, ncol=4, frameon=False)

    # Rates are over the second that ends at each row's time: steps, from the window's start.
    def rate(key: str) -> list[float]:
        ys = [float(row.get(key) or 0.0) for row in timeline]
        return ys[:1] + ys

    xs = [0.0, *ts]
    ax2.step(xs, rate("deliveries_per_s"), where="pre", color="tab:blue", label="comment frames read / s, all viewers")
    ax2.set_ylabel("deliveries / s")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper right", fontsize=8)

    ax3.step(xs, rate("comments_per_s"), where="pre", color="grey", label="comments posted / s")
    ax3.step(xs, rate("deliveries_per_viewer_per_s"), where="pre", color="tab:blue", label="pushed to each viewer / s")
    snap = [(row["t"], row["snapshot"]["comments_per_poller_per_s"]) for row in timeline
            if row.get("snapshot", {}).get("comments_per_poller_per_s") is not None]  # fmt: skip
    if snap:
        ax3.plot([t for t, _ in snap], [v for _, v in snap], "o", color="tab:green", markersize=3,
                 label="new in snapshot.json per poller / s")  # fmt: skip
    if "sample_target" in tiers:
        ax3.axhline(tiers["sample_target"], color="tab:orange", linestyle=":", linewidth=1, label="sample target")
    ax3.set_ylabel("comments / s")
    ax3.set_ylim(bottom=0)
    ax3.set_xlabel("seconds since the ramp started")
    ax3.legend(loc="center right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "viral.png", dpi=100)
    plt.close(fig)
    return "viral.png"
