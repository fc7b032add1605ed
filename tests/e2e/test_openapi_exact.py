"""The OpenAPI description says exactly what the server takes: every request body it
declares valid is accepted (2xx), and its character rules are the checks' own, code
point by code point.

The patterns in ``/openapi.json`` are computed from the predicates the checks use
(``transport.openapi``); here they are held to the checks themselves
(``ingest.service.clean_text``, ``clean_client_id``, ``ingest.moderation.bans.check_user_id``)
and to a running server, with bodies generated from the served description, both by
Hypothesis from the patterns and by Schemathesis (which once found the description
looser than the server: "mostly rejected generated data due to validation errors").
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.contract import check_user_id, clean_client_id, clean_text, comment_text_pattern, printable_pattern
from domain.errors import Unprocessable
from domain.settings import Settings
from tests.e2e.helpers import fresh_user
from tests.support.server import ServerProcess
from transport.openapi import openapi

MAX_TEXT = Settings().max_text
COMMENTS = "/v1/videos/{video_id}/comments"
BODIES = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def accepted(check: Any, *args: Any) -> bool:
    try:
        check(*args)
    except Unprocessable:
        return False
    return True


# -- the patterns are the checks -----------------------------------------------------------------


def test_the_patterns_take_each_character_the_checks_take() -> None:
    """Every code point: inside a comment, the text pattern takes it exactly when
    ``clean_text`` does (except the few characters NFC expands, never found in NFC text,
    which the pattern leaves out so that it counts the length the check counts); as an
    id, the printable pattern takes it exactly when ``clean_client_id`` and
    ``check_user_id`` do."""
    text = re.compile(comment_text_pattern(MAX_TEXT))
    printable = re.compile(printable_pattern(128))
    text_wrong, id_wrong = [], []
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        inside = "a" + ch + "a"
        by_check = accepted(clean_text, inside, MAX_TEXT)
        by_pattern = text.fullmatch(inside) is not None
        expands = len(unicodedata.normalize("NFC", ch)) > 1
        if by_pattern != by_check and not (expands and by_check and not by_pattern):
            text_wrong.append(f"U+{cp:04X}")
        as_id = printable.fullmatch(ch) is not None
        if not as_id == accepted(clean_client_id, ch) == accepted(check_user_id, ch):
            id_wrong.append(f"U+{cp:04X}")
    assert not text_wrong, text_wrong[:50]
    assert not id_wrong, id_wrong[:50]


# Texts around what the rules turn on: spaces at the ends (Unicode's too), line ends,
# the format characters a comment may carry, lengths at the limit.
EDGES = st.sampled_from(list(" \t\r\n\x0b\x0c\x1c\x85\xa0\u2028\u3000\u200c\u200d\u200e\u200f\ufeff\x00\u202e"))
ANY_TEXT = st.one_of(
    st.text(st.one_of(st.characters(), EDGES), max_size=40),
    st.builds(
        lambda pre, n, mid, post: pre + "x" * n + mid + post,
        st.text(EDGES, max_size=4),
        st.integers(MAX_TEXT - 4, MAX_TEXT + 1),
        st.text(st.one_of(st.characters(), EDGES), max_size=3),
        st.text(EDGES, max_size=4),
    ),
)


@settings(max_examples=400, deadline=None)
@given(ANY_TEXT)
def test_the_text_pattern_is_clean_text_for_nfc_text(text: str) -> None:
    """For text in NFC (what clients send), the pattern and ``clean_text`` agree."""
    if not unicodedata.is_normalized("NFC", text):
        return
    by_pattern = re.fullmatch(comment_text_pattern(MAX_TEXT), text) is not None
    assert by_pattern == accepted(clean_text, text, MAX_TEXT), (text, by_pattern)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(comment_text_pattern(MAX_TEXT), fullmatch=True))
def test_text_the_pattern_takes_is_clean_text(text: str) -> None:
    """Whatever the pattern takes (NFC or not), ``clean_text`` takes."""
    assert accepted(clean_text, text, MAX_TEXT), text


# -- the server takes every body the served description declares valid ---------------------------


@pytest.fixture(scope="module")
def open_server() -> Iterator[ServerProcess]:
    """A server of its own with limits out of the way: every valid body must get 2xx."""
    srv = ServerProcess(
        {"LIVECOMMENTS_RATE_LIMIT": "100000/1s", "LIVECOMMENTS_GUEST_RATE_LIMIT": "100000/1s"}
    ).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def served(open_server: ServerProcess) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(open_server.url + "/openapi.json", timeout=10).json()
    # The module builds what the server serves (the Schemathesis test below uses it).
    assert doc == json.loads(json.dumps(openapi(Settings())))
    return doc


def body_schema(doc: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    ref = schema.get("$ref")
    if ref is not None:  # "#/components/schemas/Name"
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def pattern(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    return st.from_regex(schema["pattern"], fullmatch=True)


def post_json(srv: ServerProcess, method: str, path: str, body: Any, token: str | None) -> httpx.Response:
    """Send ``body`` as compact UTF-8 JSON (so that a text at the limit fits the body limit)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return httpx.request(method, srv.url + path, content=data, headers=headers, timeout=10)


