"""WebSocket viewers (``--transport ws``): a tiny popular run against livecomments."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from benches.cli import main
from benches.loadgen import ViewerConfig, ViewerWorker

TINY = ["--viewers", "20", "--duration", "2", "--warmup", "0.5", "--quiet", "--no-plots"]


def test_popular_ws_livecomments(tmp_path: Path) -> None:
    out = tmp_path / "popular-ws"
    rc = main(["--scenario", "popular", "--target", "livecomments", "--transport", "ws", *TINY, "--out", str(out)])
    result_path = out / "result.json"
    assert result_path.exists(), f"no result.json (exit code {rc})"
    r = json.loads(result_path.read_text())
    assert rc == 0, f"exit code {rc}: {r.get('invalid_reasons')}"
    assert r["transport"] == "ws"
    assert r["target"] == "livecomments"
    assert r["errors"] == 0, r["error_kinds"]
    assert r["gaps"] == 0
    assert r["viewers_streaming"] == 20
    assert r["deliveries"] > 0
    assert r["latency_ms"]["samples"] > 0
    # WebSocket frames of about the configured payload size, each counted once.
    assert 200 < r["bytes_per_frame"] < 600
    dc = r["delivery_check"]
    assert dc["missing"] == 0 and dc["duplicates"] == 0, dc


def test_ws_refuses_nchan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--scenario", "popular", "--target", "nchan", "--transport", "ws", *TINY, "--out", str(tmp_path / "x")])
    assert rc == 2
    assert "--transport ws runs against livecomments only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def test_ws_frame_counting_across_reads() -> None:
    """Comment frames are counted once whatever the read boundaries; other frames are events."""
    now_ms = int(time.time() * 1000)
    comments = [
        json.dumps({"type": "comment", "id": str(i), "text": "x" * size, "created_at": now_ms}, separators=(",", ":"))
        for i, size in enumerate((10, 200, 70_000, 5))
    ]
    stream = b"".join(_frame(c.encode()) for c in comments[:2])
    stream += _frame(b'{"type":"gap","missed":7}') + _frame(b'{"type":"mode","mode":"sampled"}')
    stream += b"".join(_frame(c.encode()) for c in comments[2:])
    for step in (1, 3, 7, 130, len(stream)):
        cfg = ViewerConfig(host="127.0.0.1", port=1, path="/", classes=[("healthy", 1)], transport="ws")
        w = ViewerWorker(cfg, None)  # type: ignore[arg-type]
        w.measuring = True
        v = w.viewers[0]
        v.live_from_ms = now_ms - 1000
        for i in range(0, len(stream), step):
            chunk = stream[i : i + step]
            w.consume(v, bytearray(chunk), len(chunk))
        st = w.stats[0]
        assert v.frames == 4, step
        assert v.tail == b""
        assert st.gaps == 1 and st.missed == 7
        assert st.events["mode"] == 1 and v.seen_mode == 1
        assert st.lat_samples > 0
        assert v.last_id == b"3"
