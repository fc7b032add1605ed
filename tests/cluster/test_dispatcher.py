"""The dispatcher bus (``LIVECOMMENTS_BUS=dispatcher``) through the same drills as pub/sub.

The kill and drain drills of ``test_failures`` run here unchanged against a cluster whose
comments reach the rms nodes by the dispatcher (imported: pytest gives them this
module's ``cluster``); then what is the dispatcher's own: its registry lost (a flush, as
a Redis restart without persistence or a dispatcher store's loss would) and viewers
churning, which opens and closes rooms and so registers and unregisters nodes. In every
case each viewer gets every acknowledged comment, once, in id order."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from tests.cluster.conftest import RedisServer
from tests.cluster.harness import (
    ClusterProcess,
    Poster,
    Viewer,
    check_complete_in_order,
    client,
    has_all,
    wait_for,
    watch,
)

PREFIX = "disp"
SETTLE_S = 30


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[ClusterProcess]:
    c = ClusterProcess(
        redis_server.url,
        PREFIX,
        rms=3,
        ingest=2,
        env={
            "LIVECOMMENTS_BUS": "dispatcher",
            "LIVECOMMENTS_RATE_LIMIT": "1000/1s",
            "LIVECOMMENTS_SHUTDOWN_GRACE_S": "5",
            # Rooms close soon after their last viewer: churn registers and unregisters.
            "LIVECOMMENTS_ROOM_LINGER_S": "2.5",
        },
    ).start()
    failed = request.session.testsfailed
    yield c
    c.stop()
    if request.session.testsfailed > failed:
        print(c.logs())
    c.cleanup()


async def metric(http: httpx.AsyncClient, node: dict[str, Any], name: str) -> float:
    text = (await http.get(f"{node['url']}/metrics")).text
    line = next((ln for ln in text.splitlines() if ln.startswith(name + " ")), None)
    return float(line.split()[1]) if line else 0.0


async def test_comments_travel_by_the_dispatcher_not_pubsub(cluster: ClusterProcess, redis: Any) -> None:
    video = "direct"
    async with client() as http, trio.open_nursery() as nursery:
        viewers = await watch(nursery, http, cluster, video, 3)
        node = cluster.node_at(viewers[0].upstream)
        poster = Poster(cluster, video, rate=20)
        nursery.start_soon(poster.run, http)
        await wait_for(lambda: len(poster.accepted) >= 30, SETTLE_S, "comments")
        poster.running = False
        await wait_for(lambda: has_all(viewers, poster.accepted), SETTLE_S, "every viewer to have every comment")
        # Nobody listens on the video's pub/sub channel: the node got them delivered.
        channel = f"{PREFIX}:{{0}}:events:{video}"
        subscribers = {k.decode() if isinstance(k, bytes) else k: n for k, n in (await redis.pubsub_shardnumsub(channel)).items()}
        assert subscribers == {channel: 0}, subscribers
        assert await metric(http, node, "livecomments_dispatcher_delivered") >= len(poster.accepted)
        registered = await redis.zrange(f"{PREFIX}:{{0}}:dispatch:{video}", 0, -1)
        assert len(registered) == 1, registered
        nursery.cancel_scope.cancel()
    check_complete_in_order(viewers, poster)


async def test_registry_lost_is_survived_by_reregistration(cluster: ClusterProcess, redis: Any) -> None:
    video = "flushdrill"
    key = f"{PREFIX}:{{0}}:dispatch:{video}"
    async with client() as http, trio.open_nursery() as nursery:
        viewers = await watch(nursery, http, cluster, video, 6)
        node = cluster.node_at(viewers[0].upstream)
        poster = Poster(cluster, video, rate=30)
        nursery.start_soon(poster.run, http)
        await wait_for(lambda: min(len(v.ids) for v in viewers) >= 20, SETTLE_S, "comments before the loss")

        lost_before = await metric(http, node, "livecomments_dispatcher_registrations_lost")
        assert await redis.delete([key]) == 1

        async def reregistered() -> bool:
            return await metric(http, node, "livecomments_dispatcher_registrations_lost") > lost_before

        await wait_for(reregistered, SETTLE_S, "the node to find its registration lost and renew it")
        assert await redis.exists([key]) == 1
        at_renewal = len(poster.accepted)
        await wait_for(lambda: len(poster.accepted) >= at_renewal + 40, SETTLE_S, "comments after the renewal")
        poster.running = False
        await wait_for(lambda: has_all(viewers, poster.accepted), SETTLE_S, "every viewer to have every comment")
        nursery.cancel_scope.cancel()

    check_complete_in_order(viewers, poster)
    assert all(len(v.connections) == 1 for v in viewers)


async def test_viewers_churn_each_session_complete_in_order(cluster: ClusterProcess) -> None:
    """Steady viewers of one video while others come and go; and a video whose only viewers
    churn, so its room closes and reopens (the node unregisters and registers again).
    Every session, from its first comment to its last, has every accepted comment in
    between, once, in order."""
    steady_video, churn_video = "churn-steady", "churn-only"
    sessions: list[Viewer] = []

    async def churner(http: httpx.AsyncClient, video: str, i: int) -> None:
        n = 0
        while True:
            v = Viewer(cluster.edge, video, f"{video}-churner{i}.{n}")
            sessions.append(v)
            n += 1
            with trio.move_on_after(random.uniform(0.5, 2.0)):
                await v.run(http)
            await trio.sleep(random.uniform(0.0, 4.0))  # long enough, at times, for the room to close

    async with client() as http, trio.open_nursery() as nursery:
        steady = await watch(nursery, http, cluster, steady_video, 4)
        posters = [Poster(cluster, steady_video, rate=15), Poster(cluster, churn_video, rate=15)]
        for p in posters:
            nursery.start_soon(p.run, http)
        for i in range(6):
            nursery.start_soon(churner, http, steady_video, i)
            nursery.start_soon(churner, http, churn_video, i)
        await wait_for(lambda: all(len(p.accepted) >= 150 for p in posters), 60, "comments while viewers churn")
        for p in posters:
            p.running = False
        await wait_for(lambda: has_all(steady, posters[0].accepted), SETTLE_S, "the steady viewers to have every comment")
        nursery.cancel_scope.cancel()

    check_complete_in_order(steady, posters[0])
    accepted = {steady_video: sorted(posters[0].accepted), churn_video: sorted(posters[1].accepted)}
    seen = 0
    for v in sessions:
        if not v.ids:
            continue
        assert v.ids == sorted(set(v.ids)), f"{v.name}: out of order or repeated"
        want = [i for i in accepted[v.video] if v.ids[0] <= i <= v.ids[-1]]
        assert v.ids == want, f"{v.name}: missing {sorted(set(want) - set(v.ids))[:5]} of its span"
        seen += 1
    assert seen >= 20, "too few churning sessions saw comments for the test to mean anything"


# The pub/sub drills, last: each takes an rms node down, and the edge may still avoid the
# restarted node for a while, which would split a later test's viewers over two nodes.
from tests.cluster.test_failures import (  # noqa: E402, F401  (collected here, with this module's cluster)
    test_rms_killed_under_load_viewers_resume_elsewhere,
    test_rms_stopped_gracefully_sends_goaway_first,
)
