"""The spread contract on the all-in-one server (a cluster of one): ``GET /spread`` says one
shard, and streams and long-polls take ``?shard=`` within ``SPREAD_MAX_SHARDS`` (a client
that read a count from a cluster keeps working here); anything else is a 400."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.helpers import assert_error, post
from tests.e2e.sse import open_sse
from tests.support.server import ServerProcess


async def test_one_process_has_one_shard(client: httpx.AsyncClient, video: str) -> None:
    r = await client.get(f"/v1/videos/{video}/spread")
    assert r.status_code == 200, r.text
    assert r.json() == {"video_id": video, "shards": 1}
    assert r.headers["cache-control"] == "public, max-age=1"
    assert_error(await client.get("/v1/videos/bad%20id/spread"), 404)


async def test_a_stream_through_a_shard_gets_the_same_comments(
    client: httpx.AsyncClient, server: ServerProcess, video: str
) -> None:
    path = f"/v1/videos/{video}/events"
    async with open_sse(server.url, path) as plain, open_sse(server.url, path, params={"shard": 63}) as sharded:
        posted = await post(client, server, video, "to every shard")
        await plain.wait_comment_id(posted["id"])
        await sharded.wait_comment_id(posted["id"])
    r = await client.get(f"/v1/videos/{video}/comments", params={"after": "0", "shard": "2"})
    assert r.status_code == 200 and [c["id"] for c in r.json()["comments"]] == [posted["id"]]


@pytest.mark.parametrize("shard", ["64", "-1", "x", "1.5"])
async def test_a_shard_out_of_range_is_400(client: httpx.AsyncClient, server: ServerProcess, video: str, shard: str) -> None:
    async with open_sse(server.url, f"/v1/videos/{video}/events", params={"shard": shard}, expect_status=400):
        pass
    assert_error(await client.get(f"/v1/videos/{video}/events", params={"shard": shard}), 400, "invalid_parameter")
    assert_error(await client.get(f"/v1/videos/{video}/comments", params={"after": "0", "shard": shard}), 400, "invalid_parameter")
