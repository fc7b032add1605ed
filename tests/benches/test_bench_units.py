"""Unit tests of the harness's pure parts: frame counting, percentiles, presets, HTTP parsing."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import pytest
from benches.loadgen import ViewerConfig, ViewerWorker, _response_complete, dechunk
from benches.report import hist_percentiles, percentile
from benches.scenarios import PRESETS, parse_mix
from benches.targets import NchanTarget, comment_text


def frame(i: int, created_ms: int) -> bytes:
    data = {"id": str(i), "text": "hi", "created_at": created_ms}
    return b"event: comment\nid: %d\ndata: %s\n\n" % (i, json.dumps(data, separators=(",", ":")).encode())


def worker() -> ViewerWorker:
    a, _ = mp.Pipe()
    return ViewerWorker(ViewerConfig(host="127.0.0.1", port=9, path="/", classes=[("healthy", 1)]), a)


def test_counts_frames_split_across_reads_anywhere() -> None:
    now = int(time.time() * 1000)
    stream = b"".join(frame(i, now) for i in range(5)) + b'event: gap\ndata: {"missed":7}\n\n' + frame(5, now)
    for cut in range(1, len(stream)):
        w = worker()
        w.measuring = True
        v = w.viewers[0]
        v.live_from_ms = now - 1
        for part in (stream[:cut], stream[cut:]):
            w._consume(v, part, len(part))
        assert v.frames == 6, cut
        assert v.last_id == b"5"


def chunked(payload: bytes, sizes: list[int]) -> bytes:
    """``payload`` in HTTP/1.1 chunks of the given sizes (the last takes the rest), then the end."""
    out, pos = b"", 0
    for size in [*sizes, len(payload)]:
        piece = payload[pos : pos + size]
        if piece:
            out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        pos += len(piece)
    return out + b"0\r\n\r\n"


def test_counts_frames_of_a_chunked_stream_whatever_the_chunk_and_read_boundaries() -> None:
    """Through nginx an SSE stream is re-chunked, and a chunk boundary can split ``event:
    comment`` itself: frames are counted on the payload, with the framing taken out."""
    now = int(time.time() * 1000)
    payload = b"".join(frame(i, now) for i in range(6))
    marker = payload.index(b"comment", len(frame(0, now)))  # inside the second frame's marker
    for sizes in ([marker], [3, marker - 3, 40], [1, 1, 1, 5000]):
        wire = chunked(payload, sizes)
        for cut in range(1, len(wire)):
            w = worker()
            v = w.viewers[0]
            v.chunk_left = 0  # the head said Transfer-Encoding: chunked
            got = b""
            for part in (wire[:cut], wire[cut:]):
                buf = bytearray(part)
                n = dechunk(v, buf, len(buf))
                got += bytes(buf[:n])
                if n:
                    w._consume(v, buf, n)
            assert got == payload, (sizes, cut)
            assert v.frames == 6, (sizes, cut)


def test_gap_events_and_latency_samples() -> None:
    now = int(time.time() * 1000)
    data = frame(1, now - 40) + b'event: gap\ndata: {"missed":7}\n\n' + frame(2, now - 10)
    w = worker()
    w.measuring = True
    v = w.viewers[0]
    v.live_from_ms = now - 1000
    w._consume(v, data, len(data))
    st = w.stats[0]
    assert (st.gaps, st.missed) == (1, 7)
    assert st.lat_samples == 2  # first and last comment of the read
    assert 10 <= st.lat_max < 1000


def test_backlog_comments_are_not_latency_samples() -> None:
    now = int(time.time() * 1000)
    data = frame(1, now - 60_000)
    w = worker()
    w.measuring = True
    v = w.viewers[0]
    v.live_from_ms = now
    w._consume(v, data, len(data))
    assert v.frames == 1 and w.stats[0].lat_samples == 0


def test_hist_percentiles() -> None:
    hist = {1: 50, 2: 40, 10: 9, 100: 1}
    p = hist_percentiles(hist, 100.4)
    assert (p["p50"], p["p90"], p["p99"], p["max"], p["samples"]) == (1.0, 2.0, 10.0, 100.4, 100)
    assert hist_percentiles({}, 0.0)["p50"] is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([], 0.5) is None


def test_presets_and_mix() -> None:
    assert PRESETS["popular"].viewers == 2000 and PRESETS["popular"].comments_per_s == 500
    counts = PRESETS["slow-consumers"].class_counts()
    assert counts == {"healthy": 1400, "slow": 200, "stalled": 400, "flapping": 0}
    assert parse_mix("stalled=0.2, flapping=0.1") == {"stalled": 0.2, "flapping": 0.1}
    with pytest.raises(ValueError):
        parse_mix("sleepy=0.1")
    with pytest.raises(ValueError):
        PRESETS["small"].with_overrides(mix={"stalled": 0.7, "slow": 0.7}).class_counts()


def test_payload_size_matches_between_targets(tmp_path: object) -> None:
    text = comment_text(250)
    t = NchanTarget.__new__(NchanTarget)
    t.stream = "bench-0123456789ab"
    body = t.publish_spec(1, text).body_template % {b"seq": 1, b"ms": 1_764_000_000_000}
    assert abs(len(body) - 250) <= 5
    json.loads(body)


def test_response_parsing() -> None:
    ok = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"
    assert _response_complete(ok) == (201, len(ok), False)
    assert _response_complete(ok[:-1]) is None
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert _response_complete(chunked) == (200, len(chunked), True)
