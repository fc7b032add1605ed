"""The store contract (store/base.py), run on every adapter: SQLite and a real CQL server."""

from __future__ import annotations

import random

import attrs
import pytest

from domain.model import Comment
from domain.ports import Store
from tests.store.conftest import Backend, Comments


def ids(page: list[Comment]) -> list[int]:
    return [c.id for c in page]


async def add(store: Store, comments: Comments, n: int, **kw: object) -> list[Comment]:
    out = []
    for i in range(n):
        c = comments.make(f"comment {i}", **kw)  # type: ignore[arg-type]
        await store.append(c)
        out.append(c)
    return out


async def test_append_then_get_keeps_every_field(store: Store, comments: Comments) -> None:
    plain = comments.make("plain")
    rich = comments.make("rich ✓ ünïcode", author="bob", verified=True, streamer=True, client_id="c-42")
    shadow = comments.make("shadow", author="mallory", shadow=True)
    for c in (plain, rich, shadow):
        await store.append(c)
    assert await store.get(comments.video_id, plain.id) == plain
    assert await store.get(comments.video_id, rich.id) == rich
    # get has no viewer: it returns shadow comments with their flag (callers decide).
    assert await store.get(comments.video_id, shadow.id) == shadow
    assert await store.get(comments.video_id, rich.id + 1) is None
    assert await store.get("another_video", plain.id) is None


async def test_append_is_idempotent(store: Store, comments: Comments) -> None:
    a, b = comments.make("a"), comments.make("b")
    for c in (a, b, a, a, b):
        await store.append(c)
    assert await store.latest(comments.video_id, 10) == [a, b]


async def test_append_many_stores_a_batch_once_however_often(store: Store, comments: Comments) -> None:
    """A persist worker's batch: several videos and partitions at once; a batch read
    again after a crash (before its acknowledgement) stores each comment once."""
    other = Comments(comments.video_id + "_b")
    # 100 comments 1.2 s apart span several buckets (CQL: several partitions, each more
    # rows than one CQL batch takes), plus two of another video in between.
    long = "ü" * 200
    mine = [comments.make(f"{i} {long}", step_ms=1_200, client_id=f"c{i}") for i in range(100)]
    theirs = [other.make("b0", author="bob", verified=True), other.make("b1", author="mallory", shadow=True)]
    await store.append_many([*mine[:50], *theirs, *mine[50:]])
    await store.append_many(mine[40:60])  # overlaps the first batch
    await store.append_many([*theirs, *mine])  # the whole batch again
    await store.append_many([])
    assert await store.latest(comments.video_id, 200) == mine
    assert await store.latest(other.video_id, 10, "mallory") == theirs
    assert await store.get(comments.video_id, mine[77].id) == mine[77]
    # One at a time and in batches mix: the same rows either way.
    later = comments.make("later")
    await store.append(later)
    await store.append_many([later, mine[0]])
    assert await store.latest(comments.video_id, 2) == [mine[-1], later]


async def test_a_batch_the_store_refuses_is_stored_not_at_all(store: Store, comments: Comments) -> None:
    other, third = Comments(comments.video_id + "_b"), Comments(comments.video_id + "_c")
    good = [comments.make("first"), comments.make("second")]
    alone = third.make("alone in its partition")
    bad = attrs.evolve(other.make("cannot be encoded"), text=object())  # no store can write that text
    with pytest.raises(Exception):  # noqa: B017 - the adapter's own error (a driver's, or StoreUnavailable)
        await store.append_many([good[0], alone, bad, good[1]])
    for video in (comments.video_id, other.video_id, third.video_id):
        assert await store.latest(video, 10) == []
    await store.append_many(good)  # the store is fine afterwards
    assert await store.latest(comments.video_id, 10) == good


async def test_latest_is_the_newest_oldest_first(store: Store, comments: Comments) -> None:
    assert await store.latest(comments.video_id, 10) == []
    made = await add(store, comments, 30)
    assert await store.latest(comments.video_id, 5) == made[-5:]
    assert await store.latest(comments.video_id, 100) == made
    assert await store.latest(comments.video_id, 0) == []


async def test_videos_are_separate(store: Store, comments: Comments) -> None:
    other = Comments(comments.video_id + "_other")
    mine = await add(store, comments, 5)
    theirs = await add(store, other, 5)
    assert await store.latest(comments.video_id, 50) == mine
    assert await store.latest(other.video_id, 50) == theirs
    assert await store.before(other.video_id, None, 50) == theirs[::-1]


