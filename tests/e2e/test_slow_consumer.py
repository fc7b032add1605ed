"""Slow consumers: a stalled viewer is dropped for, then disconnected; a slow one is told
what it missed with ``gap``; nobody else notices either."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.e2e.helpers import RawSSE, ids, metric, viewers, wait_until
from tests.e2e.sse import open_sse
from tests.support.server import ServerProcess

STUCK_S = 2
SETTINGS = {
    "LIVECOMMENTS_VIEWER_BUFFER": "4096",
    "LIVECOMMENTS_RATE_LIMIT": "100000/1s",  # one poster posts as fast as it likes
    # Big comments fill a stalled socket in few posts (the kernel buffers on both sides
    # have to fill before the room drops anything).
    "LIVECOMMENTS_MAX_TEXT": "50000",
    "LIVECOMMENTS_MAX_BODY": "262144",
}
BIG = "語" * 49_000  # ~150 KB of UTF-8 per comment
SMALL_RCVBUF = 4096  # the stalled client's receive buffer: its window is tiny
MAX_POSTS = 500  # ~75 MB: far more than any kernel buffers here


async def post_big(c: httpx.AsyncClient, video: str, headers: dict[str, str], n: int) -> dict[str, Any]:
    r = await c.post(f"/v1/videos/{video}/comments", json={"text": f"{n} {BIG}"}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def lone_reader(srv: ServerProcess, video: str) -> AsyncIterator[tuple[httpx.AsyncClient, RawSSE]]:
    """A client for posting, and the video's one viewer: a raw SSE socket with a tiny
    receive buffer that reads only when the test says so."""
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as c:
        viewer = await RawSSE.open(srv.port, f"/v1/videos/{video}/events?backlog=0", rcvbuf=SMALL_RCVBUF)
        with viewer.sock:
            await wait_until(lambda: viewers_are(c, video, 1), "the viewer in the room")
            yield c, viewer


async def post_until_dropped(c: httpx.AsyncClient, video: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Big comments, one after another, until the room drops one for a viewer."""
    posted: list[dict[str, Any]] = []
    while await metric(c, "livecomments_dropped_comments_total") == 0:
        assert len(posted) < MAX_POSTS, "the viewer never overflowed"
        posted.append(await post_big(c, video, headers, len(posted)))
    return posted


async def viewers_are(c: httpx.AsyncClient, video: str, n: int) -> bool:
    return await viewers(c, video) == n


async def stuck_disconnects(c: httpx.AsyncClient) -> bool:
    return await metric(c, "livecomments_stuck_disconnects_total") >= 1


