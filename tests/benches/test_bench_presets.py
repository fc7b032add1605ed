"""Each benchmark preset, run tiny through the CLI entry point, completes with sane figures.

These are not timing tests: they check that the harness drives both targets end to end
(server start, viewers, publisher, /proc sampling, result.json, plots) and that the
numbers it reports are consistent with each other. Nothing here asserts a duration.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from benches.cli import main
from benches.scenarios import PRESETS

TINY = ["--viewers", "20", "--duration", "2", "--warmup", "0.5", "--quiet"]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def run_bench(out: Path, *args: str) -> dict[str, Any]:
    rc = main([*args, *TINY, "--out", str(out)])
    result_path = out / "result.json"
    assert result_path.exists(), f"no result.json (exit code {rc})"
    result: dict[str, Any] = json.loads(result_path.read_text())
    assert rc == 0, f"exit code {rc}: {result.get('invalid_reasons')}"
    return result


def check_common(r: dict[str, Any], scenario: str, target: str) -> None:
    for key in (
        "scenario", "target", "viewers", "comments_per_s", "deliveries", "server_cpu_s",
        "cpu_us_per_delivery", "server_rss_kb", "latency_ms", "gaps", "errors", "valid",
        "post_latency_ms", "deliveries_per_s", "loadgen", "client", "open_files",
    ):  # fmt: skip
        assert key in r, key
    assert r["scenario"] == scenario
    assert r["target"] == target
    assert r["viewers"] == 20
    assert r["valid"] is True
    assert r["errors"] == 0, r["error_kinds"]
    assert r["gaps"] == 0
    assert r["viewers_streaming"] == 20
    assert r["comments_posted"] > 0
    assert r["comments_per_s"] > 0
    assert r["deliveries"] > 0
    assert r["deliveries_per_s"] > 0
    assert r["server_cpu_s"] >= 0
    assert r["cpu_us_per_delivery"] is not None and r["cpu_us_per_delivery"] >= 0
    assert r["server_rss_kb"] > 0
    lat = r["latency_ms"]
    assert set(lat) >= {"p50", "p90", "p99", "max"}
    assert lat["samples"] > 0
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] + 1
    assert r["post_latency_ms"]["p50"] is not None
    assert 0 <= r["loadgen"]["cpu_util_pct"] < 85
    assert r["client"]["poll_ms"] > 0
    assert r["open_files"]["soft"] >= r["open_files"]["soft_before"]
    # The frames counted are whole SSE frames of about the configured payload size.
    assert 200 < r["bytes_per_frame"] < 600


@pytest.mark.parametrize("scenario", sorted(s for s in PRESETS if s != "viral"))  # viral: test_bench_viral
def test_preset_tiny_livecomments(scenario: str, tmp_path: Path) -> None:
    extra = ["--join-window", "0.5", "--duration", "20"] if scenario == "join-storm" else []
    plots = [] if scenario == "popular" else ["--no-plots"]
    r = run_bench(tmp_path / scenario, "--scenario", scenario, "--target", "livecomments", *plots, *extra)
    check_common(r, scenario, "livecomments")
    if scenario == "popular" and HAVE_MATPLOTLIB:
        assert (tmp_path / scenario / "latency_cdf.png").stat().st_size > 0
        assert (tmp_path / scenario / "timeseries.png").stat().st_size > 0
    if scenario == "join-storm":
        assert r["join_with_backlog"] == 20
        assert r["join_all_backlog_s"] is not None and r["join_all_backlog_s"] > 0
    else:
        # Everyone was connected before the first post: each reading viewer got every comment once.
        dc = r["delivery_check"]
        assert dc["missing"] == 0 and dc["duplicates"] == 0, dc
    if scenario == "slow-consumers":
        counts = r["viewers_by_class"]
        assert counts["stalled"] == 4 and counts["slow"] == 2 and counts["healthy"] == 14
        assert r["latency_ms_by_class"]["slow"]["samples"] > 0
    if scenario == "reconnect-storm":
        assert r["storm_reconnected"] == 20
        assert r["reconnects"]["healthy"] >= 20


@pytest.mark.parametrize("scenario", ["popular", "reconnect-storm"])
def test_preset_tiny_nchan(scenario: str, tmp_path: Path) -> None:
    r = run_bench(tmp_path / scenario, "--scenario", scenario, "--target", "nchan", "--no-plots")
    check_common(r, scenario, "nchan")
    assert r["server"]["worker_pid"] > 0
    dc = r["delivery_check"]
    assert dc["missing"] == 0 and dc["duplicates"] == 0, dc