@BODIES
@given(data=st.data())
def test_comments_the_description_declares_valid_are_posted(
    open_server: ServerProcess, served: dict[str, Any], data: st.DataObject
) -> None:
    props = body_schema(served, COMMENTS, "post")["properties"]
    video_pattern = served["paths"][COMMENTS]["parameters"][0]["schema"]["pattern"]
    video = data.draw(st.from_regex(video_pattern, fullmatch=True), "video_id")
    text = data.draw(pattern(props["text"]), "text")
    body: dict[str, Any] = {"text": text}
    client_id = data.draw(st.one_of(st.just("absent"), st.none(), pattern(props["client_id"])), "client_id")
    if client_id != "absent":
        body["client_id"] = client_id
    r = post_json(open_server, "POST", f"/v1/videos/{video}/comments", body, open_server.token(fresh_user()))
    assert r.status_code == 201, r.text
    comment = r.json()
    assert comment["text"] == clean_text(text, MAX_TEXT)
    assert comment["client_id"] == body.get("client_id")


@BODIES
@given(data=st.data())
def test_guest_names_the_description_declares_valid_sign_in(
    open_server: ServerProcess, served: dict[str, Any], data: st.DataObject
) -> None:
    name = data.draw(pattern(body_schema(served, "/v1/auth/guest", "post")["properties"]["name"]), "name")
    r = post_json(open_server, "POST", "/v1/auth/guest", {"name": name}, None)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name.strip()


@BODIES
@given(data=st.data())
def test_bans_the_description_declares_valid_are_made(
    open_server: ServerProcess, served: dict[str, Any], data: st.DataObject
) -> None:
    schemas = served["components"]["schemas"]
    request = schemas["BanRequest"]["properties"]
    reason = request["reason"]
    body: dict[str, Any] = {
        "user_id": data.draw(pattern(request["user_id"]), "user_id"),
        "mode": data.draw(st.sampled_from(request["mode"]["enum"]), "mode"),
    }
    drawn = data.draw(st.one_of(st.none(), st.text(max_size=reason["maxLength"]).filter(lambda r: re.fullmatch(reason["pattern"], r) is not None)), "reason")
    if drawn is not None:
        body["reason"] = drawn
    video = "ban_" + fresh_user()
    r = post_json(open_server, "POST", f"/v1/videos/{video}/bans", body, open_server.token(fresh_user(), streams=[video]))
    assert r.status_code == 201, r.text


@BODIES
@given(slow=st.integers(0, 3600), written_as_float=st.booleans())
def test_settings_the_description_declares_valid_are_set(
    open_server: ServerProcess, served: dict[str, Any], slow: int, written_as_float: bool
) -> None:
    bounds = body_schema(served, "/v1/videos/{video_id}/settings", "put")["properties"]["slow_mode_s"]
    assert (bounds["minimum"], bounds["maximum"]) == (0, 3600)
    video = "slow_" + fresh_user()
    # JSON Schema's "integer" is a number without a fraction, however it is written.
    value: float = float(slow) if written_as_float else slow
    r = post_json(open_server, "PUT", f"/v1/videos/{video}/settings", {"slow_mode_s": value}, open_server.token(fresh_user(), streams=[video]))
    assert r.status_code == 200, r.text
    assert r.json()["slow_mode_s"] == slow


# -- Schemathesis: its own valid data is accepted ----------------------------------------------------

SCHEMA = schemathesis.openapi.from_dict(json.loads(json.dumps(openapi(Settings()))))
WRITES = [(COMMENTS, "POST"), ("/v1/auth/guest", "POST"), ("/v1/videos/{video_id}/bans", "POST"), ("/v1/videos/{video_id}/settings", "PUT")]


@pytest.mark.parametrize(("path", "method"), WRITES, ids=[f"{m} {p}" for p, m in WRITES])
def test_schemathesis_valid_data_is_accepted(open_server: ServerProcess, served: dict[str, Any], path: str, method: str) -> None:
    """Schemathesis' positive data (its ``positive_data_acceptance`` check): 2xx."""

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=SCHEMA[path][method].as_strategy())
    def check(case: Any) -> None:
        video = (case.path_parameters or {}).get("video_id")
        token = open_server.token(fresh_user(), streams=[video] if isinstance(video, str) else [])
        response = case.call(base_url=open_server.url, headers={"Authorization": "Bearer " + token}, timeout=10)
        assert 200 <= response.status_code < 300, f"{case.method} {case.formatted_path} {case.body!r}: {response.status_code} {response.text[:300]}"

    check()
