"""Slow mode (per-video settings) and the moderation log, end to end."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.moderation.clients import fresh_user, moderation_log, post
from tests.support.server import ServerProcess


async def set_slow(client: httpx.AsyncClient, headers: dict[str, str], video: str, value: Any) -> httpx.Response:
    return await client.put(f"/v1/videos/{video}/settings", json={"slow_mode_s": value}, headers=headers)


async def test_slow_mode_allows_one_comment_per_interval(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    host = fresh_user("host")
    host_headers = server.headers(host, streams=[video])
    r = await set_slow(client, host_headers, video, 120)
    assert r.status_code == 200, r.text
    assert r.json() == {"video_id": video, "slow_mode_s": 120}
    assert (await client.get(f"/v1/videos/{video}/settings")).json() == {"video_id": video, "slow_mode_s": 120}

    user = fresh_user()
    await post(client, server, video, user, "first")
    r = await client.post(f"/v1/videos/{video}/comments", json={"text": "second"}, headers=server.headers(user))
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "rate_limited"
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 120
    assert r.json()["retry_after"] == retry
    # Other users have their own interval; other videos have no slow mode.
    await post(client, server, video, fresh_user(), "someone else")
    await post(client, server, f"{video}_other", user, "elsewhere")
    # The streamer and moderators are exempt.
    for _ in range(3):
        await post(client, server, video, host, "the host talks", streams=[video])
    mod = fresh_user("mod")
    for _ in range(3):
        await post(client, server, video, mod, "a moderator talks", roles=["moderator"])
    # 0 turns it off.
    assert (await set_slow(client, host_headers, video, 0)).json()["slow_mode_s"] == 0
    await post(client, server, video, user, "free again")


async def test_a_refused_post_does_not_count_against_the_per_user_limit(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    """Slow mode refuses; the per-user limit (5 per 10 s) must not have been charged."""
    host = server.headers(fresh_user("host"), streams=[video])
    assert (await set_slow(client, host, video, 300)).status_code == 200
    user = fresh_user()
    await post(client, server, video, user, "one")
    for _ in range(6):
        r = await client.post(f"/v1/videos/{video}/comments", json={"text": "again"}, headers=server.headers(user))
        assert r.status_code == 429
    # Four more accepted posts fit in the per-user limit elsewhere: the refusals cost nothing.
    for i in range(4):
        await post(client, server, f"{video}_free", user, f"elsewhere {i}")


@pytest.mark.parametrize("value", [-1, 3601, "5", 1.5, True, None, [5]])
async def test_a_bad_slow_mode_is_422(server: ServerProcess, client: httpx.AsyncClient, video: str, value: Any) -> None:
    r = await set_slow(client, server.headers(fresh_user("host"), streams=[video]), video, value)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_settings"


async def test_who_may_change_settings(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    path = f"/v1/videos/{video}/settings"
    assert (await client.put(path, json={"slow_mode_s": 5})).status_code == 401
    for headers in (server.headers(fresh_user()), server.headers(fresh_user("host"), streams=[f"{video}_x"])):
        assert (await client.put(path, json={"slow_mode_s": 5}, headers=headers)).status_code == 403
    for headers in (server.headers(fresh_user("mod"), roles=["moderator"]), server.headers(fresh_user("host"), streams=[video])):
        assert (await client.put(path, json={"slow_mode_s": 0}, headers=headers)).status_code == 200


async def test_the_log_records_every_decision_newest_first(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    host_id, mod_id = fresh_user("host"), fresh_user("mod")
    host = server.headers(host_id, streams=[video])
    mod = server.headers(mod_id, roles=["moderator"])
    target, author = fresh_user(), fresh_user()
    assert (await client.post(f"/v1/videos/{video}/bans", json={"user_id": target, "mode": "shadow", "reason": "spam"}, headers=host)).status_code == 201
    assert (await set_slow(client, mod, video, 30)).status_code == 200
    assert (await client.delete(f"/v1/videos/{video}/bans/{target}", headers=mod)).status_code == 204
    c = await post(client, server, video, author, "to be deleted")
    assert (await client.delete(f"/v1/videos/{video}/comments/{c['id']}", headers=host)).status_code == 204

    entries = await moderation_log(client, server, video)
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("delete", host_id),
        ("unban", mod_id),
        ("settings", mod_id),
        ("ban", host_id),
    ]
    delete, unban, settings, ban = entries
    assert delete["comment_id"] == c["id"] and delete["target_user"] == author
    assert unban["target_user"] == target
    assert settings["details"] == {"slow_mode_s": 30}
    assert ban["target_user"] == target and ban["reason"] == "spam" and ban["details"] == {"mode": "shadow"}
    assert all(e["video_id"] == video and isinstance(e["created_at"], int) for e in entries)
    assert [int(e["id"]) for e in entries] == sorted((int(e["id"]) for e in entries), reverse=True)

    # Pages: newest first, ``next`` is the cursor for ``before``.
    r = await client.get(f"/v1/videos/{video}/moderation-log", params={"limit": 3}, headers=host)
    assert r.status_code == 200
    first = r.json()
    assert [e["id"] for e in first["entries"]] == [e["id"] for e in entries[:3]]
    r = await client.get(f"/v1/videos/{video}/moderation-log", params={"limit": 3, "before": first["next"]}, headers=host)
    assert [e["id"] for e in r.json()["entries"]] == [entries[3]["id"]]
    assert r.json()["next"] is None


async def test_who_may_read_the_log(server: ServerProcess, client: httpx.AsyncClient, video: str) -> None:
    path = f"/v1/videos/{video}/moderation-log"
    assert (await client.get(path)).status_code == 401
    for headers in (server.headers(fresh_user()), server.headers(fresh_user(), roles=["verified"]), server.headers(fresh_user("host"), streams=[f"{video}_x"])):
        assert (await client.get(path, headers=headers)).status_code == 403
    for headers in (server.headers(fresh_user("host"), streams=[video]), server.headers(fresh_user("mod"), roles=["moderator"]), server.headers(fresh_user("adm"), roles=["admin"])):
        assert (await client.get(path, headers=headers)).status_code == 200
    assert (await client.get(path, params={"limit": 0}, headers=server.headers("m", roles=["moderator"]))).status_code == 400
    assert (await client.get(path, params={"before": "x"}, headers=server.headers("m", roles=["moderator"]))).status_code == 400
    # The global log: moderators and admins.
    assert (await client.get("/v1/moderation-log", headers=server.headers(fresh_user()))).status_code == 403
    assert (await client.get("/v1/moderation-log", headers=server.headers(fresh_user("mod"), roles=["moderator"]))).status_code == 200


async def test_global_bans_are_in_the_global_log(server: ServerProcess, client: httpx.AsyncClient) -> None:
    admin_id, target = fresh_user("admin"), fresh_user()
    admin = server.headers(admin_id, roles=["admin"])
    assert (await client.post("/v1/bans", json={"user_id": target, "mode": "overt", "reason": "fraud"}, headers=admin)).status_code == 201
    assert (await client.delete(f"/v1/bans/{target}", headers=admin)).status_code == 204
    r = await client.get("/v1/moderation-log", params={"limit": 200}, headers=admin)
    mine = [(e["action"], e["video_id"], e["reason"]) for e in r.json()["entries"] if e["target_user"] == target]
    assert mine == [("unban", None, None), ("ban", None, "fraud")]


async def test_bans_and_the_log_survive_a_restart(live_server: ServerProcess, video: str) -> None:
    srv = live_server
    banned = fresh_user("overt")
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        host = srv.headers(fresh_user("host"), streams=[video])
        assert (await client.post(f"/v1/videos/{video}/bans", json={"user_id": banned, "mode": "overt"}, headers=host)).status_code == 201
        assert (await set_slow(client, host, video, 60)).status_code == 200
    srv.stop()
    srv.start()
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        r = await client.post(f"/v1/videos/{video}/comments", json={"text": "hi"}, headers=srv.headers(banned))
        assert r.status_code == 403
        assert (await client.get(f"/v1/videos/{video}/settings")).json()["slow_mode_s"] == 60
        actions = [e["action"] for e in await moderation_log(client, srv, video)]
        assert actions == ["settings", "ban"]
