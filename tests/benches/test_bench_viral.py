"""The ``viral`` preset: its ramp and thresholds, its refusal of Nchan, and a tiny run.

The tiny run uses thresholds of a few viewers, so ten real SSE connections drive the
server's mode up; it checks the shape of ``result.json`` and that the timeline saw the
mode rise, never how long anything took.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from benches.cli import build_parser, main, options_from_args
from benches.scenarios import PRESETS, parse_tiers, ramp_schedule
from benches.viral import SnapshotPollers, mode_changes, summarize

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
MODES = {"push", "sampled", "cdn"}


def test_ramp_goes_up_in_steps_holds_and_comes_back() -> None:
    sched = ramp_schedule(50, 800, 72.0, 10, 3)
    levels = [n for _, n in sched]
    assert levels[0] == levels[-1] == 50
    assert max(levels) == 800 and levels.count(800) == 4
    peak = levels.index(800)
    assert levels[: peak + 1] == sorted(levels[: peak + 1])
    assert levels[peak:] == sorted(levels[peak:], reverse=True)
    times = [t for t, _ in sched]
    assert times[0] == 0.0 and times == sorted(times) and times[-1] < 72.0
    assert ramp_schedule(5, 5, 4.0, 2, 0) == [(0.0, 5), (0.8, 5), (1.6, 5), (2.4, 5), (3.2, 5)]


def test_viral_preset_thresholds_and_overrides() -> None:
    sc = PRESETS["viral"]
    assert sc.ramp_from < sc.tiers["sampled_below"] < sc.tiers["sampled_at"] < sc.tiers["cdn_below"]
    assert sc.tiers["cdn_at"] < sc.viewers
    env = sc.tier_env()
    assert env["LIVECOMMENTS_TIER_SAMPLED_AT"] == "300" and env["LIVECOMMENTS_TIER_CDN_BELOW"] == "480"
    assert env["LIVECOMMENTS_TIER_MIN_DWELL_S"] == "2.0"
    assert parse_tiers("sampled_at=3,sampled_below=2,cdn_at=6,cdn_below=5,dwell=1")["dwell_s"] == 1.0
    for bad in ("sampled_below=400", "cdn_at=100", "sleepy=1", "dwell_s=-1"):
        with pytest.raises(ValueError):
            parse_tiers(bad)
    args = ["--scenario", "viral", "--scale", "0.01"]
    opts = options_from_args(build_parser().parse_args(args), args)
    tiers = opts.scenario.tiers
    assert (tiers["sampled_at"], tiers["sampled_below"], tiers["cdn_at"], tiers["cdn_below"]) == (3, 2, 6, 5)
    assert opts.scenario.viewers == 8 and opts.scenario.ramp_from == 1
    args = ["--scenario", "popular", "--tiers", "sampled_at=3"]
    with pytest.raises(ValueError):
        options_from_args(build_parser().parse_args(args), args)


def test_summary_of_a_timeline() -> None:
    rows: list[dict[str, Any]] = [
        {"t": 1, "viewers": 2, "mode": "push", "deliveries_per_s": 40.0, "deliveries_per_viewer_per_s": 20.0},
        {"t": 2, "viewers": 6, "mode": "sampled", "deliveries_per_s": 60.0, "deliveries_per_viewer_per_s": 10.0},
        {"t": 3, "viewers": 6, "mode": None, "deliveries_per_s": 60.0, "deliveries_per_viewer_per_s": 10.0},
        {"t": 4, "viewers": 9, "mode": "cdn", "deliveries_per_s": 0.0, "deliveries_per_viewer_per_s": 5.0},
        {"t": 5, "viewers": 9, "mode": "cdn", "deliveries_per_s": 0.0, "deliveries_per_viewer_per_s": 0.0},
        {"t": 6, "viewers": 3, "mode": "sampled", "deliveries_per_s": 30.0, "deliveries_per_viewer_per_s": 10.0},
        {"t": 7, "viewers": 3, "mode": "sampled", "deliveries_per_s": 36.0, "deliveries_per_viewer_per_s": 12.0},
    ]
    assert [(c["from"], c["to"]) for c in mode_changes(rows)] == [
        ("push", "sampled"),
        ("sampled", "cdn"),
        ("cdn", "sampled"),
    ]
    s = summarize(rows, {"sampled_at": 3})
    assert s["highest_mode"] == "cdn" and s["modes_reached"] == ["push", "sampled", "cdn"]
    assert s["seconds_in_mode"] == {"push": 1, "sampled": 3, "cdn": 2} and s["unknown_mode_seconds"] == 1
    # Only seconds that began and ended in one mode count towards its delivery rate.
    assert s["deliveries_per_viewer_per_s_by_mode"] == {"push": None, "sampled": 12.0, "cdn": 0.0}
    assert s["peak_viewers"] == 9


def test_snapshot_pollers_count_new_and_missed_comments() -> None:
    def body(seqs: range) -> bytes:
        comments = [{"id": str(1000 + q), "text": f"#{q:08d} hello"} for q in seqs]
        return json.dumps({"comments": comments}).encode()

    answers = [(200, '"a"', body(range(0, 5))), (304, '"a"', b""), (200, '"b"', body(range(3, 9))),
               (200, '"c"', body(range(12, 15)))]  # fmt: skip
    sent: list[str | None] = []
    p = SnapshotPollers(9, "v", 1)

    def fake_get(etag: str | None) -> tuple[int, str | None, bytes]:
        sent.append(etag)
        return answers.pop(0)

    p._get = fake_get  # type: ignore[method-assign]
    assert p.poll() == {"polls": 1}  # the first poll is the baseline
    assert p.poll() == {"polls": 1, "not_modified": 1}
    assert p.poll() == {"polls": 1, "new_comments": 4, "counted": 1}
    assert p.poll() == {"polls": 1, "new_comments": 3, "counted": 1, "missed": 3}  # 9, 10 and 11 scrolled out
    assert sent == [None, '"a"', '"a"', '"b"']
    p.pause()
    assert p.last_id == [None] and p.etags == [None]


def test_viral_refuses_nchan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nchan"
    assert main(["--scenario", "viral", "--target", "nchan", "--quiet", "--out", str(out)]) == 2
    assert "livecomments only" in capsys.readouterr().err
    assert not out.exists()


def test_viral_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "viral"
    rc = main(
        [
            "--scenario", "viral", "--viewers", "10", "--ramp-from", "2", "--ramp-steps", "4",
            "--tiers", "sampled_at=3,sampled_below=2,cdn_at=6,cdn_below=5,dwell_s=0.5",
            "--rate", "20", "--duration", "8", "--warmup", "0.5", "--snapshot-pollers", "2",
            "--quiet", "--out", str(out),
        ]
    )  # fmt: skip
    r = json.loads((out / "result.json").read_text())
    assert rc == 0, r.get("invalid_reasons")
    assert r["scenario"] == "viral" and r["target"] == "livecomments"
    assert r["valid"] is True
    assert r["errors"] == 0, r["error_kinds"]
    assert r["comments_posted"] > 0
    assert "delivery_check" not in r  # sampled and cdn leave comments out by design
    thresholds = r["tiers"]["thresholds"]
    assert thresholds["sampled_at"] == 3 and thresholds["cdn_below"] == 5 and thresholds["dwell_s"] == 0.5
    assert r["ramp"]["from"] == 2 and r["ramp"]["peak"] == 10
    assert max(s["viewers"] for s in r["ramp"]["schedule"]) == 10

    timeline = r["timeline"]
    assert isinstance(timeline, list) and len(timeline) >= 3
    ts = [row["t"] for row in timeline]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    for row in timeline:
        assert 0 <= row["viewers"] <= 10
        assert 0 <= row["viewers_wanted"] <= 10
        assert row["mode"] in MODES or row["mode"] is None, row  # None: /stats did not answer in time
        assert row["deliveries_per_s"] >= 0 and row["comments_per_s"] >= 0
        assert sum(row["viewers_told"].values()) == row["viewers"]
        if row["mode"] != "cdn":
            assert "snapshot" not in row
        else:
            assert set(row["snapshot"]) >= {"polls", "not_modified", "missed", "comments_per_poller_per_s"}
    modes = [row["mode"] for row in timeline]
    assert "sampled" in modes or "cdn" in modes, modes
    assert r["tiers"]["highest_mode"] in ("sampled", "cdn")
    changes = r["tiers"]["mode_changes"]
    assert changes and changes[0]["from"] == "push" and changes[0]["to"] in ("sampled", "cdn")
    assert r["events"].get("mode", 0) > 0  # the viewers were told with `event: mode`
    if HAVE_MATPLOTLIB:
        assert "viral.png" in r["plots"]
        assert (out / "viral.png").stat().st_size > 0
