"""The watch page in a real browser (Debian's Chromium via Playwright), against a real server.

Some tests put Playwright routes in front of the server to script what only a loaded or
draining server would do (a `mode`, `gap`, `goaway` or `reset` event, a rate limit, a
stale token); everything else goes to a real server: the session's shared ``server`` (each
test on a ``video`` of its own), or a ``live_server`` of the test's own when it restarts it.
No sleeps: Playwright's expectations and ``wait_for_*`` calls do the waiting.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

from tests.support.server import ServerProcess

NewPage = Callable[..., Page]

RESTART_TIMEOUT_MS = 30_000


# ---------------------------------------------------------------- helpers


def watch(server: ServerProcess, video: str) -> str:
    return f"{server.url}/watch/{video}"


def items(page: Page) -> Any:
    """Confirmed comments."""
    return page.locator("#comments li[data-id]")


def item(page: Page, text: str) -> Any:
    """The comment(s) whose text is exactly ``text`` (pending, confirmed or failed)."""
    exact = re.compile("^" + re.escape(text) + "$")
    return page.locator("#comments li").filter(has=page.locator(".text", has_text=exact))


def connected(page: Page, timeout: float | None = None) -> None:
    expect(page.locator("#status")).to_have_attribute("data-conn", "open", timeout=timeout)


def post(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def ids(page: Page) -> list[str]:
    return cast(list[str], page.eval_on_selector_all("#comments li[data-id]", "els => els.map(e => e.dataset.id)"))


def assert_ordered_unique(id_list: list[str]) -> None:
    as_ints = [int(i) for i in id_list]
    assert as_ints == sorted(set(as_ints)), id_list


def api_post(server: ServerProcess, video: str, text: str, user: str = "api") -> dict[str, Any]:
    """Post as a user of its own (the shared server's rate limits are per user)."""
    token = server.token(f"{user}-{uuid.uuid4().hex[:8]}", user.title())
    r = httpx.post(
        f"{server.url}/v1/videos/{video}/comments",
        json={"text": text},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    return cast(dict[str, Any], r.json())


def sse(*events: tuple[str, Any] | tuple[str, Any, str]) -> str:
    """An event-stream body: (event, data[, id]) tuples."""
    out = ["retry: 1000\n\n"]
    for ev in events:
        kind, data = ev[0], ev[1]
        id_line = f"id: {ev[2]}\n" if len(ev) > 2 else ""
        out.append(f"event: {kind}\n{id_line}data: {json.dumps(data)}\n\n")
    return "".join(out)


def pump_until(page: Page, condition: Any, timeout_s: float = 10.0) -> None:
    """Let Playwright dispatch events (route handlers run then) until ``condition()``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the page"
        page.wait_for_timeout(20)


def fulfill_sse(route: Route, body: str) -> None:
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, body=body)


def fake_comment(cid: int | str, text: str | None = None) -> dict[str, Any]:
    return {
        "id": str(cid),
        "video_id": "v",
        "author": {"id": "u-fake", "name": "Fake", "verified": False},
        "text": text if text is not None else f"c{cid}",
        "created_at": 1764000000000,
        "client_id": None,
        "pending": False,
    }


@pytest.fixture
def check_js_errors() -> Any:
    pages: list[Page] = []
    yield pages.append
    for page in pages:
        assert page.js_errors == [], page.js_errors  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the basics


def test_post_in_one_page_appears_in_the_other(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    a = new_page(watch(server, video))
    b = new_page(watch(server, video))
    check_js_errors(a)
    check_js_errors(b)
    connected(a)
    connected(b)
    expect(a.locator("#status")).to_have_attribute("data-transport", "sse")

    a.fill("#name", "Alice")
    post(a, "hello from a")
    expect(item(b, "hello from a")).to_have_count(1)
    expect(item(b, "hello from a").locator(".author")).to_have_text("Alice")
    expect(item(a, "hello from a")).to_have_attribute("data-state", "confirmed")

    post(b, "hi back from b")
    expect(item(a, "hi back from b")).to_have_count(1)
    for page in (a, b):
        expect(items(page)).to_have_count(2)
        assert_ordered_unique(ids(page))
    assert ids(a) == ids(b)
    expect(a.locator("#text")).to_have_value("")

    # A page opened later gets them as the backlog, in order.
    c = new_page(watch(server, video))
    expect(items(c)).to_have_count(2)
    assert ids(c) == ids(a)


def test_pending_then_confirmed_without_duplicate(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    a = new_page(watch(server, video))
    b = new_page(watch(server, video))
    check_js_errors(a)
    connected(a)
    connected(b)

    held: list[Route] = []
    a.route(f"**/v1/videos/{video}/comments", lambda route: held.append(route))
    post(a, "first!")
    mine = item(a, "first!")
    expect(mine).to_have_attribute("data-pending", "true")
    expect(mine).to_have_attribute("data-state", "pending")
    client_id = mine.get_attribute("data-client-id")
    assert client_id and re.fullmatch(r"[0-9a-f-]{36}", client_id)
    assert mine.get_attribute("data-id") is None

    # The server stores it, but its 201 is held back: the copy that comes over the
    # stream confirms the pending one (matched by client_id) instead of adding another.
    pump_until(a, lambda: len(held) == 1)
    route = held[0]
    assert json.loads(route.request.post_data or "{}") == {"text": "first!", "client_id": client_id}
    assert (route.request.headers.get("authorization") or "").startswith("Bearer ")
    response = route.fetch()
    assert response.status == 201
    stored = response.json()
    assert stored["client_id"] == client_id
    expect(mine).to_have_attribute("data-state", "confirmed")
    expect(mine).to_have_attribute("data-id", stored["id"])
    expect(mine).not_to_have_attribute("data-pending", "true")
    expect(item(b, "first!")).to_have_attribute("data-id", stored["id"])

    # Now the late 201 arrives: still exactly one.
    route.fulfill(response=response)
    a.unroute(f"**/v1/videos/{video}/comments")
    post(a, "second")  # straight through: confirmed by whichever comes first
    expect(item(a, "second")).to_have_attribute("data-state", "confirmed")
    expect(item(b, "second")).to_have_count(1)
    expect(items(a)).to_have_count(2)
    expect(a.locator("#comments li")).to_have_count(2)
    assert_ordered_unique(ids(a))
    assert ids(a) == ids(b)


def test_text_with_html_is_shown_as_text(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    hostile = '<b>x</b><script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    a = new_page(watch(server, video))
    b = new_page(watch(server, video))
    check_js_errors(a)
    check_js_errors(b)
    connected(a)
    connected(b)
    a.fill("#name", "<i>Mallory</i>")
    post(a, hostile)
    for page in (a, b):
        shown = item(page, hostile)
        expect(shown).to_have_attribute("data-state", "confirmed")
        expect(shown.locator(".text")).to_have_text(hostile)
        expect(shown.locator(".author")).to_have_text("<i>Mallory</i>")
        expect(page.locator("#comments b, #comments i, #comments script, #comments img")).to_have_count(0)
        assert page.evaluate("window.__pwned") is None


def test_remove_takes_the_comment_away_on_both_pages(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    a = new_page(watch(server, video))
    b = new_page(watch(server, video))
    check_js_errors(a)
    check_js_errors(b)
    connected(a)
    connected(b)
    post(a, "regret this")
    post(a, "keep this")
    theirs = api_post(server, video, "spam", user="spammer")
    for page in (a, b):
        expect(items(page)).to_have_count(3)

    # The author deletes their own comment from the page; others have no button for it.
    expect(item(b, "regret this").locator("button[data-action=delete]")).to_have_count(0)
    expect(item(a, "spam").locator("button[data-action=delete]")).to_have_count(0)
    item(a, "regret this").locator("button[data-action=delete]").click()
    for page in (a, b):
        expect(item(page, "regret this")).to_have_count(0)

    # A moderator deletes someone else's (through the API): gone from both screens.
    mod = server.token("mod1", "Mod", roles=["moderator"])
    r = httpx.delete(
        f"{server.url}/v1/videos/{video}/comments/{theirs['id']}",
        headers={"Authorization": f"Bearer {mod}"},
    )
    assert r.status_code in (200, 204), r.text
    for page in (a, b):
        expect(item(page, "spam")).to_have_count(0)
        expect(items(page)).to_have_count(1)
        expect(item(page, "keep this")).to_have_count(1)

    # A page opened afterwards doesn't get them back.
    c = new_page(watch(server, video))
    expect(item(c, "keep this")).to_have_count(1)
    expect(items(c)).to_have_count(1)


def test_moderator_token_gets_a_delete_button(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    theirs = api_post(server, video, "off-topic", user="someone")
    mod = server.token("mod2", "Mod", roles=["moderator"])
    # A token handed over in the fragment is kept and taken off the address bar.
    m = new_page(f"{watch(server, video)}#token={mod}")
    v = new_page(watch(server, video))
    check_js_errors(m)
    connected(m)
    connected(v)
    assert "#token=" not in m.url
    expect(item(v, "off-topic")).to_have_count(1)
    expect(item(v, "off-topic").locator("button[data-action=delete]")).to_have_count(0)
    target = item(m, "off-topic")
    target.locator("button[data-action=delete]").click()
    expect(item(v, "off-topic")).to_have_count(0)
    expect(item(m, "off-topic")).to_have_count(0)
    assert theirs["id"] not in ids(v)


def test_moderator_bans_from_the_page_and_the_shadow_banned_see_only_themselves(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    first = api_post(server, video, "first from the troll", user="troll-b")
    troll = server.token(first["author"]["id"], "Troll")  # the page acts as that same user
    mod = server.token("mod-b", "Mod", roles=["moderator"])
    m = new_page(f"{watch(server, video)}#token={mod}")
    t = new_page(f"{watch(server, video)}#token={troll}")
    v = new_page(watch(server, video))
    for page in (m, t, v):
        check_js_errors(page)
        connected(page)
    # Viewers see no ban menu; the moderator does, on someone else's comment.
    expect(item(v, "first from the troll").locator(".ban-menu")).to_have_count(0)
    menu = item(m, "first from the troll").locator(".ban-menu")
    menu.locator("summary").click()
    menu.locator("button[data-mode=shadow]").click()
    expect(m.locator("#notice")).to_contain_text("shadow-banned")
    # The troll's next comment: on the troll's own page, and nowhere else.
    post(t, "nobody sees this")
    expect(item(t, "nobody sees this")).to_have_attribute("data-state", "confirmed")
    marker = api_post(server, video, "after the shadow comment", user="bystander")
    expect(item(v, "after the shadow comment")).to_have_count(1)
    expect(item(m, "after the shadow comment")).to_have_count(1)
    expect(item(v, "nobody sees this")).to_have_count(0)
    expect(item(m, "nobody sees this")).to_have_count(0)
    assert marker["id"] in ids(v)


# ---------------------------------------------------------------- reconnecting


def test_reconnects_after_server_restart_without_loss_or_duplicates(
    live_server: ServerProcess, new_page: NewPage, check_js_errors: Any
) -> None:
    a = new_page(watch(live_server, "restart"))
    b = new_page(watch(live_server, "restart"))
    check_js_errors(a)
    check_js_errors(b)
    connected(a)
    connected(b)
    post(a, "before restart")
    api_post(live_server, "restart", "also before")
    for page in (a, b):
        expect(items(page)).to_have_count(2)

    live_server.stop()
    for page in (a, b):
        expect(page.locator("#status")).not_to_have_attribute("data-conn", "open", timeout=RESTART_TIMEOUT_MS)
    live_server.start()

    # Posted while the pages are still finding their way back: the resume catches it.
    api_post(live_server, "restart", "while reconnecting")
    for page in (a, b):
        connected(page, timeout=RESTART_TIMEOUT_MS)
        expect(page.locator("#status")).to_have_attribute("data-transport", "sse")
    post(b, "after restart")
    for page in (a, b):
        expect(item(page, "while reconnecting")).to_have_count(1, timeout=RESTART_TIMEOUT_MS)
        expect(item(page, "after restart")).to_have_attribute("data-state", "confirmed")
        expect(items(page)).to_have_count(4)
        expect(page.locator("#comments li")).to_have_count(4)
        assert_ordered_unique(ids(page))
    assert ids(a) == ids(b)


def test_goaway_reconnects_after_jitter_with_last_event_id(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    first = api_post(server, video, "already there")
    seen: list[tuple[float, str]] = []

    def handler(route: Route) -> None:
        seen.append((time.monotonic(), route.request.url))
        if len(seen) == 1:
            fulfill_sse(route, sse(("comment", first, first["id"]), ("goaway", {})))
        else:
            route.continue_()

    a = new_page()
    check_js_errors(a)
    a.route(f"**/v1/videos/{video}/events*", handler)
    a.goto(watch(server, video))
    expect(item(a, "already there")).to_have_count(1)
    connected(a)
    pump_until(a, lambda: len(seen) >= 2)
    (t0, url0), (t1, url1) = seen[0], seen[1]
    assert "last_event_id" not in url0
    assert f"last_event_id={first['id']}" in url1
    assert t1 - t0 >= 0.45, "goaway reconnects after a jitter of 0.5-3 s"

    api_post(server, video, "after goaway")
    expect(item(a, "after goaway")).to_have_count(1)
    expect(items(a)).to_have_count(2)


def test_a_spread_video_is_watched_through_a_shard_drawn_by_load(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    # Not spread (the real server answers 1 shard): the stream URL is what it always was.
    plain = new_page()
    check_js_errors(plain)
    plain_urls: list[str] = []
    plain.on("request", lambda request: plain_urls.append(request.url))
    plain.goto(watch(server, video))
    connected(plain)
    assert plain.evaluate("window.livecomments.shard") == 0
    assert [u for u in plain_urls if "/events" in u] and not [u for u in plain_urls if "shard=" in u]

    # Spread over 4 shards, the last one empty: the draw (Math.random fixed at 0.5) lands
    # there; after a goaway the count is 2: shard 3 is gone, the page draws again.
    answers = [{"shards": 4, "viewers": [50, 50, 50, 0]}, {"shards": 2, "viewers": [10, 0]}]
    spreads: list[str] = []
    streams: list[str] = []

    def spread(route: Route) -> None:
        spreads.append(route.request.url)
        answer = answers[min(len(spreads), len(answers)) - 1]
        route.fulfill(status=200, content_type="application/json", body=json.dumps({"video_id": video, **answer}))

    def events(route: Route) -> None:
        streams.append(route.request.url)
        if len(streams) == 1:
            fulfill_sse(route, sse(("goaway", {"reconnect_ms": [500, 3000]})))
        else:
            route.continue_()  # the real server takes any shard below its maximum

    a = new_page(init_script="Math.random = () => 0.5;")
    check_js_errors(a)
    a.route(f"**/v1/videos/{video}/spread", spread)
    a.route(f"**/v1/videos/{video}/events*", events)
    a.goto(watch(server, video))
    pump_until(a, lambda: len(streams) >= 2)
    assert "shard=3" in streams[0] and "shard=1" in streams[1]
    assert len(spreads) == 2  # asked before each connection
    connected(a)
    assert a.evaluate("window.livecomments.shard") == 1
    api_post(server, video, "through shard 1")
    expect(item(a, "through shard 1")).to_have_count(1)
    expect(item(plain, "through shard 1")).to_have_count(1)


# ---------------------------------------------------------------- long-poll


@pytest.mark.parametrize("how", ["events-blocked", "no-eventsource"])
def test_falls_back_to_long_poll(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any, how: str
) -> None:
    api_post(server, video, "backlog one")
    api_post(server, video, "backlog two")
    if how == "no-eventsource":
        a = new_page(init_script="delete window.EventSource;")
    else:
        a = new_page()
        a.route(f"**/v1/videos/{video}/events*", lambda route: route.abort())
    check_js_errors(a)
    a.goto(watch(server, video))
    b = new_page(watch(server, video))
    expect(a.locator("#status")).to_have_attribute("data-transport", "longpoll")
    connected(a)
    connected(b)
    expect(items(a)).to_have_count(2)

    post(b, "from the streaming page")
    expect(item(a, "from the streaming page")).to_have_count(1)
    post(a, "from the long-polling page")
    expect(item(b, "from the long-polling page")).to_have_count(1)
    expect(item(a, "from the long-polling page")).to_have_attribute("data-state", "confirmed")

    # Removals reach long-polling pages too.
    mod = server.token("mod3", "Mod", roles=["moderator"])
    target = ids(b)[0]
    r = httpx.delete(f"{server.url}/v1/videos/{video}/comments/{target}", headers={"Authorization": f"Bearer {mod}"})
    assert r.status_code in (200, 204), r.text
    post(b, "nudge")  # wakes the long-poll, which carries the removal with it
    expect(item(a, "nudge")).to_have_count(1)
    expect(a.locator(f'#comments li[data-id="{target}"]')).to_have_count(0)
    expect(items(a)).to_have_count(4)
    assert_ordered_unique(ids(a))
    assert ids(a) == ids(b)
    expect(a.locator("#status")).to_have_attribute("data-transport", "longpoll")


# ---------------------------------------------------------------- posting errors and tokens


def test_refused_post_is_marked_failed_with_the_servers_detail(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    a = new_page(watch(server, video))
    check_js_errors(a)
    connected(a)

    def limited(route: Route) -> None:
        route.fulfill(
            status=429,
            headers={"Content-Type": "application/json", "Retry-After": "7"},
            body=json.dumps({"error": "rate_limited", "detail": "You are posting too fast."}),
        )

    a.route(f"**/v1/videos/{video}/comments", limited)
    post(a, "too fast")
    failed = item(a, "too fast")
    expect(failed).to_have_attribute("data-state", "failed")
    expect(failed).not_to_have_attribute("data-pending", "true")
    expect(a.locator("#error")).to_be_visible()
    expect(a.locator("#error")).to_contain_text("You are posting too fast.")
    expect(a.locator("#error")).to_contain_text("7 s")

    # Retry once the limit is over: the same comment, confirmed, still one.
    a.unroute(f"**/v1/videos/{video}/comments")
    failed.locator("button[data-action=retry]").click()
    expect(failed).to_have_attribute("data-state", "confirmed")
    expect(item(a, "too fast")).to_have_count(1)
    expect(a.locator("#error")).to_be_hidden()

    # A real refusal from the server: text over the limit is a 422 with a detail.
    post(a, "x" * 501)
    expect(item(a, "x" * 501)).to_have_attribute("data-state", "failed")
    expect(a.locator("#error")).to_be_visible()
    assert a.locator("#error").inner_text().strip()


def test_stale_token_is_replaced_on_401(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    stale = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJub2JvZHkiLCJuYW1lIjoiWCJ9.bm90LWEtc2lnbmF0dXJl"
    a = new_page(init_script=f"localStorage.setItem('livecomments.token', {json.dumps(stale)});")
    check_js_errors(a)
    a.goto(watch(server, video))
    connected(a)
    a.fill("#name", "Bob")
    post(a, "with a fresh token")
    expect(item(a, "with a fresh token")).to_have_attribute("data-state", "confirmed")
    expect(item(a, "with a fresh token").locator(".author")).to_have_text("Bob")
    token = a.evaluate("localStorage.getItem('livecomments.token')")
    assert token and token != stale
    assert a.evaluate("window.livecomments.userId")


# ---------------------------------------------------------------- stream events


def test_comments_are_ordered_deduplicated_and_capped(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    events: list[tuple[str, Any, str]] = []
    for i in [5, 3, 4, 3, 5, 1, 2]:
        events.append(("comment", fake_comment(i), str(i)))
    # Ids past 2**53: compared as decimal strings, not JavaScript numbers.
    big = 2**62
    for i in [big + 2, big + 1, big + 2]:
        events.append(("comment", fake_comment(i, f"big{i - big}"), str(i)))
    for i in range(100, 350):
        events.append(("comment", fake_comment(i), str(i)))
    held: list[Route] = []

    def handler(route: Route) -> None:
        held.append(route)
        if len(held) == 1:
            fulfill_sse(route, sse(*events))
        # later reconnects just hang

    a = new_page()
    check_js_errors(a)
    a.route(f"**/v1/videos/{video}/events*", handler)
    a.goto(watch(server, video))
    expect(items(a).last).to_have_attribute("data-id", str(big + 2))
    expect(items(a)).to_have_count(200)
    shown = ids(a)
    assert_ordered_unique(shown)
    assert shown[-2:] == [str(big + 1), str(big + 2)]
    assert shown[0] == str(350 - 198)


def test_reset_gap_and_sampled_mode(server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any) -> None:
    script = sse(
        ("comment", fake_comment(1), "1"),
        ("comment", fake_comment(2), "2"),
        ("reset", {}),
        ("comment", fake_comment(10), "10"),
        ("comment", fake_comment(11), "11"),
        ("gap", {"missed": 7}),
        ("mode", {"mode": "sampled", "snapshot_url": None, "interval_ms": None}),
    )
    held: list[Route] = []

    def handler(route: Route) -> None:
        held.append(route)
        if len(held) == 1:
            fulfill_sse(route, script)
        # later reconnects just hang

    a = new_page()
    check_js_errors(a)
    a.route(f"**/v1/videos/{video}/events*", handler)
    a.goto(watch(server, video))
    expect(a.locator("#notice")).to_have_text("7 comments skipped")
    expect(a.locator("#notice")).to_be_visible()
    expect(a.locator("#status")).to_have_attribute("data-mode", "sampled")
    expect(a.locator("#status")).to_contain_text("sample")
    assert ids(a) == ["10", "11"]


# ---------------------------------------------------------------- cdn mode


def test_cdn_mode_polls_the_snapshot_and_returns_to_push(
    server: ServerProcess, video: str, new_page: NewPage, check_js_errors: Any
) -> None:
    snapshot_url = f"/v1/videos/{video}/snapshot.json"
    api_post(server, video, "before cdn", user="u0")
    b = new_page(watch(server, video))  # an ordinary push viewer, for comparison
    connected(b)
    expect(items(b)).to_have_count(1)

    phase = {"name": "cdn"}
    stream_urls: list[str] = []
    parked: list[Route] = []

    def events(route: Route) -> None:
        stream_urls.append(route.request.url)
        if phase["name"] == "cdn":
            if len(stream_urls) == 1:
                fulfill_sse(route, sse(("mode", {"mode": "cdn", "snapshot_url": snapshot_url, "interval_ms": 400})))
            else:
                parked.append(route)  # the control stream, open and quiet
        else:
            route.continue_()

    snapshot = {"frozen": False, "conditional": 0, "not_modified": 0}

    def snapshots(route: Route) -> None:
        if route.request.headers.get("if-none-match"):
            snapshot["conditional"] += 1
        if snapshot["frozen"]:
            # A stale edge: an old, empty snapshot (Chromium cannot be handed a 304 here).
            route.fulfill(status=200, json={"comments": [], "removed": []})
        else:
            route.continue_()

    def count_304(response: Any) -> None:
        if "snapshot.json" in response.url and response.status == 304:
            snapshot["not_modified"] += 1

    a = new_page(init_script=INSERT_TIMES)
    check_js_errors(a)
    a.route(f"**/v1/videos/{video}/events*", events)
    a.route(f"**{snapshot_url}*", snapshots)
    a.on("response", count_304)
    a.goto(watch(server, video))
    expect(a.locator("#status")).to_have_attribute("data-mode", "cdn")
    expect(item(a, "before cdn")).to_have_count(1)  # first snapshot: shown as a backlog

    # Unchanged snapshots are asked for with If-None-Match and answered 304.
    a.wait_for_event("response", lambda r: "snapshot.json" in r.url and r.status == 304)

    # New comments that land in one snapshot are spread over the interval.
    snapshot["frozen"] = True
    a.wait_for_event("requestfinished", lambda r: "snapshot.json" in r.url)
    for n in range(1, 5):
        api_post(server, video, f"burst {n}", user=f"u{n}")
    snapshot["frozen"] = False
    for n in range(1, 5):
        expect(item(a, f"burst {n}")).to_have_count(1)
    burst_times = sorted(a.evaluate(BURST_TIMES))
    assert len(burst_times) == 4
    assert burst_times[-1] - burst_times[0] >= 150, burst_times  # not all in one frame

    # Our own comment appears at once as pending and is confirmed, once.
    post(a, "mine in cdn mode")
    expect(item(a, "mine in cdn mode")).to_have_attribute("data-state", "confirmed")
    expect(item(b, "mine in cdn mode")).to_have_count(1)
    expect(item(a, "mine in cdn mode")).to_have_count(1)
    assert snapshot["conditional"] >= 1
    assert snapshot["not_modified"] >= 1

    # Back to push: a comment posted while snapshots are stale is not lost, because the
    # page resumes the stream from the last id it showed.
    snapshot["frozen"] = True
    a.wait_for_event("requestfinished", lambda r: "snapshot.json" in r.url)
    api_post(server, video, "during the switch", user="u9")
    phase["name"] = "push"
    assert parked, "the page keeps a control stream open in cdn mode"
    fulfill_sse(parked.pop(), sse(("mode", {"mode": "push", "snapshot_url": None, "interval_ms": None})))
    expect(a.locator("#status")).to_have_attribute("data-mode", "push")
    expect(item(a, "during the switch")).to_have_count(1)
    assert "last_event_id=" in stream_urls[-1], stream_urls
    connected(a)

    post(b, "after the switch")
    expect(item(a, "after the switch")).to_have_count(1)
    expect(items(a)).to_have_count(8)
    expect(items(b)).to_have_count(8)
    assert_ordered_unique(ids(a))
    assert ids(a) == ids(b)


BURST_TIMES = """() => [...document.querySelectorAll('#comments li[data-id]')]
  .filter((li) => li.querySelector('.text').textContent.startsWith('burst '))
  .map((li) => window.__insertedAt[li.dataset.id])"""

INSERT_TIMES = """
window.__insertedAt = {};
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) {
    if (n.nodeType === 1 && n.dataset && n.dataset.id && !(n.dataset.id in window.__insertedAt)) {
      window.__insertedAt[n.dataset.id] = performance.now();
    }
  }
}).observe(document, { childList: true, subtree: true });
"""
