"""The read paths besides the streams: long-poll, history, snapshot.json."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from tests.e2e.helpers import assert_error, ids, metric, post, post_many, wait_until
from tests.support.server import ServerProcess


def comments(video: str) -> str:
    return f"/v1/videos/{video}/comments"


# -- long-poll -------------------------------------------------------------------------------


async def test_long_poll_returns_at_once_when_newer_exist(
    client: httpx.AsyncClient, server: ServerProcess, video: str
) -> None:
    posted = await post_many(client, server, video, 4)
    # wait=30, yet the answer comes well inside the 10 s this allows.
    with trio.fail_after(10):
        r = await client.get(comments(video), params={"after": posted[0]["id"], "wait": "30"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["comments"] == posted[1:]  # oldest first, the stored objects
    assert body["next"] == posted[-1]["id"]
    assert body["removed"] == []
    assert "no-store" in r.headers.get("cache-control", "")


async def test_long_poll_holds_until_a_comment_arrives(
    client: httpx.AsyncClient, server: ServerProcess, video: str
) -> None:
    first = await post(client, server, video, "first")
    result: dict[str, Any] = {}

    async def poll() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=40) as c:
            r = await c.get(comments(video), params={"after": first["id"], "wait": "30"})
            result["status"], result["body"] = r.status_code, r.json()

    with trio.fail_after(10):  # far less than wait=30: it returned because of the comment
        async with trio.open_nursery() as nursery:
            held = await metric(client, "livecomments_long_polls_held")
            nursery.start_soon(poll)

            async def poll_is_held() -> bool:
                return await metric(client, "livecomments_long_polls_held") > held

            await wait_until(poll_is_held, "the long poll to be held open")
            new = await post(client, server, video, "second")
    assert result["status"] == 200
    assert result["body"]["comments"] == [new]
    assert result["body"]["next"] == new["id"]
    # The next poll from that cursor continues seamlessly.
    r = await client.get(comments(video), params={"after": result["body"]["next"], "wait": "0"})
    assert r.json()["comments"] == []


async def test_long_poll_returns_empty_after_wait(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    last = await post(client, server, video, "only")
    for wait in ["0", "0.3"]:
        r = await client.get(comments(video), params={"after": last["id"], "wait": wait})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["comments"] == []
        assert body["next"] == last["id"]
        assert isinstance(body["removed"], list)
    # An empty video, from the beginning.
    r = await client.get(comments(video + "_empty"), params={"after": "0", "wait": "0"})
    assert r.json() == {"comments": [], "removed": [], "next": "0"}


@pytest.mark.parametrize(
    "params",
    [
        {"after": "0", "wait": "31"},
        {"after": "0", "wait": "-1"},
        {"after": "0", "wait": "soon"},
        {"after": "0", "wait": "nan"},
        {"after": "0", "wait": "inf"},
        {"after": "abc"},
        {"after": "-5"},
        {"after": "1.5"},
        {"after": "99999999999999999999"},
    ],
)
async def test_long_poll_bad_parameters_are_400(client: httpx.AsyncClient, video: str, params: dict[str, str]) -> None:
    assert_error(await client.get(comments(video), params=params), 400)


# -- history ---------------------------------------------------------------------------------


async def test_history_pages_walk_everything_once(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 23)
    newest_first = list(reversed(posted))

    r = await client.get(comments(video))
    assert r.status_code == 200
    body = r.json()
    assert body["comments"] == newest_first  # default limit (50) covers all 23
    assert body["next"] is None

    for limit in [1, 5, 10, 23, 200]:
        seen: list[dict[str, Any]] = []
        params: dict[str, str] = {"limit": str(limit)}
        for _ in range(30):
            r = await client.get(comments(video), params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["comments"]) <= limit
            seen += page["comments"]
            if page["next"] is None:
                break
            assert page["next"] == page["comments"][-1]["id"]
            params = {"limit": str(limit), "before": page["next"]}
        assert page["next"] is None
        assert seen == newest_first, f"limit={limit}"

    # ``before`` is any id: one between two comments, one past the newest.
    r = await client.get(comments(video), params={"before": str(int(posted[10]["id"]) + 1), "limit": "3"})
    assert ids(r.json()["comments"]) == ids(list(reversed(posted[8:11])))
    r = await client.get(comments(video), params={"before": str(int(posted[-1]["id"]) + 1), "limit": "2"})
    assert ids(r.json()["comments"]) == ids(newest_first[:2])
    r = await client.get(comments(video), params={"before": posted[0]["id"]})
    assert r.json() == {"comments": [], "next": None}


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "201"},
        {"limit": "-1"},
        {"limit": "ten"},
        {"limit": "2.5"},
        {"before": "abc"},
        {"before": "-1"},
    ],
)
async def test_history_bad_parameters_are_400(client: httpx.AsyncClient, video: str, params: dict[str, str]) -> None:
    assert_error(await client.get(comments(video), params=params), 400)


# -- snapshot ----------------------------------------------------------------------------------


async def test_snapshot_caching(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 3)
    url = f"/v1/videos/{video}/snapshot.json"
    r = await client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"].replace(" ", "") == "public,max-age=1"
    assert r.headers["content-type"].startswith("application/json")
    etag = r.headers["etag"]
    assert etag
    body = r.json()
    assert ids(body["comments"]) == ids(posted)  # oldest first
    assert body["comments"] == posted
    assert body["removed"] == []

    r2 = await client.get(url, headers={"If-None-Match": etag})
    assert r2.status_code == 304
    assert r2.content == b""
    assert r2.headers["etag"] == etag
    assert r2.headers["cache-control"].replace(" ", "") == "public,max-age=1"
    assert (await client.get(url, headers={"If-None-Match": f'"nope", {etag}'})).status_code == 304
    assert (await client.get(url, headers={"If-None-Match": '"something-else"'})).status_code == 200

    new = await post(client, server, video, "news")
    r3 = await client.get(url, headers={"If-None-Match": etag})
    assert r3.status_code == 200
    assert r3.headers["etag"] != etag
    assert ids(r3.json()["comments"]) == [*ids(posted), new["id"]]
    assert (await client.get(url, headers={"If-None-Match": r3.headers["etag"]})).status_code == 304


async def test_snapshot_keeps_the_latest_200(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    posted = await post_many(client, server, video, 210, concurrency=16)
    body = (await client.get(f"/v1/videos/{video}/snapshot.json")).json()
    got = ids(body["comments"])
    assert 100 <= len(got) <= 200
    assert got == ids(posted)[-len(got) :]
