"""The watch page through real tier switches, against a real server.

The server runs with the thresholds scaled down to a handful of viewers; two Chromium
pages and extra SSE viewers (httpx streams, see ``tests/e2e/sse.py``) make up the real
viewer count that drives the video up through ``sampled`` and ``cdn`` and back down to
``push``. Nothing is faked: the `mode` events, the snapshots and the stream resume all
come from the server. The extra viewers (and a background poster) run on a trio loop in
a thread of their own, because Playwright's sync API must not share a thread with a
running trio loop.

Thresholds: two pages alone are ``push``; 4 viewers make it ``sampled`` (back below 3),
8 make it ``cdn`` (back below 7). Every step lands at least one viewer away from a
threshold it must not cross, so a page reconnecting during a switch cannot tip the mode.
Sampling aims at 1000 comments/s, so at this test's pace nothing is sampled out and
every comment must be shown.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast

import httpx
import trio
from playwright.sync_api import Page, Request, Route, expect

from tests.browser.test_page import api_post, assert_ordered_unique, connected, ids, item, post, pump_until, watch
from tests.e2e.sse import SSEStream, open_sse
from tests.support.server import ServerProcess

NewPage = Callable[..., Page]

TIERS = {
    "LIVECOMMENTS_TIER_SAMPLED_AT": "4",
    "LIVECOMMENTS_TIER_SAMPLED_BELOW": "3",
    "LIVECOMMENTS_TIER_CDN_AT": "8",
    "LIVECOMMENTS_TIER_CDN_BELOW": "7",
    "LIVECOMMENTS_TIER_MIN_DWELL_S": "0",
    "LIVECOMMENTS_SAMPLE_TARGET_PER_S": "1000",
    "LIVECOMMENTS_RATE_LIMIT": "100000/1s",
}
PAGES = 2  # each page holds one stream open in every mode (a control stream in cdn)

TRICKLE_EVERY_S = 0.25  # the background poster's pace (load, not synchronisation)
TRICKLE_MAX = 120  # so everything posted fits the page's 200 comments

# Records every value #status[data-mode] takes, in order, without repeats.
MODE_LOG = """
window.__modes = [];
new MutationObserver(() => {
  const el = document.getElementById('status');
  const m = el && el.dataset.mode;
  if (m && window.__modes[window.__modes.length - 1] !== m) window.__modes.push(m);
}).observe(document, { attributes: true, attributeFilter: ['data-mode'], subtree: true, childList: true });
"""


class _Viewer:
    def __init__(self, stream: SSEStream, scope: trio.CancelScope, gone: trio.Event) -> None:
        self.stream = stream
        self.scope = scope
        self.gone = gone


class Crowd:
    """Extra viewers and a background poster on a trio loop in a thread of their own.

    ``add(n)`` returns once ``n`` more streams are open (the server answered them),
    ``remove(n)`` once the last ``n`` are closed. ``start_posting``/``stop_posting`` run
    a poster that keeps posting as other users, on its own, through every switch.
    """

    def __init__(self, srv: ServerProcess, video: str) -> None:
        self.url = srv.url
        self.video = video
        self.open: list[_Viewer] = []
        self.every: list[_Viewer] = []  # open or closed, in the order they came
        self.posted: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._headers = srv.headers("trickle", name="Trickle")
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._quit: trio.Event | None = None
        self._stop_posting: trio.Event | None = None
        self._poster_done: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="crowd", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the crowd's trio loop did not start"

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._quit = trio.Event()
            self._ready.set()
            await self._quit.wait()
            nursery.cancel_scope.cancel()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def _run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    # -- viewers ------------------------------------------------------------------------------

    def add(self, n: int) -> None:
        self._run(self._add, n)

    def remove(self, n: int) -> None:
        self._run(self._remove, n)

    async def _add(self, n: int) -> None:
        assert self._nursery is not None
        for _ in range(n):
            await self._nursery.start(self._viewer)

    async def _viewer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        gone = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with open_sse(self.url, f"/v1/videos/{self.video}/events") as stream:
                    viewer = _Viewer(stream, scope, gone)
                    self.open.append(viewer)
                    self.every.append(viewer)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            gone.set()

    async def _remove(self, n: int) -> None:
        leaving, self.open = self.open[-n:], self.open[:-n]
        for v in leaving:
            v.scope.cancel()
        for v in leaving:
            await v.gone.wait()  # the connection is closed

    def pushed_ids(self) -> set[str]:
        """Ids of every comment any extra viewer was pushed."""

        def collect() -> set[str]:
            return {cid for v in self.every for cid in v.stream.comment_ids()}

        return cast(set[str], self._run_sync(collect))

    def mode_events(self) -> list[list[str]]:
        def collect() -> list[list[str]]:
            return [[e.json()["mode"] for e in v.stream.named("mode")] for v in self.every]

        return cast(list[list[str]], self._run_sync(collect))

    # -- the background poster ----------------------------------------------------------------

    def start_posting(self) -> None:
        self._run(self._start_posting)

    def stop_posting(self) -> list[dict[str, Any]]:
        """Stop after the post in flight (if any) has its answer; returns what was posted."""
        self._run(self._stop)
        return list(self.posted)

    async def _start_posting(self) -> None:
        assert self._nursery is not None
        self._stop_posting, self._poster_done = trio.Event(), trio.Event()
        await self._nursery.start(self._poster, self._stop_posting, self._poster_done)

    async def _stop(self) -> None:
        assert self._stop_posting is not None and self._poster_done is not None
        self._stop_posting.set()
        await self._poster_done.wait()

    async def _poster(
        self, stop: trio.Event, done: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
                task_status.started()
                n = 0
                while not stop.is_set() and n < TRICKLE_MAX:
                    n += 1
                    r = await client.post(
                        f"/v1/videos/{self.video}/comments", json={"text": f"trickle {n}"}, headers=self._headers
                    )
                    if r.status_code == 201:
                        self.posted.append(r.json())
                    else:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                    with trio.move_on_after(TRICKLE_EVERY_S):
                        await stop.wait()
        except Exception as e:  # reported by the test, not lost in this thread
            self.errors.append(repr(e))
        finally:
            done.set()

    def close(self) -> None:
        if self._token is not None and self._quit is not None:
            try:
                self._run_sync(self._quit.set)
            except trio.RunFinishedError:
                pass
        self._thread.join(15)


# ---------------------------------------------------------------- helpers


def mode_is(page: Page, mode: str) -> None:
    expect(page.locator("#status")).to_have_attribute("data-mode", mode)


def shown_once(page: Page, text: str) -> None:
    expect(item(page, text)).to_have_count(1)
    expect(item(page, text)).to_have_attribute("data-state", "confirmed")


def requests_to(page: Page, part: str) -> list[str]:
    """The URLs of the page's requests that contain ``part``, recorded as they are made."""
    urls: list[str] = []

    def on_request(request: Request) -> None:
        if part in request.url:
            urls.append(request.url)

    page.on("request", on_request)
    return urls


