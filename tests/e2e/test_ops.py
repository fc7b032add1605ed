"""Operations endpoints, the OpenAPI description and the watch page."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import assert_error, post
from tests.support.server import ServerProcess

CONTRACT_PATHS = [
    "/v1/auth/guest",
    "/v1/videos/{video_id}/comments",
    "/v1/videos/{video_id}/comments/{comment_id}",
    "/v1/videos/{video_id}/events",
    "/v1/videos/{video_id}/ws",
    "/v1/videos/{video_id}/snapshot.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "/watch/{video_id}",
]


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient, server: ServerProcess, video: str) -> None:
    await post(client, server, video, "count me")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    ours = [name for name in families if name.startswith("livecomments_")]
    assert len(ours) >= 5, sorted(families)
    assert "# HELP livecomments_" in r.text and "# TYPE livecomments_" in r.text
    posts = families.get("livecomments_posts")
    assert posts is not None, sorted(families)
    assert any(s.labels.get("status") == "201" and s.value >= 1 for s in posts.samples), posts.samples


async def test_openapi_lists_the_contract(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert str(doc["openapi"]).startswith("3."), doc.get("openapi")
    assert doc["info"]["title"]
    missing = [p for p in CONTRACT_PATHS if p not in doc["paths"]]
    assert not missing, missing
    assert "post" in doc["paths"]["/v1/videos/{video_id}/comments"]
    assert "get" in doc["paths"]["/v1/videos/{video_id}/comments"]
    assert "delete" in doc["paths"]["/v1/videos/{video_id}/comments/{comment_id}"]


async def test_watch_page(client: httpx.AsyncClient, video: str) -> None:
    r = await client.get(f"/watch/{video}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()
    assert video in r.text
    assert_error(await client.get("/watch/not.a.video"), 404)
    assert_error(await client.get("/watch/" + "v" * 65), 404)


async def test_unknown_paths_and_methods(client: httpx.AsyncClient, video: str) -> None:
    assert_error(await client.get("/v1/nothing/here"), 404)
    assert_error(await client.get("/nothing"), 404)
    r = await client.put(f"/v1/videos/{video}/snapshot.json")
    assert_error(r, 405 if r.status_code == 405 else 404)
