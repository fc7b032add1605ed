"""Two regions (``cluster up --regions 2``, 40 ms one way between them): write locally,
read globally. Presence stays in its region; a comment posted in region a is sent to
region b only when b has viewers of its video, keeps its id, and b's viewers see the
same comments in the same order as a's; a cut link loses nothing acknowledged.

One two-region cluster serves the module; each test uses videos of its own."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trio

from adapters.redis.client import open_redis
from adapters.redis.keys import Keys
from tests.cluster.harness import ClusterProcess, Poster, Viewer, check_complete_in_order, client, has_all, wait_for

PREFIX = "regions"
SETTLE_S = 30
SERIAL = itertools.count()  # every text its own (automod removes repeats)


@pytest.fixture(scope="module")
def regions(request: pytest.FixtureRequest) -> Iterator[ClusterProcess]:
    c = ClusterProcess(
        None, PREFIX, rms=1, ingest=1,
        env={"LIVECOMMENTS_RATE_LIMIT": "1000/1s"},
        args=["--regions", "2", "--region-delay-ms", "40"],
    ).start()  # fmt: skip
    failed = request.session.testsfailed
    yield c
    c.stop()
    if request.session.testsfailed > failed:
        print("".join(c.output[-40:]))
        for region in ("a", "b"):
            print(f"=== region {region}")
            sub = ClusterProcess(None, PREFIX, rms=1, ingest=1)
            sub.run_dir = c.run_dir / f"region-{region}"
            print(sub.logs())
    c.cleanup()


def edge(c: ClusterProcess, region: str) -> str:
    return str(c.info["regions"][region]["edge"])


def link_bytes(c: ClusterProcess) -> dict[str, int]:
    return {f"{link['from']}->{link['to']}": int(link["bytes"]) for link in c.refresh()["links"]}


@pytest.fixture
async def redis_of(regions: ClusterProcess) -> AsyncIterator[dict[str, Any]]:
    """Each region's own Redis, for looking (not through the links)."""
    async with open_redis(regions.info["regions"]["a"]["redis"]["url"]) as a, open_redis(
        regions.info["regions"]["b"]["redis"]["url"]
    ) as b:
        yield {"a": a, "b": b}


async def viewers_in(http: httpx.AsyncClient, base: str, video: str) -> int:
    r = await http.get(f"{base}/v1/videos/{video}/stats")
    return int(r.json()["viewers"]) if r.status_code == 200 else 0


async def start_viewers(
    nursery: trio.Nursery, http: httpx.AsyncClient, base: str, video: str, n: int, name: str
) -> list[Viewer]:
    viewers = [Viewer(base, video, f"{name}{i}") for i in range(n)]
    for v in viewers:
        await nursery.start(v.run, http)
    return viewers


async def post_n(http: httpx.AsyncClient, c: ClusterProcess, video: str, n: int) -> list[int]:
    """``n`` acknowledged posts in region a (the harness' edge), in turn."""
    ids = []
    for i in range(n):
        r = await http.post(
            f"{c.edge}/v1/videos/{video}/comments", json={"text": f"{video} says {next(SERIAL)}"},
            headers=c.auth(f"{video}-u{i % 5}"),
        )
        assert r.status_code == 201, r.text
        ids.append(int(r.json()["id"]))
    return ids


def poster_of(c: ClusterProcess, video: str, ids: list[int]) -> Poster:
    p = Poster(c, video)
    p.accepted = list(ids)
    p.statuses[201] = len(ids)
    return p


async def test_a_comment_reaches_only_regions_with_viewers_in_the_same_order(
    regions: ClusterProcess, redis_of: dict[str, Any]
) -> None:
    keys = Keys(PREFIX, 1)
    async with client() as http, trio.open_nursery() as nursery:
        in_b = await start_viewers(nursery, http, edge(regions, "b"), "both", 3, "b")
        in_a = await start_viewers(nursery, http, edge(regions, "a"), "both", 1, "a")
        await wait_for(lambda: viewers_in(http, edge(regions, "b"), "both"), SETTLE_S, "b's presence of 'both'")

        # Interleaved: comments of a video watched in b and of one watched nowhere but a.
        ids: list[int] = []
        lonely: list[int] = []
        for _ in range(10):
            ids += await post_n(http, regions, "both", 3)
            lonely += await post_n(http, regions, "aonly", 1)
        await wait_for(lambda: has_all(in_a + in_b, ids), SETTLE_S, "every viewer in both regions to have every comment")
        nursery.cancel_scope.cancel()

    check_complete_in_order(in_a + in_b, poster_of(regions, "both", ids))
    assert all(v.ids == in_a[0].ids for v in in_b)
    # Region b never received the other video: nothing in its hot store or its stream.
    assert await redis_of["b"].exists([keys.recent("aonly")]) == 0
    assert await redis_of["a"].exists([keys.recent("aonly")]) == 1

    # The forwarder's own count (written after each batch it sent).
    async def counted() -> bool:
        counts = {k.decode(): int(v) for k, v in (await redis_of["a"].hgetall(keys.forwarded("b"))).items()}
        return counts.get("comments", 0) >= len(ids) and counts.get("skipped", 0) >= len(lonely)

    await wait_for(counted, SETTLE_S, "the forwarder's counts")


