"""Moderation in a cluster: bans shared by every ingest node, automod by `moderate`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.cluster.conftest import RedisServer
from tests.cluster.harness import ClusterProcess
from tests.e2e.sse import open_sse


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    rules = tmp_path_factory.mktemp("rules") / "rules.txt"
    rules.write_text("spamword\n")
    c = ClusterProcess(
        redis_server.url,
        "moderation",
        rms=1,
        ingest=2,
        env={"LIVECOMMENTS_MODERATION_RULES": str(Path(rules)), "LIVECOMMENTS_RATE_LIMIT": "1000/10s"},
    ).start()
    yield c
    c.stop()
    c.cleanup()


def ingest_urls(cluster: ClusterProcess) -> list[str]:
    return [f"http://127.0.0.1:{n['port']}" for n in cluster.nodes("ingest")]


async def test_a_ban_made_on_one_ingest_node_holds_on_the_other(cluster: ClusterProcess) -> None:
    one, two = ingest_urls(cluster)
    mod = {"Authorization": "Bearer " + cluster.token("mod", roles=("moderator",))}
    async with httpx.AsyncClient() as c:
        r = await c.post(f"{one}/v1/videos/vb/bans", json={"user_id": "troll", "mode": "overt"}, headers=mod)
        assert r.status_code in (200, 201), r.text
        with trio.fail_after(15):  # the other node's cache follows within about a second
            while True:
                r = await c.post(f"{two}/v1/videos/vb/comments", json={"text": "hi"}, headers=cluster.auth("troll"))
                if r.status_code == 403:
                    break
                assert r.status_code == 201, r.text
                await trio.sleep(0.2)
        assert r.json()["error"] == "banned"


async def test_automod_in_the_moderate_worker_removes_a_flagged_comment(cluster: ClusterProcess) -> None:
    async with open_sse(cluster.edge, "/v1/videos/vm/events") as viewer, httpx.AsyncClient(base_url=cluster.edge) as c:
        r = await c.post("/v1/videos/vm/comments", json={"text": "buy my spamword now"}, headers=cluster.auth("s1"))
        assert r.status_code == 201
        flagged = r.json()["id"]
        await viewer.wait_for(lambda: any(e.json()["id"] == flagged for e in viewer.named("remove")), "the remove event")
        history = (await c.get("/v1/videos/vm/comments")).json()["comments"]
        assert flagged not in [x["id"] for x in history]
