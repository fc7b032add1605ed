"""Graceful shutdown and restart: goaway to viewers, a clean exit, nothing acknowledged lost."""

from __future__ import annotations

import functools
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import trio

from tests.e2e.helpers import fresh_user, ids, post, post_many
from tests.e2e.sse import WAIT_S, SSEStream, open_sse
from tests.support.server import ServerProcess

EXIT_TIMEOUT_S = 15  # the server drains for at most shutdown_grace_s (5 s) and then exits
MAX_POSTS = 150  # stays below the largest backlog (200), so the backlog can show all of them


async def sigterm(srv: ServerProcess) -> int:
    """SIGTERM the server and wait (in a thread) for it to exit; its exit code."""
    proc = srv.proc
    assert proc is not None
    try:
        return await trio.to_thread.run_sync(functools.partial(srv.stop, signal.SIGTERM, EXIT_TIMEOUT_S))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the server did not exit within {EXIT_TIMEOUT_S} s of SIGTERM") from None


async def history_ids(c: httpx.AsyncClient, video: str) -> list[str]:
    out: list[str] = []
    params = {"limit": "200"}
    while True:
        page = (await c.get(f"/v1/videos/{video}/comments", params=params)).json()
        out += ids(page["comments"])
        if page["next"] is None:
            return out
        params = {"limit": "200", "before": page["next"]}


async def test_sigterm_drains_and_loses_nothing_acknowledged(live_server: ServerProcess) -> None:
    srv = live_server
    video = "draining"
    events = f"/v1/videos/{video}/events"
    acked: list[dict[str, Any]] = []
    refused: list[int] = []
    enough_posted = trio.Event()
    viewers_ready = [trio.Event(), trio.Event()]
    goaways: dict[str, Any] = {}

    async with httpx.AsyncClient(base_url=srv.url, timeout=WAIT_S) as c:
        acked.append(await post(c, srv, video, "before anyone watches"))

    async def viewer(name: str, ready: trio.Event) -> None:
        async with open_sse(srv.url, events) as s:
            await s.wait_comments(1)
            ready.set()
            goaways[name] = (await s.wait_event("goaway")).data
        # Leaving on goaway, as a client should, lets the server finish draining early.

    async def poster() -> None:
        async with httpx.AsyncClient(base_url=srv.url, timeout=WAIT_S) as pc:
            while len(acked) < MAX_POSTS:
                try:
                    r = await pc.post(
                        f"/v1/videos/{video}/comments",
                        json={"text": f"posted while stopping {len(acked)}"},
                        headers=srv.headers(fresh_user()),
                    )
                except httpx.HTTPError:
                    return  # refused or cut off: the server is going away
                if r.status_code == 201:
                    acked.append(r.json())
                    if len(acked) >= 20:
                        enough_posted.set()
                else:
                    refused.append(r.status_code)
                    assert r.status_code == 503, (r.status_code, r.text)  # draining, never a 500

    async with trio.open_nursery() as nursery:
        for i, ready in enumerate(viewers_ready):
            nursery.start_soon(viewer, f"viewer{i}", ready)
        for ready in viewers_ready:
            await ready.wait()
        for _ in range(4):
            nursery.start_soon(poster)
        with trio.fail_after(WAIT_S):
            await enough_posted.wait()
        assert await sigterm(srv) == 0

    assert set(goaways) == {"viewer0", "viewer1"}
    # The process is gone: nobody answers on the port.
    async with httpx.AsyncClient(base_url=srv.url, timeout=2) as c:
        try:
            await c.get("/healthz")
            raise AssertionError("the server still answers after it exited")
        except httpx.ConnectError:
            pass

    srv.start()
    async with httpx.AsyncClient(base_url=srv.url, timeout=WAIT_S) as c:
        stored = set(await history_ids(c, video))
        lost = [cm["id"] for cm in acked if cm["id"] not in stored]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged comments lost"
        async with open_sse(srv.url, events, params={"backlog": 200}) as s:
            await s.wait_comments(len(acked))
            shown = set(s.comment_ids())
            assert {cm["id"] for cm in acked} <= shown


async def test_reconnect_after_restart_gets_exactly_the_missed(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # This viewer does not leave on goaway: the server exits after its drain grace anyway.
    srv = server_factory({"LIVECOMMENTS_SHUTDOWN_GRACE_S": "1"})
    video = "restart"
    events = f"/v1/videos/{video}/events"
    async with httpx.AsyncClient(base_url=srv.url, timeout=WAIT_S) as c:
        seen = await post_many(c, srv, video, 3, concurrency=1)

    stream: SSEStream
    async with open_sse(srv.url, events) as stream:
        await stream.wait_comments(3)
        last_event_id = stream.parser.last_event_id  # what EventSource would send back
        assert last_event_id == seen[-1]["id"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.wait_event, "goaway")
            assert await sigterm(srv) == 0
        await stream.wait_end()

    srv.start()
    async with httpx.AsyncClient(base_url=srv.url, timeout=WAIT_S) as c:
        missed = await post_many(c, srv, video, 4, prefix="missed", concurrency=1)
        async with open_sse(srv.url, events, headers={"Last-Event-ID": last_event_id}) as s:
            await s.wait_comments(4)
            live = await post(c, srv, video, "live again")
            await s.wait_comment_id(live["id"])
            assert s.comment_ids() == [*ids(missed), live["id"]]
            assert s.named("reset") == []
