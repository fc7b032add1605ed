"""Failure drills with real processes: an rms node killed, an rms node stopped, Redis
restarted. Viewers and a poster work through the nginx edge the whole time; in the end
every viewer must have every accepted comment, once, in order.

One cluster (3 rms, 2 ingest) serves the module; each test uses a video of its own and
picks the node that hosts it, so the tests run in any order (each takes one rms node
down at most, and Redis comes back)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
import trio

from tests.cluster.conftest import RedisServer
from tests.cluster.harness import ClusterProcess, Poster, check_complete_in_order, client, has_all, wait_for, watch

VIEWERS = 6
SETTLE_S = 30  # bound on every wait


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[ClusterProcess]:
    c = ClusterProcess(
        redis_server.url,
        "fail",
        rms=3,
        ingest=2,
        env={"LIVECOMMENTS_RATE_LIMIT": "1000/1s", "LIVECOMMENTS_SHUTDOWN_GRACE_S": "5"},
        # These drills are about failing over: a node they kill stays dead for the module
        # (restarts are test_supervision.py's), so the edge's hash does not move back.
        args=["--restart-backoff-s", "3600", "--restart-backoff-max-s", "3600"],
    ).start()
    failed = request.session.testsfailed
    yield c
    c.stop()
    if request.session.testsfailed > failed:
        print(c.logs())
    c.cleanup()


async def test_rms_killed_under_load_viewers_resume_elsewhere(cluster: ClusterProcess) -> None:
    video = "killdrill"
    async with client() as http, trio.open_nursery() as nursery:
        viewers = await watch(nursery, http, cluster, video, VIEWERS)
        victim = cluster.node_at(viewers[0].upstream)
        poster = Poster(cluster, video, rate=40)
        nursery.start_soon(poster.run, http)
        await wait_for(lambda: min(len(v.ids) for v in viewers) >= 30, SETTLE_S, "comments before the kill")

        os.kill(victim["pid"], signal.SIGKILL)
        at_kill = len(poster.accepted)
        await wait_for(
            lambda: all(v.connections[-1].events and cluster.node_at(v.upstream) != victim for v in viewers),
            SETTLE_S,
            "every viewer to reconnect to another node",
        )
        await wait_for(lambda: len(poster.accepted) >= at_kill + 60, SETTLE_S, "more comments after the kill")
        poster.running = False
        await wait_for(lambda: has_all(viewers, poster.accepted), SETTLE_S, "every viewer to have every comment")
        nursery.cancel_scope.cancel()

    check_complete_in_order(viewers, poster)
    moved_to = {cluster.node_at(v.upstream)["name"] for v in viewers}
    assert len(moved_to) == 1 and victim["name"] not in moved_to
    assert all(len(v.connections) >= 2 for v in viewers)
    assert poster.statuses[201] == len(poster.accepted)


async def test_rms_stopped_gracefully_sends_goaway_first(cluster: ClusterProcess) -> None:
    video = "drain-drill"
    async with client() as http, trio.open_nursery() as nursery:
        viewers = await watch(nursery, http, cluster, video, VIEWERS)
        node = cluster.node_at(viewers[0].upstream)
        poster = Poster(cluster, video, rate=20)
        nursery.start_soon(poster.run, http)
        await wait_for(lambda: min(len(v.ids) for v in viewers) >= 10, SETTLE_S, "comments before the stop")

        os.kill(node["pid"], signal.SIGTERM)
        await wait_for(
            lambda: all(any(c.ended_by == "goaway" for c in v.connections) and len(v.connections) >= 2 for v in viewers),
            SETTLE_S,
            "every viewer to get goaway and reconnect",
        )
        at_switch = len(poster.accepted)
        await wait_for(lambda: len(poster.accepted) >= at_switch + 20, SETTLE_S, "comments after the switch")
        poster.running = False
        await wait_for(lambda: has_all(viewers, poster.accepted), SETTLE_S, "every viewer to have every comment")
        nursery.cancel_scope.cancel()

    check_complete_in_order(viewers, poster)
    for v in viewers:
        first = v.connections[0]
        # The drained node's stream ended with goaway, sent before the node closed it.
        assert first.ended_by == "goaway" and first.events[-1] == "goaway", (v.name, first)
        assert cluster.node_at(v.upstream)["name"] != node["name"]


async def test_redis_restart_resubscribe_backfill_and_503(
    cluster: ClusterProcess, redis_server: RedisServer
) -> None:
    video = "redisdrill"
    async with client() as http, trio.open_nursery() as nursery:
        viewers = await watch(nursery, http, cluster, video, VIEWERS)
        node = cluster.node_at(viewers[0].upstream)
        poster = Poster(cluster, video, rate=30)
        nursery.start_soon(poster.run, http)
        await wait_for(lambda: min(len(v.ids) for v in viewers) >= 20, SETTLE_S, "comments before the outage")

        redis_server.stop()
        # While Redis is down, ingest refuses with 503 + Retry-After (not 500).
        r = await http.post(
            f"{cluster.edge}/v1/videos/{video}/comments", json={"text": "now?"}, headers=cluster.auth("probe")
        )
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        # Down long enough for the rms' reconnect backoff to grow: it comes back after
        # ingest does, so it misses comments live and must backfill them.
        await wait_for(lambda: poster.statuses[503] >= 8, SETTLE_S, "the poster to see 503s")
        redis_server.start()

        async def reconnected() -> bool:
            text = (await http.get(f"{node['url']}/metrics")).text
            return "livecomments_bus_reconnects 1.0" in text and "livecomments_bus_connected 1.0" in text

        at_restart = len(poster.accepted)
        await wait_for(reconnected, SETTLE_S, f"{node['name']} to resubscribe")
        await wait_for(lambda: len(poster.accepted) >= at_restart + 30, SETTLE_S, "comments after the restart")
        poster.running = False
        await wait_for(lambda: has_all(viewers, poster.accepted), SETTLE_S, "every viewer to have every comment")
        metrics = (await http.get(f"{node['url']}/metrics")).text
        backfilled = next(ln for ln in metrics.splitlines() if ln.startswith("livecomments_bus_backfilled_comments"))
        print(f"\n{node['name']}: {backfilled}")
        nursery.cancel_scope.cancel()

    check_complete_in_order(viewers, poster)
    assert poster.statuses[500] == 0 and poster.statuses[503] >= 3
    assert all(ra.isdigit() and int(ra) >= 1 for ra in poster.retry_after)
    # The viewers' streams stayed up through the outage: the rms node never went away.
    assert all(len(v.connections) == 1 for v in viewers)
