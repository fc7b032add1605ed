"""Tiers with real connections on one node: thresholds scaled down to a handful of viewers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import trio

from tests.e2e.sse import SSEStream, open_sse
from tests.support.server import ServerProcess

TIERS = {
    "LIVECOMMENTS_TIER_SAMPLED_AT": "3",
    "LIVECOMMENTS_TIER_SAMPLED_BELOW": "2",
    "LIVECOMMENTS_TIER_CDN_AT": "5",
    "LIVECOMMENTS_TIER_CDN_BELOW": "4",
    "LIVECOMMENTS_TIER_MIN_DWELL_S": "0",
    "LIVECOMMENTS_RATE_LIMIT": "100000/1s",
}


async def stats(srv: ServerProcess, video: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=srv.url) as c:
        r = await c.get(f"/v1/videos/{video}/stats")
        assert r.status_code == 200
        return dict(r.json())


async def tier_rounds(srv: ServerProcess) -> int:
    async with httpx.AsyncClient(base_url=srv.url) as c:
        text = (await c.get("/metrics")).text
    m = re.search(r"^livecomments_tier_evaluations_total (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else 0


async def after_two_rounds(srv: ServerProcess) -> None:
    """Return once the tier loop has run twice more (so a decision had its chance)."""
    start = await tier_rounds(srv)
    with trio.fail_after(10):
        while await tier_rounds(srv) < start + 2:  # noqa: ASYNC110 - another process: poll its metrics
            await trio.sleep(0.05)


@asynccontextmanager
async def viewers(srv: ServerProcess, video: str, n: int, **params: str) -> AsyncIterator[list[SSEStream]]:
    async with AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(open_sse(srv.url, f"/v1/videos/{video}/events", params=params)) for _ in range(n)]
        yield streams


async def post(srv: ServerProcess, video: str, user: str, text: str, **token: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=srv.url) as c:
        r = await c.post(f"/v1/videos/{video}/comments", json={"text": text}, headers=srv.headers(user, **token))
        assert r.status_code == 201, r.text
        return dict(r.json())


async def test_a_video_goes_up_through_sampled_and_cdn_and_back_down(server_factory: Any, video: str) -> None:
    srv = server_factory(TIERS)
    async with viewers(srv, video, 1) as first:
        assert (await stats(srv, video))["mode"] == "push"
        async with viewers(srv, video, 2) as more:
            ev = await first[0].wait_event("mode")  # 3 viewers
            assert ev.json()["mode"] == "sampled"
            async with viewers(srv, video, 2):
                ev = await first[0].wait_event("mode", 2)  # 5 viewers
                assert ev.json() == {"mode": "cdn", "snapshot_url": f"/v1/videos/{video}/snapshot.json", "interval_ms": 1000}
                await more[0].wait_event("mode", 2)
            ev = await first[0].wait_event("mode", 3)  # 3 viewers: below cdn_below (4)
            assert ev.json()["mode"] == "sampled"
        ev = await first[0].wait_event("mode", 4)  # 1 viewer: below sampled_below (2)
        assert ev.json()["mode"] == "push"
        assert (await stats(srv, video))["mode"] == "push"


async def test_a_late_joiner_is_told_the_mode_on_connect(server_factory: Any, video: str) -> None:
    srv = server_factory(TIERS)
    async with viewers(srv, video, 3) as crowd:
        await crowd[0].wait_event("mode")
        async with viewers(srv, video, 1) as late:
            ev = await late[0].wait_event("mode")
            assert ev.json()["mode"] == "sampled"


async def test_viewers_oscillating_inside_the_band_do_not_flap(server_factory: Any, video: str) -> None:
    srv = server_factory(TIERS)
    async with viewers(srv, video, 2) as base:
        async with viewers(srv, video, 1):
            await base[0].wait_event("mode")  # sampled at 3
        for _ in range(3):  # 2 <-> 3 viewers: never below sampled_below (2)
            await after_two_rounds(srv)
            async with viewers(srv, video, 1):
                await after_two_rounds(srv)
        await after_two_rounds(srv)
        assert [e.json()["mode"] for e in base[0].named("mode")] == ["sampled"]
        assert (await stats(srv, video))["mode"] == "sampled"


async def test_sampled_mode_keeps_the_streamer_and_the_authors_own(server_factory: Any, video: str) -> None:
    srv = server_factory({**TIERS, "LIVECOMMENTS_SAMPLE_TARGET_PER_S": "1"})
    author_token = srv.token("author")
    async with viewers(srv, video, 2) as crowd, viewers(srv, video, 1, token=author_token) as mine:
        await crowd[0].wait_event("mode")
        await mine[0].wait_event("mode")
        posted = [await post(srv, video, "author", f"flood {i}") for i in range(40)]
        streamer = await post(srv, video, "host", "from the streamer", streams=[video])
        # the author sees every one of their own comments, and the streamer's
        await mine[0].wait_for(
            lambda: {c["id"] for c in posted} | {streamer["id"]} <= set(mine[0].comment_ids()), "all own comments"
        )
        # another viewer gets the streamer's comment, and only a sample of the flood
        await crowd[0].wait_comment_id(streamer["id"])
        seen = set(crowd[0].comment_ids())
        assert len(seen & {c["id"] for c in posted}) < len(posted)


async def test_cdn_mode_pushes_no_comments_and_the_snapshot_has_them(server_factory: Any, video: str) -> None:
    srv = server_factory(TIERS)
    async with viewers(srv, video, 5) as crowd:
        await crowd[0].wait_for(lambda: any(e.json()["mode"] == "cdn" for e in crowd[0].named("mode")), "cdn mode")
        c = await post(srv, video, "u1", "into the snapshot")
        async with httpx.AsyncClient(base_url=srv.url) as client:
            with trio.fail_after(10):
                while True:
                    snap = (await client.get(f"/v1/videos/{video}/snapshot.json")).json()
                    if c["id"] in [x["id"] for x in snap["comments"]]:
                        break
                    await trio.sleep(0.1)
        assert c["id"] not in crowd[0].comment_ids()