async def test_after_takes_any_id_as_cursor(store: Store, comments: Comments) -> None:
    made = await add(store, comments, 20)
    v = comments.video_id
    assert await store.after(v, made[4].id, 3) == made[5:8]
    # An id that was never issued, between two comments.
    assert await store.after(v, made[4].id + 1, 3) == made[5:8]
    assert await store.after(v, made[5].id - 1, 3) == made[5:8]
    assert await store.after(v, 0, 4) == made[:4]
    assert await store.after(v, made[-1].id, 10) == []
    assert await store.after(v, 2**63 - 2, 10) == []
    assert await store.after(v, made[15].id, 100) == made[16:]


async def test_before_pages_newest_first(store: Store, comments: Comments) -> None:
    made = await add(store, comments, 12)
    v = comments.video_id
    assert await store.before(v, None, 4) == made[::-1][:4]
    assert await store.before(v, made[6].id, 3) == [made[5], made[4], made[3]]
    assert await store.before(v, made[6].id + 1, 2) == [made[6], made[5]]
    assert await store.before(v, made[0].id, 10) == []
    assert await store.before(v, 2**63 - 1, 2) == made[::-1][:2]


async def test_history_pagination_with_id_cursors(store: Store, comments: Comments) -> None:
    # 150 comments over ~25 simulated minutes: many partitions on the CQL store.
    comments.step_ms = 10_000
    made = await add(store, comments, 150)
    seen: list[Comment] = []
    cursor: int | None = None
    pages = 0
    while True:
        page = await store.before(comments.video_id, cursor, 23)
        if not page:
            break
        assert ids(page) == sorted(ids(page), reverse=True)
        seen.extend(page)
        cursor = page[-1].id
        pages += 1
    assert pages == 7
    assert seen == made[::-1]
    # And forwards, as a reconnecting viewer replays after its Last-Event-ID.
    forward: list[Comment] = []
    last = 0
    while page := await store.after(comments.video_id, last, 40):
        forward.extend(page)
        last = page[-1].id
    assert forward == made


async def test_remove_is_a_tombstone_every_read_honours(store: Store, comments: Comments) -> None:
    made = await add(store, comments, 10)
    v = comments.video_id
    gone = made[5]
    assert await store.remove(v, gone.id) is True
    assert await store.remove(v, gone.id) is False
    assert await store.remove(v, gone.id + 1) is False
    assert await store.remove("another_video", made[4].id) is False
    rest = [c for c in made if c.id != gone.id]
    assert await store.get(v, gone.id) is None
    assert await store.latest(v, 100) == rest
    assert await store.latest(v, 5) == rest[-5:]
    assert await store.after(v, made[3].id, 3) == [made[4], made[6], made[7]]
    assert await store.before(v, made[7].id, 3) == [made[6], made[4], made[3]]
    assert await store.before(v, None, 100) == rest[::-1]
    # A replayed append (say, a persist worker retrying) does not bring it back.
    await store.append(gone)
    assert await store.get(v, gone.id) is None
    assert await store.latest(v, 100) == rest


async def test_shadow_comments_reach_only_their_author(store: Store, comments: Comments) -> None:
    v = comments.video_id
    a1 = comments.make("a1")
    s1 = comments.make("spam 1", author="mallory", shadow=True)
    a2 = comments.make("a2", author="bob")
    s2 = comments.make("spam 2", author="mallory", shadow=True)
    a3 = comments.make("a3")
    for c in (a1, s1, a2, s2, a3):
        await store.append(c)
    public = [a1, a2, a3]
    everything = [a1, s1, a2, s2, a3]
    for viewer in (None, "alice", "bob"):
        assert await store.latest(v, 10, viewer) == public
        assert await store.after(v, 0, 10, viewer) == public
        assert await store.before(v, None, 10, viewer) == public[::-1]
        assert await store.latest(v, 2, viewer) == [a2, a3]
    assert await store.latest(v, 10, "mallory") == everything
    assert await store.after(v, a1.id, 2, "mallory") == [s1, a2]
    assert await store.before(v, a3.id, 2, "mallory") == [s2, a2]
    # A removed shadow comment is gone for its author too.
    assert await store.remove(v, s2.id) is True
    assert await store.latest(v, 10, "mallory") == [a1, s1, a2, a3]


