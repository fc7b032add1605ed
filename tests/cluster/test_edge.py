"""A running cluster (2 rms, 2 ingest, persist, nginx) seen through its edge."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.cluster.conftest import RedisServer
from tests.cluster.harness import ClusterProcess, Viewer, wait_for

RATE = 20  # comments per user per 10 minutes in this cluster (no refill during the test)


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[ClusterProcess]:
    c = ClusterProcess(
        redis_server.url,
        "edge",
        rms=2,
        ingest=2,
        env={"LIVECOMMENTS_RATE_LIMIT": f"{RATE}/600s", "LIVECOMMENTS_PRESENCE_INTERVAL_S": "0.2"},
    ).start()
    failed = request.session.testsfailed
    yield c
    pids = [n["pid"] for n in c.info["nodes"]] + [c.info["nginx"]["pid"]]
    code = c.stop()
    if request.session.testsfailed > failed:
        print(c.logs())
    # SIGINT stopped all of it, cleanly.
    assert code == 0, "".join(c.output[-20:])
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _alive(pid)]
    c.cleanup()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_cluster_up_output_and_command_lines(cluster: ClusterProcess) -> None:
    text = "".join(cluster.output)
    for name in ("redis", "ingest-1", "ingest-2", "rms-1", "rms-2", "persist-1", "nginx"):
        assert f"  {name}" in text
    assert f"edge: {cluster.edge}" in text
    for node in cluster.info["nodes"]:
        argv = Path(f"/proc/{node['pid']}/cmdline").read_bytes().split(b"\0")
        assert node["role"].encode() in argv  # ps shows which process is which
    # Each ingest process issues Snowflakes with a worker id of its own.
    workers = set()
    for n in cluster.nodes("ingest"):
        env = Path(f"/proc/{n['pid']}/environ").read_bytes().split(b"\0")
        workers |= {e for e in env if e.startswith(b"LIVECOMMENTS_WORKER_ID=")}
    assert workers == {b"LIVECOMMENTS_WORKER_ID=1", b"LIVECOMMENTS_WORKER_ID=2"}


async def test_websocket_and_long_poll_through_the_edge(cluster: ClusterProcess) -> None:
    video = "wslp"
    ws_url = cluster.edge.replace("http://", "ws://") + f"/v1/videos/{video}/ws"
    async with httpx.AsyncClient(timeout=15) as client, open_websocket_url(ws_url) as ws:
        poll = trio.Event()
        polled: list[dict[str, object]] = []

        async def long_poll() -> None:
            poll.set()
            r = await client.get(f"{cluster.edge}/v1/videos/{video}/comments", params={"after": "0", "wait": "10"})
            polled.append(r.json())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await poll.wait()
            r = await client.post(
                f"{cluster.edge}/v1/videos/{video}/comments", json={"text": "hello ws"}, headers=cluster.auth("wsuser")
            )
            assert r.status_code == 201
            posted = r.json()["id"]
            with trio.fail_after(10):
                while True:
                    msg = json.loads(await ws.get_message())
                    if msg.get("type") == "comment":
                        break
        assert msg["id"] == posted
        assert [c["id"] for c in polled[0]["comments"]] == [posted]  # type: ignore[index]


async def sse_over_asgi(client: httpx.AsyncClient, cluster: ClusterProcess) -> float:
    """Streams the rms nodes served through the general HTTP server, not the lean path."""
    total = 0.0
    for n in cluster.nodes("rms"):
        text = (await client.get(f"{n['url']}/metrics")).text
        total += sum(
            float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines()
            if ln.startswith('livecomments_connections_total{transport="sse-asgi"')
        )
    return total


async def test_streams_after_other_requests_reach_the_lean_path(cluster: ClusterProcess) -> None:
    """The edge keeps connections to the rms nodes alive between requests; a stream must
    not be sent down one that an earlier request (history, long-poll) left behind, where
    the node's general HTTP server would refuse a WebSocket upgrade."""
    video = "reuse"
    async with httpx.AsyncClient(timeout=10) as client:
        asgi_before = await sse_over_asgi(client, cluster)
        for _ in range(3):
            r = await client.get(f"{cluster.edge}/v1/videos/{video}/comments", params={"limit": "5"})
            assert r.status_code == 200
        ws_url = cluster.edge.replace("http://", "ws://") + f"/v1/videos/{video}/ws?backlog=0"
        for _ in range(3):
            async with open_websocket_url(ws_url) as ws:
                assert not ws.closed
        for _ in range(3):
            async with client.stream("GET", f"{cluster.edge}/v1/videos/{video}/events") as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/event-stream")
        assert await sse_over_asgi(client, cluster) == asgi_before


