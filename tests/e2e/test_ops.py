"""Operations endpoints, the OpenAPI description and the watch page."""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

from domain.identity import TokenIssuer
from domain.metrics import Metrics
from domain.settings import Settings
from policy.ratelimit import InMemoryRateLimiter
from tests.e2e.helpers import assert_error, post
from tests.support.server import ServerProcess
from transport.app import all_in_one_app
from transport.frontdoor import STREAM_PATH
from transport.openapi import openapi
from transport.services import IngestParts, Node, RmsParts

# The app's routes the description leaves out on purpose, each with its reason.
UNDESCRIBED = {
    ("/openapi.json", "get"): "the description itself",
    ("/", "get"): "a redirect to the watch page",
    ("/static/{filename}", "get"): "the watch page's files",
    **{("/v1/{rest}", m): "the catch-all that answers 404 no_such_endpoint" for m in ("get", "post", "put", "delete", "patch")},
}
# Described, and served by the front door alone (it never reaches the app): the WebSocket.
FRONT_DOOR_ONLY = {("/v1/videos/{video_id}/ws", "get")}


def served_routes() -> set[tuple[str, str]]:
    """(path, method) of every route the all-in-one app serves, in OpenAPI's path syntax."""
    # The routes are only listed, never called: the services behind them are not needed.
    parts = IngestParts(None, None, None, InMemoryRateLimiter())  # type: ignore[arg-type]
    rms = RmsParts(None, None, None, None)  # type: ignore[arg-type]
    app = all_in_one_app(Node(Settings(), TokenIssuer("k"), Metrics()), parts, rms)
    return {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def described_routes(doc: dict[str, object]) -> set[tuple[str, str]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return {(path, method) for path, item in paths.items() for method in item if method != "parameters"}


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


def test_every_route_is_described_and_every_described_route_is_served() -> None:
    served = served_routes()
    described = described_routes(openapi(Settings()))
    assert served - described == set(UNDESCRIBED), "served but not in /openapi.json"
    assert described - served == FRONT_DOOR_ONLY, "in /openapi.json but not served"
    for path, _ in FRONT_DOOR_ONLY:
        assert STREAM_PATH.match(path.replace("{video_id}", "v1")), f"the front door does not serve {path}"


async def test_openapi_is_served_and_names_the_contract_s_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert str(doc["openapi"]).startswith("3."), doc.get("openapi")
    assert doc["info"]["title"]
    described = described_routes(doc)
    assert described == described_routes(openapi(Settings())), "the served description is not the one checked above"
    contract = {
        ("/v1/auth/guest", "post"),
        ("/v1/videos/{video_id}/comments", "post"),
        ("/v1/videos/{video_id}/comments", "get"),
        ("/v1/videos/{video_id}/comments/{comment_id}", "delete"),
        ("/v1/videos/{video_id}/events", "get"),
        ("/v1/videos/{video_id}/ws", "get"),
        ("/v1/videos/{video_id}/snapshot.json", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/watch/{video_id}", "get"),
    }
    assert contract <= described, sorted(contract - described)


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
