"""Shadow-ban edges a banned user could use to tell: the backlog of a room created again
(seeded from the store) must match what their history shows, on SSE and WebSocket; and a
shadowed post must change neither the public snapshot nor its ETag."""

from __future__ import annotations

import httpx

from tests.moderation.clients import fresh_user, history, ids, post, sse, ws
from tests.support.server import ServerProcess


async def shadow_ban(client: httpx.AsyncClient, server: ServerProcess, video: str, user: str) -> None:
    host = server.headers(fresh_user("host"), streams=[video])
    r = await client.post(f"/v1/videos/{video}/bans", json={"user_id": user, "mode": "shadow"}, headers=host)
    assert r.status_code == 201, r.text


async def test_a_recreated_room_gives_the_banned_author_the_backlog_their_history_shows(
    live_server: ServerProcess, video: str
) -> None:
    srv = live_server
    banned, other = fresh_user("shadow"), fresh_user()
    async with httpx.AsyncClient(base_url=srv.url) as client:
        await shadow_ban(client, srv, video, banned)
        hidden = []
        for i in range(3):
            await post(client, srv, video, other, f"public {i}")
            hidden.append((await post(client, srv, video, banned, f"hidden {i}"))["id"])
        marker = await post(client, srv, video, other, "the newest")
    # The room goes with the process; the next viewer's room loads its ring from the store.
    srv.stop()
    srv.start()
    mine = srv.token(banned)
    async with httpx.AsyncClient(base_url=srv.url) as client:
        shown = ids(await history(client, video, token=mine))[::-1]  # oldest first
    assert set(hidden) <= set(shown) and shown[-1] == marker["id"]
    async with sse(srv, video, token=mine) as own:
        await own.wait_comment(marker["id"])
        assert own.comment_ids() == shown
    async with ws(srv, video, token=mine) as own:
        await own.wait_comment(marker["id"])
        assert own.comment_ids() == shown
    # Everyone else still gets the public ones only.
    async with sse(srv, video) as anon:
        await anon.wait_comment(marker["id"])
        assert anon.comment_ids() == [c for c in shown if c not in hidden]


async def test_a_shadowed_post_changes_neither_the_public_snapshot_nor_its_etag(
    server: ServerProcess, video: str
) -> None:
    banned, other = fresh_user("shadow"), fresh_user()
    url = f"/v1/videos/{video}/snapshot.json"
    async with httpx.AsyncClient(base_url=server.url) as client:
        await shadow_ban(client, server, video, banned)
        first = await post(client, server, video, other, "public")
        async with sse(server, video, token=server.token(banned)) as own:
            await own.wait_comment(first["id"])
            before = await client.get(url)
            assert before.status_code == 200 and first["id"] in ids(before.json()["comments"])
            etag = before.headers["etag"]

            hidden = await post(client, server, video, banned, "only I can see this")
            await own.wait_comment(hidden["id"])  # the room has it now
            after = await client.get(url)
            assert after.status_code == 200
            assert after.content == before.content
            assert after.headers["etag"] == etag
            assert (await client.get(url, headers={"If-None-Match": etag})).status_code == 304

            # A public post does change both.
            second = await post(client, server, video, other, "public again")
            await own.wait_comment(second["id"])
            changed = await client.get(url, headers={"If-None-Match": etag})
            assert changed.status_code == 200 and changed.headers["etag"] != etag
            assert ids(changed.json()["comments"]) == [first["id"], second["id"]]
