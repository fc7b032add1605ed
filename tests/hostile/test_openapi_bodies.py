"""The OpenAPI document says exactly what the server accepts: request bodies generated
from the schemas the server publishes at ``/openapi.json`` are accepted, each by the
route it describes (a schema looser than the server's rules fails here; the schemas are
generated from ``domain.contract``, the classes the routes parse with)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server import ServerProcess

_videos = (f"oa{n}" for n in itertools.count())


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    s = ServerProcess(
        {
            "LIVECOMMENTS_RATE_LIMIT": "100000/1s",
            "LIVECOMMENTS_GUEST_RATE_LIMIT": "100000/1s",
            "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "100000/1s",
        }
    ).start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def document(srv: ServerProcess) -> dict[str, Any]:
    r = httpx.get(srv.url + "/openapi.json", timeout=60)
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def value(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a JSON Schema (of the kinds the request bodies use) allows."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("type") == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31))
    assert schema.get("type") == "string", schema
    lo, hi = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        strings = st.from_regex(re.compile(schema["pattern"]), fullmatch=True)
    else:
        strings = st.text(max_size=hi if hi is not None else 50)
    return strings.filter(lambda s: lo <= len(s) and (hi is None or len(s) <= hi))


def body(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props = schema["properties"]
    required = {k: value(v) for k, v in props.items() if k in schema["required"]}
    optional = {k: value(v) for k, v in props.items() if k not in schema["required"]}
    return st.fixed_dictionaries(required, optional=optional)


def schema_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def the_body_of(document: dict[str, Any], path: str, method: str) -> str:
    ref: str = document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return ref.rsplit("/", 1)[1]


EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def test_every_request_body_is_described_by_a_generated_schema(document: dict[str, Any]) -> None:
    bodies = {
        (path, method): the_body_of(document, path, method)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    }
    assert set(bodies.values()) == {"PostComment", "GuestSignIn", "BanRequest", "SettingsRequest"}


def test_generated_comments_are_accepted(srv: ServerProcess, document: dict[str, Any]) -> None:
    name = the_body_of(document, "/v1/videos/{video_id}/comments", "post")
    token = srv.token("oa-poster")
    with httpx.Client(base_url=srv.url, timeout=30) as client:

        @EXAMPLES
        @given(body(schema_of(document, name)))
        def accepted(b: dict[str, Any]) -> None:
            r = client.post(f"/v1/videos/{next(_videos)}/comments", json=b, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 201, (b, r.text)

        accepted()


def test_generated_guest_sign_ins_are_accepted(srv: ServerProcess, document: dict[str, Any]) -> None:
    name = the_body_of(document, "/v1/auth/guest", "post")
    with httpx.Client(base_url=srv.url, timeout=30) as client:

        @EXAMPLES
        @given(body(schema_of(document, name)))
        def accepted(b: dict[str, Any]) -> None:
            r = client.post("/v1/auth/guest", json=b)
            assert r.status_code == 201, (b, r.text)

        accepted()


def test_generated_bans_and_settings_are_accepted(srv: ServerProcess, document: dict[str, Any]) -> None:
    ban = schema_of(document, the_body_of(document, "/v1/videos/{video_id}/bans", "post"))
    slow = schema_of(document, the_body_of(document, "/v1/videos/{video_id}/settings", "put"))
    video = next(_videos)
    token = srv.token("oa-streamer", streams=[video])
    with httpx.Client(base_url=srv.url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:

        @EXAMPLES
        @given(body(ban), body(slow))
        def accepted(b: dict[str, Any], s: dict[str, Any]) -> None:
            r = client.post(f"/v1/videos/{video}/bans", json=b)
            assert r.status_code == 201, (b, r.text)
            r = client.put(f"/v1/videos/{video}/settings", json=s)
            assert r.status_code == 200, (s, r.text)

        accepted()
