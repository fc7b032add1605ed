"""``--target cluster``: a real ``livecomments cluster up`` (Redis, nodes, nginx), run tiny.

Not a timing test: it checks that the run goes end to end through the edge and straight
at the nodes, and that the per-role figures in ``result.json`` are consistent: every role
is there with its processes, the roles' CPU adds up to the cluster's total, and each
per-comment and per-delivery figure is that CPU over the accepted comments or deliveries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from benches.cli import main
from benches.cluster import ROLES

TINY = ["--viewers", "10", "--rate", "40", "--duration", "2", "--warmup", "0.5", "--quiet", "--no-plots"]


def run_cluster(out: Path, *args: str) -> dict[str, Any]:
    rc = main(["--scenario", "popular", "--target", "cluster", "--rms", "2", "--ingest", "2", *args, *TINY,
               "--out", str(out)])  # fmt: skip
    path = out / "result.json"
    assert path.exists(), f"no result.json (exit code {rc})"
    r: dict[str, Any] = json.loads(path.read_text())
    assert rc == 0, f"exit code {rc}: {r.get('invalid_reasons')}"
    return r


def check_roles(r: dict[str, Any]) -> None:
    assert r["target"] == "cluster" and r["valid"] is True and r["errors"] == 0
    for key in ("scenario", "viewers", "comments_per_s", "deliveries", "server_cpu_s", "cpu_us_per_delivery",
                "server_rss_kb", "latency_ms", "gaps", "errors", "valid"):  # fmt: skip
        assert key in r, key
    dc = r["delivery_check"]
    assert dc["missing"] == 0 and dc["duplicates"] == 0, dc
    roles, total = r["roles"], r["roles_total"]
    assert set(roles) == set(ROLES)
    accepted, deliveries = total["accepted_comments"], total["deliveries"]
    assert accepted == pytest.approx(r["comments_per_s"] * r["duration_s"], abs=1) and accepted > 0
    assert deliveries == r["deliveries"] > 0
    for role, f in roles.items():
        assert f["processes"] >= 1, role
        assert f["cpu_s"] >= 0 and f["rss_kb"] > 0, (role, f)
        assert f["cpu_us_per_comment"] == pytest.approx(1e6 * f["cpu_s"] / accepted, rel=1e-3, abs=0.01), role
        assert f["cpu_us_per_delivery"] == pytest.approx(1e6 * f["cpu_s"] / deliveries, rel=1e-3, abs=0.01), role
    # Two of each node kind, and nginx's master with at least one worker.
    assert roles["ingest"]["processes"] >= 2 and roles["rms"]["processes"] >= 2
    assert roles["edge"]["processes"] >= 2
    assert set(roles["ingest"]["nodes"]) == {"ingest-1", "ingest-2"}
    assert set(roles["rms"]["nodes"]) == {"rms-1", "rms-2"}
    # The parts add up: roles to the total, the total to the server figures.
    assert sum(f["cpu_s"] for f in roles.values()) == pytest.approx(total["cpu_s"], abs=1e-3)
    assert total["cpu_s"] == pytest.approx(r["server_cpu_s"], abs=1e-3)
    assert sum(f["rss_kb"] for f in roles.values()) == total["rss_kb"] == r["server_rss_kb"]
    assert total["cpu_us_per_comment"] == pytest.approx(1e6 * total["cpu_s"] / accepted, rel=1e-3)
    assert total["cpu_us_per_delivery"] == pytest.approx(r["cpu_us_per_delivery"], rel=1e-3)
    # Work was done where the comments went: ingest took posts, rms delivered them.
    assert roles["ingest"]["cpu_s"] > 0 and roles["rms"]["cpu_s"] > 0 and roles["redis"]["cpu_s"] > 0


def test_cluster_through_the_edge(tmp_path: Path) -> None:
    r = run_cluster(tmp_path / "edge")
    check_roles(r)
    c = r["cluster"]
    assert (c["via"], c["rms"], c["ingest"]) == ("edge", 2, 2)
    # Every post and every stream went through nginx.
    assert c["posts_accepted_by"] == {"edge": r["comments_posted"]} and c["viewers_on"] == "edge"
    s = r["server"]
    assert s["publish_ports"] == [s["edge_port"]] and s["viewer_port"] == s["edge_port"]


def test_cluster_straight_at_the_nodes(tmp_path: Path) -> None:
    r = run_cluster(tmp_path / "nodes", "--via", "nodes")
    check_roles(r)
    assert r["cluster"]["via"] == "nodes"
    s = r["server"]
    ingest_ports = {n["port"] for n in s["cluster"]["nodes"] if n["role"] == "ingest"}
    rms_ports = {n["port"] for n in s["cluster"]["nodes"] if n["role"] == "rms"}
    # One publisher connection per ingest node, taken in turn; the viewers on one rms node.
    assert set(s["publish_ports"]) == ingest_ports and len(s["publish_ports"]) == 2
    assert s["viewer_port"] in rms_ports
    # Round-robin: each ingest node took half the posts (one more at most).
    by = r["cluster"]["posts_accepted_by"]
    assert set(by) == {"ingest-1", "ingest-2"} and sum(by.values()) == r["comments_posted"]
    assert abs(by["ingest-1"] - by["ingest-2"]) <= 1, by
    assert r["cluster"]["viewers_on"] in {"rms-1", "rms-2"}


def test_cluster_options_only_with_the_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--scenario", "popular", "--via", "nodes", "--out", str(tmp_path / "x")])
    assert "--target cluster only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
