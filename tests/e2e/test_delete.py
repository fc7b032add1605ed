"""DELETE /v1/videos/{video_id}/comments/{comment_id}: who may, and where the comment goes."""

from __future__ import annotations

import httpx

from tests.e2e.helpers import assert_error, fresh_user, ids, open_ws, post
from tests.e2e.sse import open_sse
from tests.support.server import ServerProcess


def comment_url(video: str, comment_id: str) -> str:
    return f"/v1/videos/{video}/comments/{comment_id}"


async def test_who_may_delete(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    author = fresh_user("author")
    a = await post(client, server, video, "by the author", user=author)
    b = await post(client, server, video, "for the streamer", user=author)
    c = await post(client, server, video, "for the moderator", user=author)
    d = await post(client, server, video, "for the admin", user=author)

    # Anyone else: 403; a streamer of another video: 403; no token: 401.
    assert_error(await client.delete(comment_url(video, a["id"]), headers=server.headers(fresh_user())), 403)
    other_streamer = server.headers(fresh_user(), streams=["someone_elses_video"])
    assert_error(await client.delete(comment_url(video, a["id"]), headers=other_streamer), 403)
    assert_error(await client.delete(comment_url(video, a["id"])), 401)
    assert_error(await client.delete(comment_url(video, a["id"]), headers={"Authorization": "Bearer nope"}), 401)

    r = await client.delete(comment_url(video, a["id"]), headers=server.headers(author))
    assert r.status_code == 204, r.text
    assert r.content == b""
    r = await client.delete(comment_url(video, b["id"]), headers=server.headers(fresh_user(), streams=[video]))
    assert r.status_code == 204, r.text
    r = await client.delete(comment_url(video, c["id"]), headers=server.headers(fresh_user(), roles=["moderator"]))
    assert r.status_code == 204, r.text
    r = await client.delete(comment_url(video, d["id"]), headers=server.headers(fresh_user(), roles=["admin"]))
    assert r.status_code == 204, r.text

    # Gone: deleting again, or an id that never existed, is 404; a bad id is 400.
    assert_error(await client.delete(comment_url(video, a["id"]), headers=server.headers(author)), 404)
    assert_error(await client.delete(comment_url(video, "12345"), headers=server.headers(author)), 404)
    assert_error(await client.delete(comment_url(video, "abc"), headers=server.headers(author)), 400)
    # The comment belongs to its video: the same id under another video is not found.
    e = await post(client, server, video, "stays", user=author)
    assert_error(await client.delete(comment_url(video + "_x", e["id"]), headers=server.headers(author)), 404)
    history = (await client.get(f"/v1/videos/{video}/comments")).json()["comments"]
    assert ids(history) == [e["id"]]


async def test_deleted_comment_is_gone_everywhere(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    author = fresh_user("author")
    before = await post(client, server, video, "before")
    doomed = await post(client, server, video, "doomed", user=author)
    after = await post(client, server, video, "after")
    base = f"/v1/videos/{video}"

    async with open_sse(server.url, f"{base}/events") as sse, open_ws(server, f"{base}/ws") as ws:
        await sse.wait_comments(3)
        await ws.wait_comments(3)
        r = await client.delete(comment_url(video, doomed["id"]), headers=server.headers(author))
        assert r.status_code == 204, r.text
        assert (await sse.wait_event("remove")).json() == {"id": doomed["id"]}
        assert await ws.wait_type("remove") == {"type": "remove", "id": doomed["id"]}

    # History.
    history = (await client.get(f"{base}/comments")).json()
    assert ids(history["comments"]) == [after["id"], before["id"]]
    # Long-poll: not among the comments, listed as removed.
    poll = (await client.get(f"{base}/comments", params={"after": "0", "wait": "0"})).json()
    assert ids(poll["comments"]) == [before["id"], after["id"]]
    assert doomed["id"] in poll["removed"]
    # Snapshot: same.
    snap = (await client.get(f"{base}/snapshot.json")).json()
    assert ids(snap["comments"]) == [before["id"], after["id"]]
    assert doomed["id"] in snap["removed"]
    # Backlog of a new SSE viewer, and replay from a cursor before it.
    async with open_sse(server.url, f"{base}/events") as sse:
        await sse.wait_comments(2)
        marker = await post(client, server, video, "marker")
        await sse.wait_comment_id(marker["id"])
        assert sse.comment_ids() == [before["id"], after["id"], marker["id"]]
    async with open_sse(server.url, f"{base}/events", headers={"Last-Event-ID": before["id"]}) as sse:
        await sse.wait_comments(2)
        assert sse.comment_ids() == [after["id"], marker["id"]]
    # Backlog of a new WebSocket viewer.
    async with open_ws(server, f"{base}/ws") as ws:
        await ws.wait_comments(3)
        assert ws.comment_ids() == [before["id"], after["id"], marker["id"]]
