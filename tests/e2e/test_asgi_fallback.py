"""A stream request on a connection Hypercorn already serves goes through the ASGI app's
SSE route: it must behave like the lean path (backlog, live, replay, remove)."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import fresh_user, ids, metric, post, post_many
from tests.e2e.sse import WAIT_S, open_sse
from tests.support.server import ServerProcess


async def test_stream_after_a_post_on_the_same_connection(server: ServerProcess, video: str) -> None:
    path = f"/v1/videos/{video}/events"
    limits = httpx.Limits(max_connections=1)  # one connection: the stream must reuse the POST's
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(WAIT_S, read=None), limits=limits) as keep,
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as other,
    ):
        author = fresh_user("author")
        posted = [await post(keep, server, video, f"k{i}", user=author) for i in range(3)]
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
