"""A stream request on a connection Hypercorn already serves goes through the ASGI app's
SSE route: it must behave like the lean path (backlog, live, replay, remove)."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import fresh_user, ids, metric, post, post_many
from tests.e2e.sse import WAIT_S, open_sse
from tests.support.server import ServerProcess


async def test_stream_after_another_request_on_the_same_connection(server: ServerProcess, video: str) -> None:
    path = f"/v1/videos/{video}/events"
    limits = httpx.Limits(max_connections=1)  # one connection: the stream must reuse the first request's
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(WAIT_S, read=None), limits=limits) as keep,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as other,
    ):
        author = fresh_user("author")
        posted = [await post(other, server, video, f"k{i}", user=author) for i in range(3)]
        # A first request that Hypercorn serves (posts are answered by the front door
        # itself, which keeps the connection): from then on Hypercorn owns the connection.
        assert (await keep.get(f"/v1/videos/{video}/comments")).status_code == 200
        asgi_before = await metric(other, "livecomments_connections_total", transport="sse-asgi")

        async with open_sse(server.url, path, client=keep) as s:
            assert s.response.headers["content-type"].startswith("text/event-stream")
            await s.wait_comments(3)
            assert s.comment_ids() == ids(posted)
            assert s.retry is not None
            assert await metric(other, "livecomments_connections_total", transport="sse-asgi") == asgi_before + 1

            live = await post_many(other, server, video, 4, prefix="live", concurrency=1)
            await s.wait_comments(7)
            assert s.comments() == [*posted, *live]

            r = await other.delete(f"/v1/videos/{video}/comments/{posted[0]['id']}", headers=server.headers(author))
            assert r.status_code == 204, r.text
            assert (await s.wait_event("remove")).json() == {"id": posted[0]["id"]}

        # Replay with Last-Event-ID on the fallback path too.
        await keep.get("/healthz")
        async with open_sse(server.url, path, client=keep, headers={"Last-Event-ID": live[1]["id"]}) as s:
            await s.wait_comments(2)
            assert s.comment_ids() == ids(live[2:])
        assert await metric(other, "livecomments_connections_total", transport="sse-asgi") == asgi_before + 2


async def test_posts_and_a_stream_on_one_keep_alive_connection_stay_on_the_lean_path(
    server: ServerProcess, video: str
) -> None:
    """The front door answers posts itself and keeps the connection, so a stream that
    follows on it is still served by the lean path."""
    limits = httpx.Limits(max_connections=1)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(WAIT_S, read=None), limits=limits) as keep,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as other,
    ):
        author = fresh_user("author")
        posted = [await post(keep, server, video, f"k{i}", user=author) for i in range(3)]
        asgi_before = await metric(other, "livecomments_connections_total", transport="sse-asgi")
        sse_before = await metric(other, "livecomments_connections_total", transport="sse")
        async with open_sse(server.url, f"/v1/videos/{video}/events", client=keep) as s:
            await s.wait_comments(3)
            assert s.comment_ids() == ids(posted)
            assert await metric(other, "livecomments_connections_total", transport="sse") == sse_before + 1
        assert await metric(other, "livecomments_connections_total", transport="sse-asgi") == asgi_before
