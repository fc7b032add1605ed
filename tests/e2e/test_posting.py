"""POST /v1/videos/{video_id}/comments and guest sign-in: every answer of the contract."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from domain.identity import TokenIssuer
from tests.e2e.helpers import assert_error, fresh_user, post
from tests.support.server import ServerProcess


def url(video: str) -> str:
    return f"/v1/videos/{video}/comments"


async def test_post_returns_the_stored_comment(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    user = fresh_user()
    r = await client.post(
        url(video),
        json={"text": "  hello world  ", "client_id": "c-123"},
        headers=server.headers(user, name="Alice"),
    )
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/json")
    c = r.json()
    assert isinstance(c["id"], str) and c["id"].isdigit()
    assert c["video_id"] == video
    assert c["author"] == {"id": user, "name": "Alice", "verified": False}
    assert c["text"] == "hello world"  # trimmed
    assert isinstance(c["created_at"], int) and not isinstance(c["created_at"], bool)
    assert c["created_at"] > 1_600_000_000_000  # milliseconds since the epoch
    assert c["client_id"] == "c-123"
    assert c["pending"] is False

    # A verified author is marked; without client_id the field is null; ids grow.
    r2 = await client.post(url(video), json={"text": "again"}, headers=server.headers(fresh_user(), roles=["verified"]))
    assert r2.status_code == 201, r2.text
    c2 = r2.json()
    assert c2["author"]["verified"] is True
    assert c2["client_id"] is None
    assert int(c2["id"]) > int(c["id"])


async def test_text_limits_are_inclusive(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    c = await post(client, server, video, "x" * 500)
    assert len(c["text"]) == 500
    c = await post(client, server, video, "日本語" * 166 + "日!")  # 500 characters, 1,500 bytes
    assert len(c["text"]) == 500
    c = await post(client, server, video, "line one\nline two\ttabbed")
    assert c["text"] == "line one\nline two\ttabbed"
    long_id = "v" * 64
    r = await client.post(url(long_id), json={"text": "ok"}, headers=server.headers(fresh_user()))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"text": "unterminated',
        b"",
        b"\xff\xfe{}",
        b'{"text": "a"} trailing',
    ],
    ids=["garbage", "unterminated", "empty", "not-utf8", "trailing"],
)
async def test_malformed_json_is_400(client: httpx.AsyncClient, server: ServerProcess, video: str, body: bytes) -> None:
    r = await client.post(
        url(video), content=body, headers={**server.headers(fresh_user()), "Content-Type": "application/json"}
    )
    assert_error(r, 400)


@pytest.mark.parametrize("body", ['["text"]', '"text"', "42", "null", "true"])
async def test_json_that_is_not_an_object_is_400(
    client: httpx.AsyncClient, server: ServerProcess, video: str, body: str
) -> None:
    r = await client.post(
        url(video), content=body, headers={**server.headers(fresh_user()), "Content-Type": "application/json"}
    )
    assert_error(r, 400)


def _forged(server: ServerProcess) -> str:
    return "Bearer " + TokenIssuer("not-the-server-key-but-just-as-long-as-one").issue(fresh_user(), "Mallory")


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "expired",
        "forged",
        "tampered",
    ],
)
async def test_bad_tokens_are_401(
    client: httpx.AsyncClient, server: ServerProcess, video: str, auth: str | None
) -> None:
    headers: dict[str, str] = {}
    if auth == "expired":
        headers["Authorization"] = "Bearer " + server.token(fresh_user(), ttl_s=-60)
    elif auth == "forged":
        headers["Authorization"] = _forged(server)
    elif auth == "tampered":
        head, payload, sig = server.token(fresh_user()).split(".")
        headers["Authorization"] = f"Bearer {head}.{payload}.{sig[::-1]}"
    elif auth is not None:
        headers["Authorization"] = auth
    r = await client.post(url(video), json={"text": "hi"}, headers=headers)
    body = assert_error(r, 401)
    if auth == "expired":
        assert body["error"] == "token_expired"
    # Nothing was stored.
    history = await client.get(url(video))
    assert history.json()["comments"] == []


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    headers = {**server.headers(fresh_user()), "Content-Type": "application/json"}
    big = json.dumps({"text": "x" * 4200}).encode()
    assert len(big) > 4096
    assert_error(await client.post(url(video), content=big, headers=headers), 413)

    # The same without a Content-Length (chunked): the server counts what arrives.
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    assert_error(await client.post(url(video), content=chunks(), headers=headers), 413)

    # Just under the limit is fine (and then the text limit applies: 422, not 413).
    near = json.dumps({"text": "x" * 4000}).encode()
    assert len(near) <= 4096
    assert_error(await client.post(url(video), content=near, headers=headers), 422)


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_not_json_is_415(client: httpx.AsyncClient, server: ServerProcess, video: str, ctype: str | None) -> None:
    headers = server.headers(fresh_user())
    if ctype is not None:
        headers["Content-Type"] = ctype
    r = await client.post(url(video), content=b'{"text": "hi"}', headers=headers)
    assert_error(r, 415)


@pytest.mark.parametrize(
    "body",
    [
        {"text": ""},
        {"text": "   "},
        {"text": " \n\t \r\n "},
        {"text": "x" * 501},
        {"text": "日" * 501},
        {"text": 42},
        {"text": None},
        {"text": ["a"]},
        {"text": {"a": 1}},
        {"text": True},
        {},
        {"text": "nul\x00byte"},
        {"text": "bell\x07"},
        {"text": "esc\x1b[31mred"},
        {"text": "del\x7f"},
        {"text": "c1\x85control"},
        {"text": "lone \ud800 surrogate"},
    ],
    ids=[
        "empty",
        "spaces",
        "whitespace",
        "501",
        "501-cjk",
        "int",
        "null",
        "list",
        "object",
        "bool",
        "missing",
        "nul",
        "bell",
        "escape",
        "del",
        "c1",
        "surrogate",
    ],
)
async def test_invalid_text_is_422(client: httpx.AsyncClient, server: ServerProcess, video: str, body: object) -> None:
    content = json.dumps(body).encode()  # ASCII: escapes stay escapes (a lone surrogate too)
    r = await client.post(
        url(video), content=content, headers={**server.headers(fresh_user()), "Content-Type": "application/json"}
    )
    assert_error(r, 422)


async def test_invalid_client_id_is_422(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    for client_id in [123, "", "x" * 129, "tab\there"]:
        r = await client.post(
            url(video), json={"text": "hi", "client_id": client_id}, headers=server.headers(fresh_user())
        )
        assert_error(r, 422)


async def test_rate_limit_is_429_with_retry_after(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    user = fresh_user()
    headers = server.headers(user)
    # Refused posts do not count against the limit.
    for _ in range(3):
        assert_error(await client.post(url(video), json={"text": ""}, headers=headers), 422)
    for i in range(5):
        r = await client.post(url(video), json={"text": f"m{i}"}, headers=headers)
        assert r.status_code == 201, (i, r.text)
    for _ in range(2):
        r = await client.post(url(video), json={"text": "one too many"}, headers=headers)
        body = assert_error(r, 429)
        retry_after = r.headers["Retry-After"]
        assert retry_after.isdigit(), retry_after
        assert int(retry_after) >= 1
        assert body["error"] == "rate_limited"
    # The limit is per user: others post, also on the same video.
    r = await client.post(url(video), json={"text": "someone else"}, headers=server.headers(fresh_user()))
    assert r.status_code == 201, r.text
    # The same user on another video is still limited (5 per 10 s per user).
    r = await client.post(url(video + "_b"), json={"text": "elsewhere"}, headers=headers)
    assert_error(r, 429)
    history = (await client.get(url(video))).json()["comments"]
    assert sorted(c["text"] for c in history) == ["m0", "m1", "m2", "m3", "m4", "someone else"]


@pytest.mark.parametrize(
    "bad_id",
    ["v" * 65, "bad.id", "bad%20id", "bad%2Fid", "%C3%BC", "a+b", "a%00b", "a:b", "~x"],
    ids=["too-long", "dot", "space", "slash", "umlaut", "plus", "nul", "colon", "tilde"],
)
async def test_invalid_video_id_is_404(client: httpx.AsyncClient, server: ServerProcess, bad_id: str) -> None:
    headers = server.headers(fresh_user())
    r = await client.post(f"/v1/videos/{bad_id}/comments", json={"text": "hi"}, headers=headers)
    assert_error(r, 404)
    # Every other path under the video answers 404 too.
    for path in ["comments", "comments?after=0", "snapshot.json", "events", "comments/123"]:
        method = "DELETE" if path == "comments/123" else "GET"
        r = await client.request(method, f"/v1/videos/{bad_id}/{path}", headers=headers)
        assert_error(r, 404)


async def test_guest_sign_in(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    r = await client.post("/v1/auth/guest", json={"name": "Alice"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body["token"], str) and isinstance(body["user_id"], str)
    # The token posts.
    r = await client.post(url(video), json={"text": "guest here"}, headers={"Authorization": f"Bearer {body['token']}"})
    assert r.status_code == 201, r.text
    assert r.json()["author"] == {"id": body["user_id"], "name": "Alice", "verified": False}
    # Bad sign-in bodies.
    assert_error(await client.post("/v1/auth/guest", json={"name": ""}), 422)
    assert_error(await client.post("/v1/auth/guest", json={"name": 5}), 422)
    assert_error(await client.post("/v1/auth/guest", json={"name": "x" * 200}), 422)
    assert_error(await client.post("/v1/auth/guest", content=b"{", headers={"Content-Type": "application/json"}), 400)
    assert_error(await client.post("/v1/auth/guest", content=b"name=a"), 415)


async def test_guest_sign_in_is_rate_limited_per_address(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory({"LIVECOMMENTS_GUEST_RATE_LIMIT": "2/m"})
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as c:
        for name in ["A", "B"]:
            r = await c.post("/v1/auth/guest", json={"name": name})
            assert r.status_code == 201, r.text
        r = await c.post("/v1/auth/guest", json={"name": "C"})
        assert_error(r, 429)
        assert r.headers["Retry-After"].isdigit() and int(r.headers["Retry-After"]) >= 1
        # Invalid sign-ins are refused before the limiter and posting is unaffected.
        video = "guest_limit"
        r = await c.post(url(video), json={"text": "still posting"}, headers=srv.headers(fresh_user()))
        assert r.status_code == 201, r.text
