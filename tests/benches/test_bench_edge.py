"""``cdn-edge`` (P8): pollers of snapshot.json through the real nginx edge, run tiny.

Not a timing test: it checks that the run goes end to end (server, nginx from
``deploy/nginx/edge.conf``, cdn mode, pollers, the access log read back) and that its
counts agree with each other, including the one P8 is about: the origin sees a small
share of the polls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benches.cli import main
from benches.edge import _response


def test_response_parsing() -> None:
    head = b"HTTP/1.1 200 OK\r\nETag: \"abc\"\r\nContent-Length: 4\r\n\r\n"
    assert _response(head + b"bo") is None  # the body is not all there
    assert _response(head + b"body" + b"HTTP/1.1") == (200, b'"abc"', False, len(head) + 4)
    closing = b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n"
    assert _response(closing) == (304, None, True, len(closing))
    assert _response(b"HTTP/1.1 200 OK\r\nContent-") is None


def test_cdn_edge_refuses_nchan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nchan"
    assert main(["--scenario", "cdn-edge", "--target", "nchan", "--quiet", "--out", str(out)]) == 2
    assert "nginx edge only" in capsys.readouterr().err
    assert not out.exists()


def test_cdn_edge_tiny_run(tmp_path: Path) -> None:
    out = tmp_path / "edge"
    args = ["--scenario", "cdn-edge", "--viewers", "50", "--edge-connections", "5", "--rate", "5"]
    rc = main([*args, "--duration", "3", "--warmup", "0.5", "--quiet", "--out", str(out)])
    r = json.loads((out / "result.json").read_text())
    assert rc == 0, r["invalid_reasons"]
    assert r["valid"] is True and r["errors"] == 0
    assert r["pollers"] == 50 and r["edge_connections"] == 5
    assert r["comments_posted"] > 0
    assert set(r["statuses"]) <= {"200", "304"}
    assert r["polls"] == sum(r["statuses"].values()) > 0
    # Every poll is a line in the edge's log; only a few of them went to the origin.
    assert r["edge_log_lines"] >= r["polls"]
    assert 0 < r["origin_requests"] < r["polls"] / 5
    assert r["origin_requests"] <= r["duration_s"] + 3
    lat = r["poll_latency_ms"]
    assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"]
