"""GET /v1/videos/{video_id}/ws: the same events as SSE, as JSON text frames."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio_websocket

from tests.e2e.helpers import fresh_user, ids, open_ws, post, post_many, ws_url
from tests.support.server import ServerProcess


def ws(video: str, query: str = "") -> str:
    return f"/v1/videos/{video}/ws" + (f"?{query}" if query else "")


async def test_backlog_then_live(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 6)
    async with open_ws(server, ws(video)) as w:
        got = await w.wait_comments(6)
        assert got == [{"type": "comment", **c} for c in posted]  # oldest first, every field
        live = await post(client, server, video, "live", client_id="cid-1")
        await w.wait_for(lambda: live["id"] in w.comment_ids(), "the live comment")
        assert w.of_type("comment")[-1] == {"type": "comment", **live}
        assert w.comment_ids() == [*ids(posted), live["id"]]


async def test_backlog_parameter(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 6)
    async with open_ws(server, ws(video, "backlog=2")) as w:
        await w.wait_comments(2)
        live = await post(client, server, video, "live")
        await w.wait_comments(3)
        assert w.comment_ids() == [*ids(posted[-2:]), live["id"]]


async def test_last_event_id_parameter(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 6)
    async with open_ws(server, ws(video, f"last_event_id={posted[2]['id']}")) as w:
        await w.wait_comments(3)
        live = await post(client, server, video, "live")
        await w.wait_comments(4)
        assert w.comment_ids() == [*ids(posted[3:]), live["id"]]
        assert w.of_type("reset") == []


async def test_resume_message_replays(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 5)
    async with open_ws(server, ws(video, "backlog=1")) as w:
        await w.wait_comments(1)
        assert w.comment_ids() == [posted[-1]["id"]]
        await w.send({"type": "resume", "after": posted[1]["id"]})
        await w.wait_comments(4)
        assert w.comment_ids() == [posted[-1]["id"], *ids(posted[2:])]
        # Live comments keep coming after a resume.
        live = await post(client, server, video, "live")
        await w.wait_comments(5)
        assert w.comment_ids()[-1] == live["id"]
        # A resume from the newest id replays nothing; then live again.
        await w.send({"type": "resume", "after": live["id"]})
        live2 = await post(client, server, video, "live 2")
        await w.wait_comments(6)
        assert w.comment_ids()[-2:] == [live["id"], live2["id"]]


async def test_bad_messages_do_not_end_the_stream(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    async with open_ws(server, ws(video, "backlog=0")) as w:
        for bad in ["not json", "[]", '{"type": "resume", "after": "abc"}', '{"type": "dance"}']:
            await w.ws.send_message(bad)
        live = await post(client, server, video, "still here")
        await w.wait_for(lambda: live["id"] in w.comment_ids(), "a live comment after bad messages")
        assert not w.ended


async def test_remove_event(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    author = fresh_user("author")
    c = await post(client, server, video, "oops", user=author)
    async with open_ws(server, ws(video)) as w:
        await w.wait_comments(1)
        r = await client.delete(f"/v1/videos/{video}/comments/{c['id']}", headers=server.headers(author))
        assert r.status_code == 204, r.text
        assert await w.wait_type("remove") == {"type": "remove", "id": c["id"]}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (ws("bad.video"), 404),
        (ws("v" * 65), 404),
        (ws("ok_video", "backlog=201"), 400),
        (ws("ok_video", "backlog=x"), 400),
        (ws("ok_video", "last_event_id=abc"), 400),
    ],
)
async def test_invalid_handshake_is_rejected(server: ServerProcess, path: str, status: int) -> None:
    with trio.fail_after(10), pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(ws_url(server, path)):
            pass
    assert info.value.status_code == status
    body = json.loads(info.value.body or b"{}")
    assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body
