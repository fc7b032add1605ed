"""Automod end to end: each rule takes a comment off every viewer's screen (a ``remove``
event) and out of history, long-poll and the snapshot, and logs it as ``automod``."""

from __future__ import annotations

from typing import Any

import httpx
import trio

from tests.moderation.clients import (
    fresh_user,
    history,
    ids,
    long_poll,
    metric,
    moderation_log,
    post,
    snapshot,
    sse,
    ws,
)
from tests.support.server import ServerProcess


async def assert_removed_everywhere(
    client: httpx.AsyncClient, srv: ServerProcess, video: str, comment: dict[str, Any], rule: str
) -> None:
    """Called once a viewer got the ``remove``: every read path agrees, and the log says why."""
    cid = comment["id"]
    assert cid not in ids(await history(client, video))
    assert cid not in ids(await history(client, video, token=srv.token(comment["author"]["id"])))
    polled = await long_poll(client, video)
    assert cid not in ids(polled["comments"])
    assert cid in polled["removed"]
    snap = await snapshot(client, video)
    assert cid not in ids(snap["comments"])
    assert cid in snap["removed"]
    entries = [e for e in await moderation_log(client, srv, video) if e["comment_id"] == cid]
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["actor"] == "automod"
    assert entry["action"] == "automod_remove"
    assert entry["reason"] == rule
    assert entry["target_user"] == comment["author"]["id"]
    assert entry["video_id"] == video
    assert isinstance(entry["details"]["post_to_removal_ms"], int)


