"""Bans end to end: shadow bans reach only the banned user's own connections on every read
path (SSE, WebSocket, long-poll, history, snapshot, backlog); overt bans are 403; who may
ban whom."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.moderation.clients import (
    fresh_user,
    history,
    ids,
    long_poll,
    post,
    snapshot,
    sse,
    ws,
)
from tests.support.server import ServerProcess


async def ban(client: httpx.AsyncClient, headers: dict[str, str], video: str | None, user: str, mode: str, **extra: Any) -> httpx.Response:
    path = f"/v1/videos/{video}/bans" if video else "/v1/bans"
    return await client.post(path, json={"user_id": user, "mode": mode, **extra}, headers=headers)


async def unban(client: httpx.AsyncClient, headers: dict[str, str], video: str | None, user: str) -> httpx.Response:
    path = f"/v1/videos/{video}/bans/{user}" if video else f"/v1/bans/{user}"
    return await client.delete(path, headers=headers)


def streamer(server: ServerProcess, video: str) -> dict[str, str]:
    return server.headers(fresh_user("host"), streams=[video])


async def test_a_shadow_banned_comment_reaches_only_its_author(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned, other = fresh_user("shadow"), fresh_user()
    r = await ban(client, streamer(server, video), video, banned, "shadow", reason="spam")
    assert r.status_code == 201, r.text
    assert r.json() | {"created_at": 0} == {
        "video_id": video, "user_id": banned, "mode": "shadow", "reason": "spam", "actor": r.json()["actor"], "created_at": 0,
    }  # fmt: skip
    mine, theirs = server.token(banned), server.token(other)
    async with (
        sse(server, video) as anon_sse,
        sse(server, video, token=theirs) as other_sse,
        sse(server, video, token=mine) as own_sse,
        ws(server, video) as anon_ws,
        ws(server, video, token=theirs) as other_ws,
        ws(server, video, token=mine) as own_ws,
    ):
        hidden = await post(client, server, video, banned, "you cannot see me")
        marker = await post(client, server, video, other, "marker after the shadowed one")
        for own in (own_sse, own_ws):
            await own.wait_comment(marker["id"])
            assert own.comment_ids() == [hidden["id"], marker["id"]]
        for watcher in (anon_sse, other_sse, anon_ws, other_ws):
            await watcher.wait_comment(marker["id"])  # in order: the shadowed one would be before
            assert watcher.comment_ids() == [marker["id"]]
            assert hidden["id"] not in watcher.removed_ids()

    # Backlog on a new connection, for each kind of watcher.
    async with sse(server, video) as anon, sse(server, video, token=theirs) as others, sse(server, video, token=mine) as own:
        await own.wait_comment(marker["id"])
        await anon.wait_comment(marker["id"])
        await others.wait_comment(marker["id"])
        assert hidden["id"] in own.comment_ids()
        assert hidden["id"] not in anon.comment_ids() + others.comment_ids()
    async with ws(server, video) as anon, ws(server, video, token=mine) as own:
        await own.wait_comment(marker["id"])
        await anon.wait_comment(marker["id"])
        assert hidden["id"] in own.comment_ids()
        assert hidden["id"] not in anon.comment_ids()

    # History, long-poll and the snapshot.
    assert hidden["id"] in ids(await history(client, video, token=mine))
    for token in (None, theirs, server.token(fresh_user("mod"), roles=["moderator", "admin"])):
        assert hidden["id"] not in ids(await history(client, video, token=token))
        assert hidden["id"] not in ids((await long_poll(client, video, token=token))["comments"])
    assert hidden["id"] in ids((await long_poll(client, video, token=mine))["comments"])
    snap = await snapshot(client, video)
    assert hidden["id"] not in ids(snap["comments"]) + snap["removed"]
    assert marker["id"] in ids(snap["comments"])


async def test_a_shadowed_comment_stays_hidden_after_the_ban_is_lifted(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned = fresh_user("shadow")
    host = streamer(server, video)
    assert (await ban(client, host, video, banned, "shadow")).status_code == 201
    hidden = await post(client, server, video, banned, "while banned")
    r = await unban(client, host, video, banned)
    assert r.status_code == 204, r.text
    async with sse(server, video) as viewer:
        visible = await post(client, server, video, banned, "after the ban")
        await viewer.wait_comment(visible["id"])
        assert hidden["id"] not in viewer.comment_ids()
    assert hidden["id"] not in ids(await history(client, video))
    assert hidden["id"] in ids(await history(client, video, token=server.token(banned)))
    assert visible["id"] in ids(await history(client, video))


async def test_a_shadow_ban_is_per_video(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned = fresh_user("shadow")
    assert (await ban(client, streamer(server, video), video, banned, "shadow")).status_code == 201
    elsewhere = await post(client, server, f"{video}_other", banned, "fine over here")
    assert elsewhere["id"] in ids(await history(client, f"{video}_other"))


async def test_a_global_shadow_ban_hides_everywhere(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned = fresh_user("gshadow")
    admin = server.headers(fresh_user("admin"), roles=["admin"])
    r = await ban(client, admin, None, banned, "shadow")
    assert r.status_code == 201 and r.json()["video_id"] is None, r.text
    try:
        for v in (video, f"{video}_2"):
            c = await post(client, server, v, banned, "globally shadowed")
            assert c["id"] not in ids(await history(client, v))
            assert c["id"] in ids(await history(client, v, token=server.token(banned)))
    finally:
        assert (await unban(client, admin, None, banned)).status_code == 204


async def test_an_overtly_banned_user_gets_403_until_unbanned(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned = fresh_user("overt")
    host = streamer(server, video)
    assert (await ban(client, host, video, banned, "overt", reason="abuse")).status_code == 201
    r = await client.post(f"/v1/videos/{video}/comments", json={"text": "let me in"}, headers=server.headers(banned))
    assert r.status_code == 403
    assert r.json()["error"] == "banned"
    # Banned whatever the text; other videos are unaffected.
    r = await client.post(f"/v1/videos/{video}/comments", json={"text": ""}, headers=server.headers(banned))
    assert r.status_code == 403
    await post(client, server, f"{video}_other", banned, "still welcome here")
    assert (await unban(client, host, video, banned)).status_code == 204
    await post(client, server, video, banned, "back again")
    assert (await unban(client, host, video, banned)).status_code == 404


async def test_an_overt_ban_wins_over_a_shadow_ban(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned = fresh_user("both")
    admin = server.headers(fresh_user("admin"), roles=["admin"])
    assert (await ban(client, streamer(server, video), video, banned, "shadow")).status_code == 201
    assert (await ban(client, admin, None, banned, "overt")).status_code == 201
    try:
        r = await client.post(f"/v1/videos/{video}/comments", json={"text": "x"}, headers=server.headers(banned))
        assert r.status_code == 403
    finally:
        assert (await unban(client, admin, None, banned)).status_code == 204
    r = await client.post(f"/v1/videos/{video}/comments", json={"text": "x"}, headers=server.headers(banned))
    assert r.status_code == 201  # still shadowed on this video


async def test_re_banning_changes_the_mode(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned = fresh_user()
    host = streamer(server, video)
    assert (await ban(client, host, video, banned, "overt")).status_code == 201
    assert (await ban(client, host, video, banned, "shadow")).status_code == 201
    r = await client.post(f"/v1/videos/{video}/comments", json={"text": "x"}, headers=server.headers(banned))
    assert r.status_code == 201
    listed = (await client.get(f"/v1/videos/{video}/bans", headers=host)).json()["bans"]
    assert [(b["user_id"], b["mode"]) for b in listed] == [(banned, "shadow")]


async def test_who_may_ban_on_a_video(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    target = fresh_user()
    body = {"user_id": target, "mode": "overt"}
    path = f"/v1/videos/{video}/bans"
    assert (await client.post(path, json=body)).status_code == 401
    assert (await client.post(path, json=body, headers={"Authorization": "Bearer nope"})).status_code == 401
    for headers in (
        server.headers(fresh_user()),
        server.headers(fresh_user(), roles=["verified"]),
        server.headers(fresh_user("host"), streams=[f"{video}_other"]),
    ):
        r = await client.post(path, json=body, headers=headers)
        assert r.status_code == 403, r.text
        assert (await client.delete(f"{path}/{target}", headers=headers)).status_code == 403
        assert (await client.get(path, headers=headers)).status_code == 403
    for headers in (streamer(server, video), server.headers(fresh_user("mod"), roles=["moderator"]), server.headers(fresh_user("adm"), roles=["admin"])):
        assert (await client.post(path, json=body, headers=headers)).status_code == 201
        assert (await client.delete(f"{path}/{target}", headers=headers)).status_code == 204


async def test_only_admins_ban_globally(server: ServerProcess, client: httpx.AsyncClient) -> None:
    target = fresh_user()
    body = {"user_id": target, "mode": "shadow"}
    assert (await client.post("/v1/bans", json=body)).status_code == 401
    for headers in (
        server.headers(fresh_user()),
        server.headers(fresh_user("mod"), roles=["moderator"]),
        server.headers(fresh_user("host"), streams=["anything"]),
    ):
        assert (await client.post("/v1/bans", json=body, headers=headers)).status_code == 403
        assert (await client.delete(f"/v1/bans/{target}", headers=headers)).status_code == 403
        assert (await client.get("/v1/bans", headers=headers)).status_code == 403
    admin = server.headers(fresh_user("admin"), roles=["admin"])
    assert (await client.post("/v1/bans", json=body, headers=admin)).status_code == 201
    assert target in [b["user_id"] for b in (await client.get("/v1/bans", headers=admin)).json()["bans"]]
    assert (await client.delete(f"/v1/bans/{target}", headers=admin)).status_code == 204
    assert (await client.delete(f"/v1/bans/{target}", headers=admin)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user_id": "u1"},
        {"user_id": "u1", "mode": "forever"},
        {"user_id": "", "mode": "overt"},
        {"user_id": 42, "mode": "overt"},
        {"user_id": "x" * 129, "mode": "overt"},
        {"user_id": "u1", "mode": "overt", "reason": 7},
        {"user_id": "u1", "mode": "overt", "reason": "r" * 501},
    ],
)
async def test_a_bad_ban_body_is_422(server: ServerProcess, client: httpx.AsyncClient, video: str, body: dict[str, Any]) -> None:
    r = await client.post(f"/v1/videos/{video}/bans", json=body, headers=streamer(server, video))
    assert r.status_code == 422, r.text
    assert r.json()["error"] in ("invalid_user_id", "invalid_mode", "invalid_reason")


async def test_a_ban_body_that_is_not_json(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    headers = streamer(server, video)
    r = await client.post(f"/v1/videos/{video}/bans", content=b"{nope", headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400
    r = await client.post(f"/v1/videos/{video}/bans", content=b"user_id=u1", headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == 415


async def test_an_overtly_banned_user_cannot_react(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    banned = fresh_user("overt")
    c = await post(client, server, video, fresh_user(), "react to me")
    assert (await ban(client, streamer(server, video), video, banned, "overt")).status_code == 201
    r = await client.post(f"/v1/videos/{video}/comments/{c['id']}/reactions", headers=server.headers(banned))
    assert r.status_code == 403