def history(srv: ServerProcess, video: str) -> list[str]:
    r = httpx.get(f"{srv.url}/v1/videos/{video}/comments", params={"limit": "200"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["next"] is None, "more than one page of history: the test posted too much"
    return sorted((c["id"] for c in body["comments"]), key=int)


# ---------------------------------------------------------------- the test


def test_page_follows_real_tier_switches_without_losing_or_duplicating(
    server_factory: Any, video: str, new_page: NewPage
) -> None:
    srv: ServerProcess = server_factory(TIERS)
    crowd = Crowd(srv, video)
    try:
        run_the_switches(srv, video, new_page, crowd)
    finally:
        crowd.close()


def run_the_switches(srv: ServerProcess, video: str, new_page: NewPage, crowd: Crowd) -> None:
    comments_url = f"**/v1/videos/{video}/comments"
    snapshot_url = f"**/v1/videos/{video}/snapshot.json*"

    a = new_page(init_script=MODE_LOG)  # posts, and later loses its snapshots for a while
    b = new_page(init_script=MODE_LOG)  # only watches
    pages = (a, b)
    snapshot_polls = [requests_to(p, "/snapshot.json") for p in pages]
    stream_urls = requests_to(a, f"/v1/videos/{video}/events")
    for p in pages:
        p.goto(watch(srv, video))
        connected(p)
        mode_is(p, "push")

    page_texts: list[str] = []  # posted from page a
    api_posts: list[dict[str, Any]] = []  # posted by others through the API, step by step

    def from_page(text: str) -> None:
        post(a, text)
        page_texts.append(text)

    def from_api(text: str) -> dict[str, Any]:
        c = api_post(srv, video, text)
        api_posts.append(c)
        return c

    def both_show(*texts: str) -> None:
        for p in pages:
            for text in texts:
                shown_once(p, text)

    # -- push: the two pages are the only viewers ------------------------------------------
    from_page("push: from the page")
    from_api("push: from the api")
    both_show("push: from the page", "push: from the api")
    crowd.start_posting()  # from here on, others post on their own across every switch

    # -- sampled: 4 viewers ------------------------------------------------------------------
    crowd.add(2)
    for p in pages:
        mode_is(p, "sampled")
        expect(p.locator("#status")).to_contain_text("sample")
    from_page("sampled: from the page")
    from_api("sampled: from the api")
    both_show("sampled: from the page", "sampled: from the api")

    # -- cdn: 8 viewers; comments come from the snapshot only ----------------------------------
    crowd.add(4)
    for p in pages:
        mode_is(p, "cdn")
    in_cdn = [from_api("cdn: from the api")["id"]]
    both_show("cdn: from the api")

    # The page's own comment shows at once as pending; with its 201 held back, it is the
    # snapshot that confirms it, and the late 201 adds no second copy.
    held: list[Route] = []
    a.route(comments_url, lambda route: held.append(route))
    from_page("cdn: from the page")
    mine = item(a, "cdn: from the page")
    expect(mine).to_have_attribute("data-state", "pending")
    expect(mine).to_have_attribute("data-pending", "true")
    pump_until(a, lambda: len(held) == 1)
    response = held[0].fetch()  # the server stores it now
    assert response.status == 201, response.text()
    stored = response.json()
    in_cdn.append(stored["id"])
    expect(mine).to_have_attribute("data-state", "confirmed")
    expect(mine).to_have_attribute("data-id", stored["id"])
    shown_once(b, "cdn: from the page")
    held[0].fulfill(response=response)
    a.unroute(comments_url)
    shown_once(a, "cdn: from the page")
    assert all(snapshot_polls), "both pages poll the snapshot in cdn mode"

    # -- cdn -> sampled (4 viewers) ---------------------------------------------------------
    # Page a's snapshots fail from now on (its edge is down), so what is posted from here
    # reaches it only through the stream, resumed from the last id it showed.
    a.route(snapshot_url, lambda route: route.abort())
    a.wait_for_event("requestfailed", lambda r: "snapshot.json" in r.url)  # earlier polls are over
    resumed_from = len(stream_urls)
    from_api("switch: after a's last snapshot")
    crowd.remove(4)
    for p in pages:
        mode_is(p, "sampled")
    both_show("switch: after a's last snapshot")
    assert any("last_event_id=" in u for u in stream_urls[resumed_from:]), stream_urls
    a.unroute(snapshot_url)
    from_page("sampled again: from the page")
    from_api("sampled again: from the api")
    both_show("sampled again: from the page", "sampled again: from the api")

    # -- push: the two pages alone again ------------------------------------------------------
    crowd.remove(2)
    for p in pages:
        mode_is(p, "push")
    from_page("push again: from the page")
    from_api("push again: from the api")
    both_show("push again: from the page", "push again: from the api")
    trickle = crowd.stop_posting()
    assert crowd.errors == [], crowd.errors

    # -- every comment exactly once, in id order, on both pages --------------------------------
    expected = history(srv, video)
    own_ids = [item(a, text).get_attribute("data-id") or "" for text in page_texts]
    assert all(own_ids), dict(zip(page_texts, own_ids))
    assert sorted(expected) == sorted([*own_ids, *(c["id"] for c in api_posts), *(c["id"] for c in trickle)])
    assert len(expected) < 200  # the page keeps 200
    for p in pages:
        expect(p.locator(f'#comments li[data-id="{expected[-1]}"]')).to_have_count(1)
        shown = ids(p)
        assert_ordered_unique(shown)
        missing = sorted(set(expected) - set(shown), key=int)
        assert shown == expected, f"missing {missing}, extra {sorted(set(shown) - set(expected), key=int)}"
        expect(p.locator("#comments li")).to_have_count(len(expected))  # nothing pending or failed left

    # The server pushed nothing in cdn mode, and the pages went through each mode once.
    assert not set(in_cdn) & crowd.pushed_ids()
    modes = crowd.mode_events()  # first the 2 that came for sampled, then the 4 for cdn
    assert modes == [["sampled", "cdn", "sampled"]] * 2 + [["sampled", "cdn"]] * 4, modes
    for p in pages:
        assert p.evaluate("window.__modes") == ["push", "sampled", "cdn", "sampled", "push"]
        assert p.js_errors == [], p.js_errors  # type: ignore[attr-defined]