async def test_a_blocked_word_is_removed_from_every_viewer(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    author, other = fresh_user(), fresh_user()
    async with sse(srv, video) as anon, sse(srv, video, token=srv.token(author)) as own, ws(srv, video) as socket_viewer:
        fine = await post(client, srv, video, other, "a perfectly fine comment")
        spam = await post(client, srv, video, author, "this is SPAMWORD, really!")
        for viewer in (anon, own, socket_viewer):
            await viewer.wait_removed(spam["id"])
            await viewer.wait_comment(fine["id"])
            assert fine["id"] not in viewer.removed_ids()
    await assert_removed_everywhere(client, srv, video, spam, "blocked_word")
    assert fine["id"] in ids(await history(client, video))


async def test_a_blocked_phrase_matches_across_case_and_spacing(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    async with sse(srv, video) as viewer:
        spam = await post(client, srv, video, fresh_user(), "BUY   Followers!!! cheap")
        await viewer.wait_removed(spam["id"])
    await assert_removed_everywhere(client, srv, video, spam, "blocked_word")


async def test_a_blocked_pattern_is_removed(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    async with sse(srv, video) as viewer:
        spam = await post(client, srv, video, fresh_user(), "get FREE v-bucks at my place")
        await viewer.wait_removed(spam["id"])
    await assert_removed_everywhere(client, srv, video, spam, "blocked_pattern")


async def test_a_link_from_a_new_account_is_removed(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    async with sse(srv, video) as viewer:
        spam = await post(client, srv, video, fresh_user(), "my stream: https://spam.example.com/join")
        await viewer.wait_removed(spam["id"])
    await assert_removed_everywhere(client, srv, video, spam, "new_account_link")


async def test_the_streamers_links_stay(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    host = fresh_user("host")
    async with sse(srv, video) as viewer:
        link = await post(client, srv, video, host, "merch at www.example.com", streams=[video])
        bait = await post(client, srv, video, fresh_user(), "classifier-bait after the link")
        await viewer.wait_removed(bait["id"])  # the later comment was judged: the link was too
    assert link["id"] in ids(await history(client, video))
    assert link["id"] not in viewer.removed_ids()


async def test_repeated_text_is_removed(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    user = fresh_user()
    async with sse(srv, video) as viewer:
        first = await post(client, srv, video, user, "Hello there")
        second = await post(client, srv, video, user, "hello   THERE!")
        third = await post(client, srv, video, user, "hello there.")
        await viewer.wait_removed(third["id"])
        await viewer.wait_comment(second["id"])
    await assert_removed_everywhere(client, srv, video, third, "repeated_text")
    kept = ids(await history(client, video))
    assert first["id"] in kept and second["id"] in kept


async def test_the_same_text_across_videos_is_removed(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    user = fresh_user()
    videos = [f"{video}_a", f"{video}_b", f"{video}_c"]
    async with sse(srv, videos[2]) as viewer:
        firsts = [await post(client, srv, v, user, "come watch my channel") for v in videos[:2]]
        third = await post(client, srv, videos[2], user, "Come watch my channel!")
        await viewer.wait_removed(third["id"])
    await assert_removed_everywhere(client, srv, videos[2], third, "cross_video_flood")
    for v, c in zip(videos, firsts):
        assert c["id"] in ids(await history(client, v))


async def test_the_classifier_removes_what_it_flags(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    async with sse(srv, video) as viewer:
        spam = await post(client, srv, video, fresh_user(), "classifier-bait")
        await viewer.wait_removed(spam["id"])
    await assert_removed_everywhere(client, srv, video, spam, "classifier:marker")


async def test_a_failing_classifier_lets_the_comment_stand(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    before = await metric(client, "livecomments_moderation_classifier_errors_total")
    c = await post(client, srv, video, fresh_user(), "classifier-crash")
    with trio.fail_after(10):
        while await metric(client, "livecomments_moderation_classifier_errors_total") <= before:  # noqa: ASYNC110 - another process
            await trio.sleep(0.05)
    assert c["id"] in ids(await history(client, video))
    assert c["id"] not in (await long_poll(client, video))["removed"]


async def test_a_long_poll_held_open_hears_of_the_removal(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    user = fresh_user()
    async with sse(srv, video) as viewer:
        anchor = await post(client, srv, video, fresh_user(), "anchor")
        await viewer.wait_comment(anchor["id"])
        results: list[dict[str, Any]] = []

        async def poll() -> None:
            results.append(await long_poll(client, video, after=anchor["id"], wait=20))

        held = await metric(client, "livecomments_long_polls_held")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            # Post only once the poll is held open: a poll that arrives after both the
            # comment and its removal has nothing to say and would wait out its time.
            with trio.fail_after(10):
                while await metric(client, "livecomments_long_polls_held") <= held:  # noqa: ASYNC110 - another process
                    await trio.sleep(0.02)
            spam = await post(client, srv, video, user, "spamword")
            await viewer.wait_removed(spam["id"])
    # The poll returned either with the comment (it came first) or with its removal;
    # either way a client applying ``removed`` ends without it on screen.
    body = results[0]
    if spam["id"] in ids(body["comments"]):
        again = await long_poll(client, video, after=body["next"])
        assert spam["id"] in again["removed"]
    else:
        assert spam["id"] in body["removed"]


async def test_removal_time_is_measured(automod_server: ServerProcess, auto_client: httpx.AsyncClient, video: str) -> None:
    srv, client = automod_server, auto_client
    before = await metric(client, "livecomments_moderation_removal_seconds_count")
    async with sse(srv, video) as viewer:
        spam = await post(client, srv, video, fresh_user(), "spamword once more")
        await viewer.wait_removed(spam["id"])
    assert await metric(client, "livecomments_moderation_removal_seconds_count") >= before + 1


async def test_a_full_queue_skips_moderation_and_posting_goes_on(server_factory: Any, video: str, tmp_path: Any) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("spamword\n", encoding="utf-8")
    # No workers: the first comment fills the one-slot queue and stays there.
    srv = server_factory(
        {"LIVECOMMENTS_MODERATION_QUEUE": "1", "LIVECOMMENTS_MODERATION_WORKERS": "0", "LIVECOMMENTS_MODERATION_RULES": str(rules)}
    )
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
        posted = [await post(client, srv, video, fresh_user(), f"spamword {i}") for i in range(3)]
        assert await metric(client, "livecomments_moderation_queued_total") == 1
        assert await metric(client, "livecomments_moderation_skipped_total") == 2
        assert await metric(client, "livecomments_moderation_queue_depth") == 1
        assert set(ids(posted)) <= set(ids(await history(client, video)))