async def test_every_author_reads_every_shadowed_comment(store: Store, comments: Comments) -> None:
    """What a room seeds its ring with: everything not removed, shadowed comments of every
    author included (flagged), whoever would have been the viewer."""
    v = comments.video_id
    a1 = comments.make("a1")
    s1 = comments.make("spam 1", author="mallory", shadow=True)
    e1 = comments.make("eve's", author="eve", shadow=True)
    a2 = comments.make("a2", author="bob")
    gone = comments.make("gone", author="mallory", shadow=True)
    for c in (a1, s1, e1, a2, gone):
        await store.append(c)
    assert await store.remove(v, gone.id) is True
    everything = [a1, s1, e1, a2]
    for viewer in (None, "mallory", "bob"):
        assert await store.latest(v, 10, viewer, every_author=True) == everything
        assert await store.latest(v, 3, viewer, every_author=True) == everything[-3:]
        assert await store.after(v, a1.id, 2, viewer, every_author=True) == [s1, e1]
        assert await store.before(v, a2.id, 10, viewer, every_author=True) == everything[-2::-1]
    assert [c.shadow for c in await store.latest(v, 10, every_author=True)] == [False, True, True, False]
    assert await store.latest(v, 10) == [a1, a2]  # the default is unchanged


async def test_pages_fill_past_hidden_comments(store: Store, comments: Comments) -> None:
    """A page of N visible comments, even when many rows in between are hidden."""
    v = comments.video_id
    visible = []
    for i in range(60):
        hidden = i % 4 != 0
        c = comments.make(f"c{i}", author="mallory" if hidden else "alice", shadow=hidden, step_ms=2_000)
        await store.append(c)
        if not hidden:
            visible.append(c)
    assert await store.latest(v, 10) == visible[-10:]
    assert await store.before(v, None, 12) == visible[::-1][:12]
    assert await store.after(v, 0, 15) == visible[:15]
    # Remove most of the visible ones: pages still fill from further back.
    for c in visible[3:13]:
        assert await store.remove(v, c.id)
    assert await store.latest(v, 4) == visible[1:3] + visible[13:15]
    assert await store.before(v, visible[13].id, 3) == visible[2::-1]
    assert await store.after(v, visible[2].id, 1) == [visible[13]]


async def test_comments_survive_reopening(backend: Backend, comments: Comments) -> None:
    async with backend.open() as store:
        made = await add(store, comments, 5)
        await store.remove(comments.video_id, made[1].id)
    async with backend.open() as store:
        assert await store.latest(comments.video_id, 10) == [made[0], *made[2:]]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_operations_match_a_model(store: Store, comments: Comments, seed: int) -> None:
    """Random appends, replays, removals and reads, checked against a list in memory."""
    rng = random.Random(seed)
    v = comments.video_id
    model: dict[int, Comment] = {}
    removed: set[int] = set()
    authors = ["alice", "bob", "mallory"]

    def visible(viewer: str | None) -> list[Comment]:
        return [
            c
            for i, c in sorted(model.items())
            if i not in removed and (not c.shadow or c.author.id == viewer)
        ]

    for _ in range(120):
        op = rng.random()
        if op < 0.55 or not model:
            author = rng.choice(authors)
            c = comments.make(
                "x" * rng.randint(1, 20), author=author, shadow=author == "mallory", step_ms=rng.randint(1, 20_000)
            )
            await store.append(c)
            model[c.id] = c
        elif op < 0.62:
            c = rng.choice(list(model.values()))
            await store.append(c)  # a replay
        elif op < 0.72:
            cid = rng.choice(list(model))
            assert await store.remove(v, cid) is (cid not in removed)
            removed.add(cid)
        else:
            viewer = rng.choice([None, *authors])
            want = visible(viewer)
            limit = rng.randint(1, 15)
            all_ids = sorted(model)
            pivot = rng.choice(all_ids) + rng.choice([-1, 0, 1])
            kind = rng.choice(["latest", "after", "before", "before_none", "get"])
            if kind == "latest":
                assert await store.latest(v, limit, viewer) == want[-limit:]
            elif kind == "after":
                assert await store.after(v, pivot, limit, viewer) == [c for c in want if c.id > pivot][:limit]
            elif kind == "before":
                got = await store.before(v, pivot, limit, viewer)
                assert got == [c for c in reversed(want) if c.id < pivot][:limit]
            elif kind == "before_none":
                assert await store.before(v, None, limit, viewer) == list(reversed(want))[:limit]
            else:
                cid = rng.choice(all_ids)
                assert await store.get(v, cid) == (None if cid in removed else model[cid])