async def test_one_videos_viewers_land_on_one_rms_node(cluster: ClusterProcess) -> None:
    videos = [f"route{n}" for n in range(8)]
    upstreams: dict[str, set[str]] = {v: set() for v in videos}
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
        viewers = [Viewer(cluster.edge, v, f"{v}/{i}") for v in videos for i in range(3)]
        for viewer in viewers:
            await nursery.start(viewer.run, client)
        for viewer in viewers:
            upstreams[viewer.video].add(viewer.upstream)
        nursery.cancel_scope.cancel()
    assert all(len(u) == 1 for u in upstreams.values()), upstreams
    used = {next(iter(u)) for u in upstreams.values()}
    assert {cluster.node_at(u)["role"] for u in used} == {"rms"}
    assert len(used) == 2, "eight videos all hashed to one of two nodes"


async def test_snapshot_is_cached_at_the_edge(cluster: ClusterProcess) -> None:
    url = f"{cluster.edge}/v1/videos/snapcache/snapshot.json"
    pollers, statuses = 40, []
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=pollers)) as client:
        first = await client.get(url)
        assert first.status_code == 200 and first.headers["cache-control"] == "public, max-age=1"
        etag = first.headers["etag"]
        start = trio.current_time()

        async def poll(n: int) -> None:
            while trio.current_time() - start < 3.0:
                r = await client.get(url, headers={"If-None-Match": etag} if n % 2 else {})
                statuses.append((r.status_code, r.headers.get("x-cache-status", "")))

        async with trio.open_nursery() as nursery:
            for n in range(pollers):
                nursery.start_soon(poll, n)
        elapsed = trio.current_time() - start
    lines = [ln for ln in cluster.access_log() if "/snapcache/snapshot.json" in ln]
    to_origin = [ln for ln in lines if "upstream=-" not in ln]
    assert len(lines) >= len(statuses) > 20 * len(to_origin)
    # About one origin request per second (the cache holds a snapshot for 1 s).
    assert len(to_origin) <= elapsed + 3, to_origin
    assert {s for s, _ in statuses} <= {200, 304}
    assert any(c == "HIT" for _, c in statuses)


async def test_posting_rate_limit_and_stats_are_cluster_wide(cluster: ClusterProcess) -> None:
    ingests = [n["url"] for n in cluster.nodes("ingest")]
    headers = cluster.auth("ratey")
    async with httpx.AsyncClient(timeout=10) as client:
        accepted = 0
        for n in range(RATE):
            r = await client.post(
                f"{ingests[n % 2]}/v1/videos/stats1/comments", json={"text": f"hi {n}"}, headers=headers
            )
            assert r.status_code == 201, r.text
            accepted += 1
        # The 21st, on either ingest node, is over the shared limit.
        for url in ingests:
            r = await client.post(f"{url}/v1/videos/stats1/comments", json={"text": "one more"}, headers=headers)
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert accepted == RATE

        # Guest sign-in is off in cluster mode.
        r = await client.post(f"{cluster.edge}/v1/auth/guest", json={"name": "G"})
        assert r.status_code == 404 and r.json()["error"] == "guest_disabled"

        # Viewers on both rms nodes add up, in stats and in metrics.
        rms = [n["url"] for n in cluster.nodes("rms")]
        async with trio.open_nursery() as nursery:
            for i in range(5):
                await nursery.start(Viewer(rms[i % 2], "stats1", f"s{i}").run, client)

            async def five() -> bool:
                r = await client.get(f"{cluster.edge}/v1/videos/stats1/stats")
                return bool(r.json()["viewers"] == 5)

            await wait_for(five, 15, "5 viewers in stats")
            stats = (await client.get(f"{cluster.edge}/v1/videos/stats1/stats")).json()
            assert stats["mode"] == "push" and stats["comments_per_s"] >= 0

            async def in_metrics() -> bool:
                text = (await client.get(f"{rms[0]}/metrics")).text
                return (
                    'livecomments_video_viewers{video_id="stats1"} 5.0' in text
                    and "livecomments_bus_connected 1.0" in text
                )

            await wait_for(in_metrics, 15, "the cluster-wide count in rms-1's metrics")
            nursery.cancel_scope.cancel()

        # Everything posted reaches the cold store, and history reads it through the edge.
        db = Path(cluster.info["data_dir"]) / "comments.sqlite3"

        def persisted() -> int:
            with sqlite3.connect(db) as conn:
                return int(conn.execute("SELECT count(*) FROM comments WHERE video_id = 'stats1'").fetchone()[0])

        await wait_for(lambda: persisted() == RATE, 15, "persist to write every comment")
        page = (await client.get(f"{cluster.edge}/v1/videos/stats1/comments?limit=200")).json()
        assert len(page["comments"]) == RATE


