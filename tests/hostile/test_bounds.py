"""Bounds a hostile client meets: a node's rooms are capped (``LIVECOMMENTS_MAX_ROOMS``:
idle rooms are closed to make space, rooms with viewers are kept, and past the cap with
every room busy a new video is refused with 503 ``too_many_rooms``); guests are limited
per client address as well as per token (``LIVECOMMENTS_GUEST_POST_RATE_LIMIT``), with
IPv6 addresses grouped by /64."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio_websocket

from tests.moderation.clients import fresh_user, metric, post, sse, ws
from tests.support.server import ServerProcess

Factory = Callable[[dict[str, str]], ServerProcess]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def guest(client: httpx.AsyncClient, name: str, address: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return await client.post("/v1/auth/guest", json={"name": name}, headers=headers)


def assert_refused(status: int, headers: dict[str, str], body: Any, code: str) -> None:
    assert status in (429, 503), (status, body)
    assert body["error"] == code, body
    assert int(headers["retry-after"]) >= 1


# -- rooms -------------------------------------------------------------------------------------


async def test_past_max_rooms_idle_rooms_close_and_rooms_with_viewers_stay(server_factory: Factory, video: str) -> None:
    srv = server_factory({"LIVECOMMENTS_MAX_ROOMS": "3", "LIVECOMMENTS_ROOM_LINGER_S": "600"})
    busy = [f"{video}_busy{i}" for i in range(2)]
    async with (
        httpx.AsyncClient(base_url=srv.url) as client,
        sse(srv, busy[0]) as first,
        ws(srv, busy[1]) as second,
    ):
        # A snapshot read opens a room and leaves it idle (no viewers, lingering 600 s).
        for i in range(6):
            r = await client.get(f"/v1/videos/{video}_idle{i}/snapshot.json")
            assert r.status_code == 200, r.text
        assert await metric(client, "livecomments_rooms") == 3
        assert await metric(client, "livecomments_rooms_evicted_total") == 5
        assert await metric(client, "livecomments_rooms_refused_total") == 0

        # The rooms with viewers were kept: their viewers still get what is posted.
        for video_id, watcher in zip(busy, (first, second)):
            c = await post(client, srv, video_id, fresh_user(), "still here")
            await watcher.wait_comment(c["id"])

        # Every room busy: a new video is refused on each path, and nothing is evicted.
        async with sse(srv, f"{video}_idle5"):
            r = await client.get(f"/v1/videos/{video}_new/events")
            assert_refused(r.status_code, dict(r.headers), r.json(), "too_many_rooms")
            assert r.status_code == 503
            with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
                async with trio_websocket.open_websocket_url(srv.url.replace("http", "ws", 1) + f"/v1/videos/{video}_new/ws"):
                    pass
            e = rejected.value
            assert e.status_code == 503
            hdrs = {k.decode().lower(): v.decode() for k, v in e.headers}
            assert_refused(e.status_code, hdrs, json.loads(e.body or b"{}"), "too_many_rooms")
            r = await client.get(f"/v1/videos/{video}_new/comments", params={"after": "0"})
            assert r.status_code == 503
            assert_refused(r.status_code, dict(r.headers), r.json(), "too_many_rooms")
            assert await metric(client, "livecomments_rooms") == 3
            assert await metric(client, "livecomments_rooms_refused_total") == 3
            assert await metric(client, "livecomments_rooms_evicted_total") == 5
            # A video that has a room is still served.
            async with sse(srv, busy[0]) as again:
                c = await post(client, srv, busy[0], fresh_user(), "one more")
                await again.wait_comment(c["id"])
                await first.wait_comment(c["id"])


# -- guests ------------------------------------------------------------------------------------


async def test_guests_from_one_address_share_a_post_limit(server_factory: Factory, video: str) -> None:
    srv = server_factory({"LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "5/60s"})
    url = f"/v1/videos/{video}/comments"
    async with httpx.AsyncClient(base_url=srv.url) as client:
        tokens = []
        for i in range(8):
            r = await guest(client, f"guest {i}")
            assert r.status_code == 201, r.text
            tokens.append(r.json()["token"])
        answers = [await client.post(url, json={"text": f"hello {i}"}, headers=bearer(t)) for i, t in enumerate(tokens)]
        # One post per token: well inside the per-user limit, but 5 per minute per address.
        assert [r.status_code for r in answers] == [201] * 5 + [429] * 3
        for r in answers[5:]:
            assert_refused(r.status_code, dict(r.headers), r.json(), "rate_limited")
        # A signed-in (not guest) user at the same address is not counted with the guests.
        r = await client.post(url, json={"text": "registered"}, headers=srv.headers(fresh_user()))
        assert r.status_code == 201, r.text


async def test_guest_limits_group_ipv6_addresses_by_64(server_factory: Factory, video: str) -> None:
    srv = server_factory(
        {
            "LIVECOMMENTS_PROXY_HOPS": "1",  # the client address comes from X-Forwarded-For
            "LIVECOMMENTS_GUEST_RATE_LIMIT": "2/m",
            "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "2/m",
        }
    )
    url = f"/v1/videos/{video}/comments"
    async with httpx.AsyncClient(base_url=srv.url) as client:
        a = await guest(client, "a", "2001:db8:1:2::1")
        b = await guest(client, "b", "2001:db8:1:2:ffff:ffff:ffff:fffe")
        assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
        # A third address in the same /64 is the same client for the sign-in limit ...
        r = await guest(client, "c", "2001:db8:1:2:abcd::9")
        assert r.status_code == 429
        assert_refused(r.status_code, dict(r.headers), r.json(), "rate_limited")
        # ... and another /64 is not.
        other = await guest(client, "d", "2001:db8:1:3::1")
        assert other.status_code == 201, other.text

        # Posts: the two guests of one /64 share its limit.
        for r in (a, b):
            answer = await client.post(url, json={"text": "hi"}, headers=bearer(r.json()["token"]))
            assert answer.status_code == 201, answer.text
        answer = await client.post(url, json={"text": "again"}, headers=bearer(a.json()["token"]))
        assert_refused(answer.status_code, dict(answer.headers), answer.json(), "rate_limited")
        assert answer.status_code == 429
        answer = await client.post(url, json={"text": "hi"}, headers=bearer(other.json()["token"]))
        assert answer.status_code == 201, answer.text