async def test_stalled_viewer_is_disconnected_and_nobody_else_notices(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory({**SETTINGS, "LIVECOMMENTS_STUCK_S": str(STUCK_S)})
    video = "stalled"
    path = f"/v1/videos/{video}/events?backlog=0"
    headers = srv.headers("poster")
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as c, open_sse(srv.url, path) as healthy:
        stalled = await RawSSE.open(srv.port, path, rcvbuf=SMALL_RCVBUF)  # and never reads
        with stalled.sock:
            await wait_until(lambda: viewers_are(c, video, 2), "both viewers in the room")

            # Fill the stalled viewer's socket and queue until the room drops for it. One
            # post at a time, each received by the healthy viewer before the next: its
            # socket always takes a whole batch at once, so the room never drops for it.
            posted: list[dict[str, Any]] = []
            while await metric(c, "livecomments_dropped_comments_total") == 0:
                assert len(posted) < MAX_POSTS, "the stalled viewer never overflowed"
                posted.append(await post_big(c, video, headers, len(posted)))
                await healthy.wait_comments(len(posted))
                assert healthy.named("gap") == []
            # A few more while it is behind: dropped for it, delivered to the other.
            for _ in range(3):
                posted.append(await post_big(c, video, headers, len(posted)))
                await healthy.wait_comments(len(posted))

            # The server stays responsive meanwhile.
            assert (await c.get("/healthz")).status_code == 200
            r = await c.get(f"/v1/videos/{video}/comments", params={"limit": "5"})
            assert r.status_code == 200 and len(r.json()["comments"]) == 5

            # After STUCK_S without progress the stalled viewer is disconnected ...
            await wait_until(lambda: stuck_disconnects(c), "the stuck disconnect")
            await wait_until(lambda: viewers_are(c, video, 1), "the stalled viewer to leave the room")
            # ... which it finds out when it finally reads: what was sent, then the end, a
            # reset (a FIN would wait behind the bytes it never read, and so would the
            # kernel memory of the closed socket).
            await stalled.read_to_end()
            assert stalled.ended and stalled.reset
            assert stalled.response is not None and stalled.response.status_code == 200
            got = stalled.comment_ids()
            assert len(got) < len(posted)
            assert got == ids(posted)[: len(got)]  # a prefix: nothing out of order

        # The healthy viewer got every comment, in order, and keeps getting them.
        after = await post_big(c, video, headers, len(posted))
        await healthy.wait_comments(len(posted) + 1)
        assert healthy.comment_ids() == ids([*posted, after])
        assert healthy.named("gap") == [] and not healthy.ended


async def test_slow_reader_gets_a_gap_event(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory({**SETTINGS, "LIVECOMMENTS_STUCK_S": "120"})
    video = "slowpoke"
    headers = srv.headers("poster")
    async with lone_reader(srv, video) as (c, slow):
        posted = await post_until_dropped(c, video, headers)
        for _ in range(2):
            posted.append(await post_big(c, video, headers, len(posted)))

        # Now it reads: the backlog of its socket, then a gap notice.
        await slow.read_until(lambda: bool(slow.events("gap")), "a gap event")
        missed = [e.json()["missed"] for e in slow.events("gap")]
        assert all(isinstance(m, int) and m > 0 for m in missed), missed

        # Reading again, it is live: a new comment arrives, and every comment was either
        # delivered or counted as missed.
        marker = await post_big(c, video, headers, len(posted))
        posted.append(marker)
        await slow.read_until(lambda: marker["id"] in slow.comment_ids(), "the comment after the gap")
        got = slow.comment_ids()
        assert set(got) <= set(ids(posted))
        assert got == sorted(got, key=int)
        assert got[-1] == marker["id"]
        missed = [e.json()["missed"] for e in slow.events("gap")]
        assert len(got) + sum(missed) == len(posted), (len(got), missed, len(posted))
        assert await metric(c, "livecomments_dropped_comments_total") == sum(missed)
        assert await metric(c, "livecomments_stuck_disconnects_total") == 0


async def test_a_stalled_viewer_pins_little_kernel_memory(server_factory: Callable[..., ServerProcess]) -> None:
    """The stream socket's send buffer is fixed (``VIEWER_SNDBUF``), not autotuned up to
    tcp_wmem's megabytes: a stalled viewer reaches the room's own drop policy after about
    the kernel buffers plus ``VIEWER_BUFFER``, not after megabytes."""
    sndbuf = 16384
    srv = server_factory({**SETTINGS, "LIVECOMMENTS_STUCK_S": "120", "LIVECOMMENTS_VIEWER_SNDBUF": str(sndbuf)})
    video = "pinned"
    async with lone_reader(srv, video) as (c, _stalled):
        posted = len(await post_until_dropped(c, video, srv.headers("poster")))
        # The kernel doubles SO_SNDBUF and the receive side holds a little more: a few
        # comments of ~150 KB, where an autotuned buffer (4 MiB here) takes about thirty.
        held = 2 * sndbuf + 8 * SMALL_RCVBUF + int(SETTINGS["LIVECOMMENTS_VIEWER_BUFFER"])
        assert posted <= held // len(BIG.encode()) + 3, posted
