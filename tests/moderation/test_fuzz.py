"""Fuzzing: schemathesis against ``/openapi.json`` finds no 500s, and no sequence of reads by
other accounts (hypothesis) reveals a shadow-banned user's comment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.settings import Settings
from tests.moderation.clients import fresh_user, history, ids, long_poll, post, snapshot, sse, ws
from tests.support.server import ServerProcess
from transport.openapi import openapi


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    """A server of its own: fuzzed bans and settings must not reach other tests' users."""
    srv = ServerProcess({"LIVECOMMENTS_GUEST_RATE_LIMIT": "10000/1s", "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "10000/1s"}).start()
    yield srv
    srv.close()


# The description the server serves at /openapi.json, built the same way here so that the
# tests exist at collection time (schemathesis' lazy ``from_fixture`` loader does not work
# with this pytest); ``test_the_fuzzed_description_is_the_served_one`` checks they agree.
DESCRIPTION = openapi(Settings())
schema = schemathesis.openapi.from_dict(DESCRIPTION).exclude(path_regex=r"/(events|ws)$")


async def test_the_fuzzed_description_is_the_served_one(fuzz_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=fuzz_server.url) as client:
        served = (await client.get("/openapi.json")).json()
    assert served == json.loads(json.dumps(DESCRIPTION))

# Who calls: nobody, a plain viewer, the streamer of the fuzzed video ids schemathesis
# likes, an admin (who may do everything, so the deep paths run).
CALLERS = ["anonymous", "viewer", "streamer", "admin"]


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@schema.given(caller=st.sampled_from(CALLERS))
def test_no_request_makes_a_500(case: Any, caller: str, fuzz_server: ServerProcess) -> None:
    if case.query and "wait" in case.query:
        case.query["wait"] = 0  # long-poll: do not hold the fuzzer for 30 s
    headers: dict[str, str] = {}
    if caller != "anonymous":
        video = (case.path_parameters or {}).get("video_id", "v")
        roles = ["admin"] if caller == "admin" else ["viewer"]
        streams = [video] if caller == "streamer" and isinstance(video, str) else []
        headers = fuzz_server.headers(f"fuzz-{caller}", roles=roles, streams=streams)
    response = case.call(base_url=fuzz_server.url, headers=headers, timeout=15)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    ctype = response.headers.get("content-type") or [""]
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    if response.status_code >= 400 and ctype.startswith("application/json"):
        body = response.json()
        assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body


# -- no way to see a shadow-banned comment ------------------------------------------------------

# A read by someone other than the banned author: (how, who, a parameter).
READERS = st.sampled_from(["anonymous", "viewer", "streamer", "moderator", "admin"])
READS = st.one_of(
    st.tuples(st.just("history"), READERS, st.integers(min_value=1, max_value=200)),
    st.tuples(st.just("history_before"), READERS, st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("long_poll"), READERS, st.integers(min_value=0, max_value=10)),
    st.tuples(st.just("snapshot"), READERS, st.just(0)),
    st.tuples(st.just("sse"), READERS, st.integers(min_value=0, max_value=200)),
    st.tuples(st.just("ws"), READERS, st.integers(min_value=0, max_value=200)),
    st.tuples(st.just("post_shadow"), READERS, st.just(0)),
    st.tuples(st.just("post_public"), READERS, st.just(0)),
)


class ShadowScene:
    """One video with a shadow-banned author, public comments around the hidden ones."""

    def __init__(self, server: ServerProcess, video: str) -> None:
        self.server = server
        self.video = video
        self.banned = fresh_user("shadow")
        self.hidden_ids: set[str] = set()
        self.hidden_texts: set[str] = set()
        self.cursors: list[str] = ["0"]
        self.count = 0

    def token(self, who: str) -> str | None:
        if who == "anonymous":
            return None
        roles = {"moderator": ["moderator"], "admin": ["admin"]}.get(who, ["viewer"])
        streams = [self.video] if who == "streamer" else []
        return self.server.token(f"reader-{who}", roles=roles, streams=streams)

    async def post_shadow(self, client: httpx.AsyncClient) -> None:
        self.count += 1
        text = f"secret-{self.banned}-{self.count}"
        c = await post(client, self.server, self.video, self.banned, text)
        self.hidden_ids.add(c["id"])
        self.hidden_texts.add(text)
        self.cursors.append(str(int(c["id"]) - 1))

    async def post_public(self, client: httpx.AsyncClient) -> dict[str, Any]:
        self.count += 1
        c = await post(client, self.server, self.video, fresh_user("pub"), f"public {self.count}")
        self.cursors.append(c["id"])
        return c

    def check(self, what: str, seen: list[dict[str, Any]], raw: str = "") -> None:
        leaked = self.hidden_ids & set(ids(seen))
        assert not leaked, f"{what} revealed shadowed comments {leaked}"
        for text in self.hidden_texts:
            assert text not in raw, f"{what} revealed the text {text!r}"


@pytest.fixture(scope="module")
def shadow_server() -> Iterator[ServerProcess]:
    srv = ServerProcess({"LIVECOMMENTS_RATE_LIMIT": "100000/1s", "LIVECOMMENTS_MODERATION_REPEAT": "off"}).start()
    yield srv
    srv.close()


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(reads=st.lists(READS, min_size=1, max_size=6))
async def test_no_reads_by_others_reveal_a_shadowed_comment(shadow_server: ServerProcess, reads: list[tuple[str, str, int]]) -> None:
    srv = shadow_server
    scene = ShadowScene(srv, f"shadowfuzz_{fresh_user('v')}")
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        host = srv.headers(fresh_user("host"), streams=[scene.video])
        r = await client.post(f"/v1/videos/{scene.video}/bans", json={"user_id": scene.banned, "mode": "shadow"}, headers=host)
        assert r.status_code == 201
        await scene.post_public(client)
        await scene.post_shadow(client)
        for how, who, n in reads:
            token = scene.token(who)
            if how == "post_shadow":
                await scene.post_shadow(client)
            elif how == "post_public":
                await scene.post_public(client)
            elif how == "history":
                params: dict[str, Any] = {"limit": n, **({"token": token} if token else {})}
                resp = await client.get(f"/v1/videos/{scene.video}/comments", params=params)
                scene.check("history", resp.json()["comments"], resp.text)
            elif how == "history_before":
                cursor = scene.cursors[n % len(scene.cursors)]
                params = {"before": str(int(cursor) + 1), **({"token": token} if token else {})}
                resp = await client.get(f"/v1/videos/{scene.video}/comments", params=params)
                scene.check("history page", resp.json()["comments"], resp.text)
            elif how == "long_poll":
                cursor = scene.cursors[n % len(scene.cursors)]
                body = await long_poll(client, scene.video, after=cursor, token=token)
                scene.check("long-poll", body["comments"], str(body))
            elif how == "snapshot":
                body = await snapshot(client, scene.video)
                scene.check("snapshot", body["comments"], str(body))
                assert not scene.hidden_ids & set(body["removed"])
            else:
                opener = sse if how == "sse" else ws
                async with opener(srv, scene.video, token=token, backlog=n) as watcher:
                    # Something public after everything so far: once it arrives, anything
                    # the connection would have been sent before it has arrived too.
                    if scene.hidden_ids:
                        await scene.post_shadow(client)
                    marker = await scene.post_public(client)
                    await watcher.wait_comment(marker["id"])
                    scene.check(how, watcher.comments(), str(watcher.events))
        # The author still sees every one of them.
        mine = ids(await history(client, scene.video, token=srv.token(scene.banned)))
        assert scene.hidden_ids <= set(mine)


def test_every_moderation_route_is_described() -> None:
    """The routes the app serves and the description agree, method by method."""
    import re

    from domain.identity import TokenIssuer
    from domain.metrics import Metrics
    from policy.ratelimit import InMemoryRateLimiter
    from transport.app import ingest_app
    from transport.services import IngestParts, Node

    # The routes are only listed, never called: the services behind them are not needed.
    parts = IngestParts(None, None, None, InMemoryRateLimiter())  # type: ignore[arg-type]
    app = ingest_app(Node(Settings(), TokenIssuer("k"), Metrics()), parts)
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("moderation.")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    described = {
        (path, method)
        for path, item in DESCRIPTION["paths"].items()
        if "/bans" in path or "/settings" in path or "moderation-log" in path
        for method in item
        if method != "parameters"
    }
    assert served == described
    assert len(served) == 10