async def test_cross_region_traffic_follows_comments_not_viewers(regions: ClusterProcess) -> None:
    base_b = edge(regions, "b")
    async with client() as http:
        # Quiet first: whatever earlier tests sent has been carried.
        seen: list[dict[str, int]] = []

        async def stable() -> bool:
            seen.append(link_bytes(regions))
            await trio.sleep(0.5)
            return len(seen) > 2 and seen[-1] == seen[-2] == seen[-3]

        await wait_for(stable, SETTLE_S, "the links to go quiet")
        before = link_bytes(regions)

        # Viewers join and leave in region b, in waves: b's presence moves, the links do not.
        for wave in range(3):
            async with trio.open_nursery() as nursery:
                await start_viewers(nursery, http, base_b, "churn", 15, f"w{wave}-")

                async def all_counted() -> bool:
                    return await viewers_in(http, base_b, "churn") >= 15

                await wait_for(all_counted, SETTLE_S, "b's presence to count the wave")
                nursery.cancel_scope.cancel()

        async def all_gone() -> bool:
            return await viewers_in(http, base_b, "churn") == 0

        await wait_for(all_gone, SETTLE_S, "b's presence to see them leave")
        assert link_bytes(regions) == before, "viewers joining and leaving crossed the regions"

        # Comments do cross, to where there are viewers.
        async with trio.open_nursery() as nursery:
            watcher = (await start_viewers(nursery, http, base_b, "churn", 1, "stay"))[0]

            async def counted() -> bool:
                return await viewers_in(http, base_b, "churn") >= 1

            await wait_for(counted, SETTLE_S, "b's presence of the last viewer")
            ids = await post_n(http, regions, "churn", 5)
            await wait_for(lambda: set(ids) <= set(watcher.ids), SETTLE_S, "the comments in b")
            nursery.cancel_scope.cancel()
        await wait_for(lambda: link_bytes(regions)["a->b"] > before["a->b"], SETTLE_S, "bytes on the a->b link")


async def test_a_cut_link_loses_nothing_and_catches_up_in_order(regions: ClusterProcess) -> None:
    flag = regions.run_dir / "links.down"
    async with client() as http, trio.open_nursery() as nursery:
        in_b = await start_viewers(nursery, http, edge(regions, "b"), "cut", 2, "b")
        in_a = await start_viewers(nursery, http, edge(regions, "a"), "cut", 1, "a")
        await wait_for(lambda: viewers_in(http, edge(regions, "b"), "cut"), SETTLE_S, "b's presence of 'cut'")

        flag.touch()
        try:
            await wait_for(lambda: all(link["down"] for link in regions.refresh()["links"]), SETTLE_S, "the links cut")
            ids = await post_n(http, regions, "cut", 20)  # acknowledged in region a
            await wait_for(lambda: has_all(in_a, ids), SETTLE_S, "region a's viewer to have them")
            assert all(not v.ids for v in in_b), "comments crossed a cut link"
        finally:
            flag.unlink(missing_ok=True)
        await wait_for(lambda: has_all(in_b, ids), SETTLE_S, "region b to catch up")
        nursery.cancel_scope.cancel()

    check_complete_in_order(in_a + in_b, poster_of(regions, "cut", ids))


async def test_status_shows_every_region_and_link(regions: ClusterProcess) -> None:
    status = await regions.status()
    assert set(status["regions"]) == {"a", "b"}
    for name, region in status["regions"].items():
        roles = sorted(n["role"] for n in region["processes"])
        assert roles.count("forward") == 1, (name, roles)
        assert region["healthy"], region
    assert {(link["from"], link["to"]) for link in status["links"]} == {("a", "b"), ("b", "a")}


async def test_a_removal_follows_the_comment_to_the_other_region(regions: ClusterProcess) -> None:
    async with client() as http, trio.open_nursery() as nursery:
        in_b = await start_viewers(nursery, http, edge(regions, "b"), "del", 2, "b")
        in_a = await start_viewers(nursery, http, edge(regions, "a"), "del", 1, "a")
        await wait_for(lambda: viewers_in(http, edge(regions, "b"), "del"), SETTLE_S, "b's presence of 'del'")
        ids = await post_n(http, regions, "del", 3)
        await wait_for(lambda: has_all(in_a + in_b, ids), SETTLE_S, "the comments in both regions")
        # post_n's i-th post is by user del-u{i}: the author deletes it in region a.
        r = await http.delete(f"{regions.edge}/v1/videos/del/comments/{ids[1]}", headers=regions.auth("del-u1"))
        assert r.status_code in (200, 204), r.text
        await wait_for(lambda: all(ids[1] in v.removed for v in in_a + in_b), SETTLE_S, "the removal in both regions")
        history = await http.get(f"{edge(regions, 'b')}/v1/videos/del/comments?before={2**63 - 1}&limit=10")
        nursery.cancel_scope.cancel()
    assert history.status_code == 200, history.text
    assert {int(c["id"]) for c in history.json()["comments"]} == {ids[0], ids[2]}