async def test_a_deletion_reaches_viewers_history_and_the_cold_store(cluster: ClusterProcess) -> None:
    video = "deletions"
    db = Path(cluster.info["data_dir"]) / "comments.sqlite3"
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:
        viewer = Viewer(cluster.edge, video)
        await nursery.start(viewer.run, client)
        ids = []
        for text in ("keep me", "delete me"):
            r = await client.post(
                f"{cluster.edge}/v1/videos/{video}/comments", json={"text": text}, headers=cluster.auth("del")
            )
            ids.append(r.json()["id"])
        await wait_for(lambda: len(viewer.ids) == 2, 15, "both comments live")
        r = await client.delete(f"{cluster.edge}/v1/videos/{video}/comments/{ids[1]}", headers=cluster.auth("del"))
        assert r.status_code == 204, r.text
        await wait_for(lambda: int(ids[1]) in viewer.removed, 15, "the remove event")
        page = (await client.get(f"{cluster.edge}/v1/videos/{video}/comments")).json()
        assert [c["id"] for c in page["comments"]] == [ids[0]]

        def removed_in_cold() -> bool:
            with sqlite3.connect(db) as conn:
                rows = dict(conn.execute("SELECT id, removed FROM comments WHERE video_id = ?", (video,)).fetchall())
            return rows == {int(ids[0]): 0, int(ids[1]): 1}

        await wait_for(removed_in_cold, 15, "persist to apply the removal")
        nursery.cancel_scope.cancel()


def posts_served(metrics: str) -> dict[str, float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith("livecomments_posts_served_total{"):
            out[line.split('path="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


async def test_posts_through_the_edge_stay_on_the_lean_path(cluster: ClusterProcess) -> None:
    """Requests an ingest node hands to its general HTTP server (sign-in, health checks)
    leave their kept-alive edge connections there; posts must not be sent down them."""
    ingests = [n["url"] for n in cluster.nodes("ingest")]
    async with httpx.AsyncClient(timeout=10) as client:
        before = [posts_served((await client.get(f"{url}/metrics")).text) for url in ingests]
        for _ in range(8):  # kept-alive edge -> ingest connections, now Hypercorn's
            assert (await client.get(f"{cluster.edge}/healthz")).status_code == 200
            assert (await client.post(f"{cluster.edge}/v1/auth/guest", json={"name": "G"})).status_code == 404
        for n in range(12):
            r = await client.post(
                f"{cluster.edge}/v1/videos/lean1/comments", json={"text": f"hi {n}"}, headers=cluster.auth(f"lean{n}")
            )
            assert r.status_code == 201, r.text
        after = [posts_served((await client.get(f"{url}/metrics")).text) for url in ingests]
    lean = sum(a.get("lean", 0) - b.get("lean", 0) for a, b in zip(after, before, strict=True))
    asgi = sum(a.get("asgi", 0) - b.get("asgi", 0) for a, b in zip(after, before, strict=True))
    assert (lean, asgi) == (12, 0)
