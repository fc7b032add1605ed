"""Tiers across two rms nodes: one mode for the cluster, one snapshot writer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
import trio

from tests.cluster.conftest import RedisServer
from tests.cluster.harness import ClusterProcess
from tests.e2e.sse import SSEStream, open_sse

TIERS = {
    "LIVECOMMENTS_TIER_SAMPLED_AT": "3",
    "LIVECOMMENTS_TIER_SAMPLED_BELOW": "2",
    "LIVECOMMENTS_TIER_CDN_AT": "5",
    "LIVECOMMENTS_TIER_CDN_BELOW": "4",
    "LIVECOMMENTS_TIER_MIN_DWELL_S": "0",
    "LIVECOMMENTS_PRESENCE_INTERVAL_S": "0.2",
    "LIVECOMMENTS_RATE_LIMIT": "1000/10s",
}
VIDEO = "viral"


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[ClusterProcess]:
    c = ClusterProcess(redis_server.url, "tiers", rms=2, ingest=1, env=TIERS).start()
    yield c
    c.stop()
    c.cleanup()


def node_url(cluster: ClusterProcess, name: str) -> str:
    return f"http://127.0.0.1:{cluster.node(name)['port']}"


@asynccontextmanager
async def viewers(url: str, n: int) -> AsyncIterator[list[SSEStream]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_sse(url, f"/v1/videos/{VIDEO}/events")) for _ in range(n)]


def modes(stream: SSEStream) -> list[str]:
    return [e.json()["mode"] for e in stream.named("mode")]


async def snapshot(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url) as c:
        return await c.get(f"/v1/videos/{VIDEO}/snapshot.json")


async def test_two_nodes_agree_on_the_mode_and_serve_one_snapshot(cluster: ClusterProcess) -> None:
    one, two = node_url(cluster, "rms-1"), node_url(cluster, "rms-2")
    async with viewers(one, 2) as a, viewers(two, 1) as b:
        # 3 viewers over two nodes: both nodes' viewers hear "sampled"
        await a[0].wait_for(lambda: modes(a[0])[-1:] == ["sampled"], "sampled on rms-1")
        await b[0].wait_for(lambda: modes(b[0])[-1:] == ["sampled"], "sampled on rms-2")
        async with viewers(two, 2):
            await a[0].wait_for(lambda: modes(a[0])[-1:] == ["cdn"], "cdn on rms-1")
            await b[0].wait_for(lambda: modes(b[0])[-1:] == ["cdn"], "cdn on rms-2")
            async with httpx.AsyncClient(base_url=cluster.edge) as c:
                r = await c.post(f"/v1/videos/{VIDEO}/comments", json={"text": "into the snapshot"}, headers=cluster.auth("u1"))
                assert r.status_code == 201
                posted = r.json()["id"]
            # One writer: both nodes serve the same bytes once the comment is in.
            with trio.fail_after(15):
                while True:
                    r1, r2 = await snapshot(one), await snapshot(two)
                    ids1 = [c["id"] for c in r1.json()["comments"]]
                    if posted in ids1 and r1.content == r2.content:
                        break
                    await trio.sleep(0.2)
            assert r1.headers["etag"] == r2.headers["etag"]
            # cdn mode pushes no comments
            assert posted not in a[0].comment_ids() and posted not in b[0].comment_ids()
        for stream, where in ((a[0], "rms-1"), (a[1], "rms-1"), (b[0], "rms-2")):
            await stream.wait_for(lambda s=stream: modes(s)[-1:] == ["sampled"], f"back to sampled on {where}")
    # the same sequence of modes on every viewer that saw them all
    assert modes(a[0]) == modes(a[1]) == modes(b[0]) == ["sampled", "cdn", "sampled"]
