"""GET /v1/videos/{video_id}/events: the Server-Sent Events stream, on the lean path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.helpers import assert_error, ids, post, post_many
from tests.e2e.sse import Event, SSEParser, open_sse
from tests.support.server import ServerProcess


def events(video: str) -> str:
    return f"/v1/videos/{video}/events"


# -- the parser the tests rely on -----------------------------------------------------------


def test_parser_follows_the_event_stream_rules() -> None:
    p = SSEParser()
    items = p.feed(b'\xef\xbb\xbfretry: 2500\n: hello\n\nevent: comment\nid: 7\ndata: {"a":\n')
    assert p.retry == 2500
    assert [type(i).__name__ for i in items] == ["CommentLine"]
    items = p.feed(b"data: 1}\r\n\r")  # CRLF, then a lone CR split from its LF
    assert items == []
    items = p.feed(b"\n")
    assert items == [Event("comment", '{"a":\n1}', "7", True)]
    items = p.feed(b"data:x\rid\r\rdata\n\nretry: soon\nevent: gap\ndata: {}\n\n")
    assert items == [Event("message", "x", "", True), Event("message", "", "", False), Event("gap", "{}", "", False)]
    assert p.retry == 2500  # non-digit retry ignored
    assert p.feed("id: \0\ndata: é\n\n".encode()) == [Event("message", "é", "", False)]


# -- connecting ------------------------------------------------------------------------------


async def test_head_arrives_at_once(server: ServerProcess, video: str) -> None:
    # Nothing to send yet: the head still comes without waiting for a first event.
    with trio.fail_after(5):
        async with open_sse(server.url, events(video)) as s:
            ctype = s.response.headers["content-type"]
            assert ctype.startswith("text/event-stream"), ctype
            assert "no-cache" in s.response.headers.get("cache-control", "")
            await s.wait_for(lambda: s.retry is not None, "the retry: field")
            assert s.retry is not None and s.retry > 0
            assert s.events == []


async def test_default_backlog_is_the_newest_50_oldest_first(
    client: httpx.AsyncClient, server: ServerProcess, video: str
) -> None:
    posted = await post_many(client, server, video, 60)
    async with open_sse(server.url, events(video)) as s:
        got = await s.wait_comments(50)
        assert ids(got) == ids(posted[-50:])
        assert got == posted[-50:]  # the same objects as the 201 answers
        # Every comment event carries its id as the SSE id.
        assert all(e.own_id and e.id == e.json()["id"] for e in s.named("comment"))
        # Then live ones, after the backlog.
        live = await post(client, server, video, "live one")
        await s.wait_comment_id(live["id"])
        assert s.comment_ids() == [*ids(posted[-50:]), live["id"]]


async def test_backlog_parameter(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 12)
    async with open_sse(server.url, events(video), params={"backlog": 5}) as s:
        assert ids(await s.wait_comments(5)) == ids(posted[-5:])
        live = await post(client, server, video, "after five")
        await s.wait_comment_id(live["id"])
        assert s.comment_ids() == [*ids(posted[-5:]), live["id"]]
    async with open_sse(server.url, events(video), params={"backlog": 200}) as s:
        assert ids(await s.wait_comments(13)) == [*ids(posted), live["id"]]


async def test_backlog_zero_sends_only_live_comments(
    client: httpx.AsyncClient, server: ServerProcess, video: str
) -> None:
    await post_many(client, server, video, 3)
    async with open_sse(server.url, events(video), params={"backlog": "0"}) as s:
        live = await post(client, server, video, "only me")
        await s.wait_comment_id(live["id"])
        assert s.comment_ids() == [live["id"]]


@pytest.mark.parametrize("backlog", ["201", "-1", "abc", "1.5", "1e2", "99999999999999999999999"])
async def test_backlog_out_of_range_is_400(client: httpx.AsyncClient, video: str, backlog: str) -> None:
    # The lean path answers on a fresh connection; the ASGI app on a kept-alive one.
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=10) as fresh:
        assert_error(await fresh.get(events(video), params={"backlog": backlog}), 400)
    await client.get("/healthz")
    assert_error(await client.get(events(video), params={"backlog": backlog}), 400)


async def test_bad_token_on_a_stream_is_401(server: ServerProcess, video: str) -> None:
    expired = server.token("someone", ttl_s=-60)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        for token in ["garbage", expired]:
            assert_error(await c.get(events(video), params={"token": token}), 401)
    # A good one is accepted (watching with a token is how a user sees their own shadowed comments).
    async with open_sse(server.url, events(video), params={"token": server.token("someone")}) as s:
        await s.wait_for(lambda: s.retry is not None, "the stream to start")


# -- replay ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
async def test_last_event_id_replays_what_came_after(
    client: httpx.AsyncClient, server: ServerProcess, video: str, how: str
) -> None:
    posted = await post_many(client, server, video, 10)
    cursor = posted[3]["id"]
    kw: dict[str, dict[str, str]] = (
        {"headers": {"Last-Event-ID": cursor}} if how == "header" else {"params": {"last_event_id": cursor}}
    )
    async with open_sse(server.url, events(video), **kw) as s:  # type: ignore[arg-type]
        assert ids(await s.wait_comments(6)) == ids(posted[4:])
        live = await post(client, server, video, "live")
        await s.wait_comment_id(live["id"])
        assert s.comment_ids() == [*ids(posted[4:]), live["id"]]
        assert s.named("reset") == []


async def test_cursor_that_is_not_a_comment_id(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 3)
    # Ids from one millisecond are consecutive: post until two are not, and aim between them.
    while int(posted[-1]["id"]) - int(posted[-2]["id"]) < 2 and len(posted) < 50:
        posted.append(await post(client, server, video, "more"))
    gap = len(posted) - 1
    between = str(int(posted[gap - 1]["id"]) + 1)  # no such comment
    assert between not in ids(posted)
    posted += await post_many(client, server, video, 3, prefix="after")
    async with open_sse(server.url, events(video), headers={"Last-Event-ID": between}) as s:
        assert ids(await s.wait_comments(len(posted) - gap)) == ids(posted[gap:])
    # Newer than everything: nothing to replay, then live.
    newest = str(int(posted[-1]["id"]) + 1)
    async with open_sse(server.url, events(video), headers={"Last-Event-ID": newest}) as s:
        live = await post(client, server, video, "next")
        await s.wait_comment_id(live["id"])
        assert s.comment_ids() == [live["id"]]
    # "0" is before everything: all of them.
    async with open_sse(server.url, events(video), headers={"Last-Event-ID": "0"}) as s:
        assert ids(await s.wait_comments(len(posted) + 1)) == [*ids(posted), live["id"]]


@pytest.mark.parametrize("cursor", ["abc", "-1", "1.5", "12ab", "0x10", "99999999999999999999", "١٢٣"])
async def test_garbage_last_event_id_is_400(server: ServerProcess, video: str, cursor: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
        if cursor.isascii():
            assert_error(await c.get(events(video), headers={"Last-Event-ID": cursor}), 400)
        assert_error(await c.get(events(video), params={"last_event_id": cursor}), 400)


async def test_cursor_older_than_retained_gets_reset_then_backlog(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory({"LIVECOMMENTS_RING_SIZE": "5", "LIVECOMMENTS_REPLAY_MAX": "5"})
    video = "resetme"
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as c:
        posted = await post_many(c, srv, video, 20)
        async with open_sse(srv.url, events(video), headers={"Last-Event-ID": posted[2]["id"]}) as s:
            await s.wait_comments(5)
            kinds = [e.event for e in s.events]
            assert kinds[0] == "reset", kinds
            assert kinds.count("reset") == 1
            assert s.comment_ids() == ids(posted[-5:])
            live = await post(c, srv, video, "live after reset")
            await s.wait_comment_id(live["id"])
            assert s.comment_ids() == [*ids(posted[-5:]), live["id"]]
        # A cursor the ring still covers replays without a reset.
        async with open_sse(srv.url, events(video), headers={"Last-Event-ID": posted[-3]["id"]}) as s:
            assert ids(await s.wait_comments(3)) == [*ids(posted[-2:]), live["id"]]
            assert s.named("reset") == []


async def test_heartbeat_comment_lines(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory({"LIVECOMMENTS_HEARTBEAT_S": "0.2", "LIVECOMMENTS_RETRY_MS": "1234"})
    async with open_sse(srv.url, events("beats")) as s:
        await s.wait_for(lambda: len(s.comment_lines) >= 2, "two heartbeats")
        assert s.retry == 1234
        assert s.events == []  # heartbeats are comments, not events
        # Heartbeats do not disturb comments.
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as c:
            live = await post(c, srv, "beats", "between beats")
        await s.wait_comment_id(live["id"])
        await s.wait_for(lambda: len(s.comment_lines) >= 4, "more heartbeats")


# -- removal -------------------------------------------------------------------------------------


async def test_remove_event_after_author_deletes(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    keep = await post(client, server, video, "keep me")
    async with open_sse(server.url, events(video)) as s:
        await s.wait_comment_id(keep["id"])
        author = "author-" + video
        mine = await post(client, server, video, "delete me", user=author)
        await s.wait_comment_id(mine["id"])
        r = await client.delete(f"/v1/videos/{video}/comments/{mine['id']}", headers=server.headers(author))
        assert r.status_code == 204, r.text
        removed = await s.wait_event("remove")
        assert removed.json() == {"id": mine["id"]}
        # Other viewers connecting now never see it.
        async with open_sse(server.url, events(video)) as s2:
            live = await post(client, server, video, "marker")
            await s2.wait_comment_id(live["id"])
            assert s2.comment_ids() == [keep["id"], live["id"]]


async def test_live_comments_arrive_in_id_order(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    """Concurrent posts finish in any order; viewers still get them in id order, or a
    client reconnecting with the last id it saw would skip or repeat comments."""
    async with open_sse(server.url, events(video), params={"backlog": "0"}) as s:
        posted: list[dict[str, Any]] = []
        for _ in range(10):
            posted += await post_many(client, server, video, 8, concurrency=8)
        await s.wait_comments(len(posted))
        assert sorted(s.comment_ids()) == sorted(ids(posted))  # every one arrived ...
        assert s.comment_ids() == ids(sorted(posted, key=lambda c: int(c["id"])))  # ... in id order
