"""A room and ``Rooms``, in process: real rooms on the in-process bus and broker, an
in-memory store, fake viewers that record what the room hands them, and a mock clock
(nothing waits in real time).

What is asserted: every viewer gets every comment once and in id order (push mode); a
full slow viewer is dropped from and told with ``gap`` while the others are unaffected;
shadowed comments and their removals reach only their author; removals reach everyone;
``catch_up`` from the ring, then the store, then ``reset``; ``settle_mode``; the opening
bytes per transport; the linger. Then a state machine mixes all of it.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import pytest
import trio
import trio.testing
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from adapters.memory import InProcessBus, LocalBroker
from backpressure.tiers import Mode
from domain.identity import Identity
from domain.metrics import Metrics
from domain.model import Author, Comment, ModeChange, Removal
from domain.params import StreamParams
from domain.settings import Settings
from rms.frames import Encoding, chunk
from rms.room import Room, Rooms
from rms.viewer import Viewer

VIDEO = "v1"
T = TypeVar("T")


# -- an in-memory Store ---------------------------------------------------------------------


class MemoryStore:
    """``domain.ports.Store`` in a dict. ``reads`` counts ``after`` calls (the replay
    fallback); while ``gate`` is set to an unset event, ``after`` waits for it after
    reading (a slow store query)."""

    def __init__(self) -> None:
        self.comments: dict[str, dict[int, Comment]] = {}
        self.removed: set[tuple[str, int]] = set()
        self.reads = 0
        self.gate: trio.Event | None = None

    async def append(self, comment: Comment) -> None:
        self.comments.setdefault(comment.video_id, {})[comment.id] = comment

    async def remove(self, video_id: str, comment_id: int) -> bool:
        key = (video_id, comment_id)
        if comment_id not in self.comments.get(video_id, {}) or key in self.removed:
            return False
        self.removed.add(key)
        return True

    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        c = self.comments.get(video_id, {}).get(comment_id)
        return None if c is None or (video_id, comment_id) in self.removed else c

    def _visible(self, video_id: str, viewer_id: str | None, every_author: bool) -> list[Comment]:
        held = self.comments.get(video_id, {})
        return [
            held[i]
            for i in sorted(held)
            if (video_id, i) not in self.removed and held[i].visible_to(viewer_id, every_author=every_author)
        ]

    async def latest(
        self, video_id: str, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        return self._visible(video_id, viewer_id, every_author)[-limit:] if limit > 0 else []

    async def after(
        self, video_id: str, after_id: int, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        self.reads += 1
        out = [c for c in self._visible(video_id, viewer_id, every_author) if c.id > after_id][:limit]
        if self.gate is not None:
            await self.gate.wait()
        return out

    async def before(
        self, video_id: str, before_id: int | None, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        older = [c for c in self._visible(video_id, viewer_id, every_author) if before_id is None or c.id < before_id]
        return older[::-1][:limit]

    async def aclose(self) -> None:
        pass


# -- the wire: what a client would parse -------------------------------------------------------

Event = tuple[str, dict[str, Any]]  # (type, data); comments carry their JSON, "id" included


def dechunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end], 16)
        assert size > 0, "an empty chunk would end the response"
        body = data[end + 2 : end + 2 + size]
        assert len(body) == size and data[end + 2 + size : end + 4 + size] == b"\r\n", data[pos:]
        out += body
        pos = end + 4 + size
    return out


def parse_sse(text: bytes) -> list[Event]:
    blocks = text.split(b"\n\n")
    assert blocks[-1] == b"", f"an incomplete SSE frame: {blocks[-1]!r}"
    events: list[Event] = []
    for block in blocks[:-1]:
        if block.startswith(b":"):
            events.append(("heartbeat", {}))
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        if b"retry" in fields:
            events.append(("retry", {"ms": int(fields[b"retry"])}))
            continue
        data = json.loads(fields[b"data"])
        kind = fields[b"event"].decode()
        if kind == "comment":
            assert fields[b"id"].decode() == data["id"]
        events.append((kind, data))
    return events


def parse_ws(data: bytes) -> list[Event]:
    events: list[Event] = []
    pos = 0
    while pos < len(data):
        assert data[pos] == 0x81, "one unfragmented text frame per event"
        n = data[pos + 1]
        assert not n & 0x80, "server frames are not masked"
        pos += 2
        if n == 126:
            n, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif n == 127:
            n, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        payload = data[pos : pos + n]
        assert len(payload) == n, "a truncated frame"
        pos += n
        msg = json.loads(payload)
        events.append((msg.pop("type"), msg))
    return events


def parse(encoding: Encoding, data: bytes) -> list[Event]:
    if encoding is Encoding.WS:
        return parse_ws(data)
    return parse_sse(dechunk(data) if encoding is Encoding.SSE else data)


# -- a viewer that records -------------------------------------------------------------------------


class FakeViewer(Viewer):
    """A viewer whose client reads at once, unless ``stalled``: then batches wait in the
    viewer's own bounded queue (dropped whole when full), as on a socket whose kernel
    buffer is full, until ``read``. ``handed`` is every call the room made; ``wire`` is
    what the client has read, in order."""

    def __init__(self, user_id: str | None, encoding: Encoding, limit: int) -> None:
        super().__init__(user_id, encoding, limit, 30.0)
        self.stalled = False
        self.wire = bytearray()
        self.handed: list[tuple[str, bytes, int]] = []  # ("deliver" | "control", data, comments)
        self.on_handed: Callable[[FakeViewer, str, bytes, int], None] | None = None

    def deliver(self, data: bytes, comments: int, now: float) -> None:
        self._handed("deliver", data, comments)
        if self.closed:
            return
        if self.stalled:
            self.queue.push(data, comments, now)
        else:
            self.wire += data

    def control(self, data: bytes, now: float) -> None:
        self._handed("control", data, 0)
        if self.closed or not data:
            return
        if self.stalled:
            self.queue.push_control(data, now)
        else:
            self.wire += data

    def _handed(self, how: str, data: bytes, comments: int) -> None:
        self.handed.append((how, data, comments))
        if self.on_handed is not None:
            self.on_handed(self, how, data, comments)

    def read(self, now: float) -> None:
        """The client catches up: everything queued (and the gap notice) is read."""
        q = self.queue
        while not q.empty or q.flush_gap(now):
            part = bytes(q.peek())
            q.consume(len(part), now)
            self.wire += part
        self.stalled = False

    def events(self) -> list[Event]:
        return parse(self.encoding, bytes(self.wire))

    def ids(self, kind: str = "comment") -> list[int]:
        return [int(d["id"]) for k, d in self.events() if k == kind]

    def missed(self) -> int:
        return sum(int(d["missed"]) for k, d in self.events() if k == "gap")

    def modes(self) -> list[str]:
        """The ``mode`` events the room handed it (never dropped), in order."""
        return [d["mode"] for _, data, _ in self.handed for k, d in parse(self.encoding, data) if k == "mode"]


class SpinGuard(trio.abc.Instrument):
    """A room loop that never waits would hang a test on a mock clock, which moves only
    when every task waits. Past ``limit`` task steps at one clock reading, this closes
    every room of ``rooms`` (their loops then end) and sets ``spun``: the test fails
    instead of hanging."""

    def __init__(self, rooms: Rooms, limit: int = 10_000) -> None:
        self.rooms = rooms
        self.limit = limit
        self.at: float | None = None
        self.steps = 0
        self.spun = False

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = trio.current_time()
        if now != self.at:
            self.at, self.steps = now, 0
        self.steps += 1
        if self.steps > self.limit:
            for room in list(self.rooms.rooms.values()):
                if not room.closed:
                    self.spun = True
                    room.evict()


# -- one world: rooms, bus, broker, store ------------------------------------------------------------


def author(user: str) -> Author:
    return Author(user, user.upper())


class World:
    def __init__(self, s: Settings, store: MemoryStore | None = None) -> None:
        self.settings = s
        self.store = store if store is not None else MemoryStore()
        self.bus = InProcessBus()
        self.broker = LocalBroker(self.store, self.bus)
        self.metrics = Metrics()
        self.rooms = Rooms(s, self.store, self.bus, self.metrics)
        self.guard = SpinGuard(self.rooms)
        self._ids = itertools.count(1000)

    def comment(self, user: str, *, shadow: bool = False, video: str = VIDEO) -> Comment:
        i = next(self._ids)
        return Comment(i, video, author(user), f"comment {i}", 1_700_000_000_000 + i, shadow=shadow)

    async def post(self, user: str, *, shadow: bool = False) -> Comment:
        c = self.comment(user, shadow=shadow)
        await self.broker.publish(c)
        return c

    async def post_now(self, user: str) -> Comment:
        """As ``post``, without the broker's lock (a checkpoint): the room cannot run meanwhile."""
        c = self.comment(user)
        await self.store.append(c)
        await self.bus.publish(c.video_id, c)
        return c

    async def remove(self, c: Comment) -> None:
        """As ``CommentService.delete``: the store's tombstone, then the bus."""
        await self.store.remove(c.video_id, c.id)
        await self.bus.publish(c.video_id, Removal(c.video_id, c.id, c.author.id, c.shadow))

    async def watch(
        self, user: str | None = None, encoding: Encoding = Encoding.SSE, *, after: int | None = None, backlog: int = 0
    ) -> FakeViewer:
        """Connect as the transports do: ``open_stream``, the opening, then ``join``."""
        identity = Identity(user, user.upper()) if user is not None else None
        room, user_id, first = await self.rooms.open_stream(StreamParams(VIDEO, after, backlog, identity), encoding)
        v = FakeViewer(user_id, encoding, self.settings.viewer_buffer)
        v.control(chunk(first) if encoding is Encoding.SSE else first, trio.current_time())
        room.join(v)
        return v

    def room(self) -> Room:
        return self.rooms.rooms[VIDEO]


# Every time here is a sum of powers of two, so that no sum of times rounds (see
# ``test_a_room_lingers_out_without_spinning``: a rounding makes the room's loop spin).
SMALL = Settings(flush_rate=8.0, flush_burst=2, heartbeat_s=64.0, room_linger_s=5.0, retry_ms=1234)
SETTLE_S = 1.0  # eight flush intervals: whatever is pending has been flushed after this


async def start(nursery: trio.Nursery, s: Settings = SMALL, store: MemoryStore | None = None) -> World:
    w = World(s, store)
    trio.lowlevel.add_instrument(w.guard)
    await nursery.start(w.rooms.run)
    return w


async def settle(w: World) -> None:
    await trio.sleep(SETTLE_S)
    await trio.testing.wait_all_tasks_blocked()
    assert not w.guard.spun, "a room's loop spun"


# -- push mode: everyone gets everything, once, in id order ----------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    encodings=st.lists(st.sampled_from(Encoding), min_size=1, max_size=4),
    bursts=st.lists(
        st.tuples(st.permutations(range(4)), st.integers(1, 4), st.sampled_from([0.0, 0.03125, 0.125, 0.5])), max_size=8
    ),
    late=st.tuples(st.integers(0, 8), st.integers(0, 6), st.sampled_from(Encoding)),
)
def test_every_viewer_gets_every_comment_once_in_id_order(
    encodings: list[Encoding], bursts: list[tuple[Sequence[int], int, float]], late: tuple[int, int, Encoding]
) -> None:
    """Bursts whose ids arrive out of order (several posters) at any pace; one viewer
    joins late with a backlog and must get a gapless suffix of the same stream."""
    late_at, late_backlog, late_encoding = late

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            w = await start(nursery)
            viewers = [await w.watch(None, enc) for enc in encodings]
            published: list[int] = []
            late_viewer, before_late = None, 0
            for i, (order, size, pause) in enumerate(bursts):
                if i == late_at:
                    before_late = len(published)
                    late_viewer = await w.watch(None, late_encoding, backlog=late_backlog)
                batch = [w.comment("a") for _ in range(size)]
                for j in order:  # the store first, then the bus, in an order that is not the ids'
                    if j < size:
                        await w.store.append(batch[j])
                        await w.bus.publish(VIDEO, batch[j])
                published += [c.id for c in batch]
                await trio.sleep(pause)
            await settle(w)
            for v in viewers:
                assert v.ids() == published, v.encoding
                assert v.missed() == 0
            if late_viewer is not None:
                got = late_viewer.ids()
                assert got == published[len(published) - len(got) :], "a gapless suffix"
                assert len(got) >= min(late_backlog, before_late) + len(published) - before_late
            nursery.cancel_scope.cancel()

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_one_batch_is_encoded_once_per_encoding_and_shared(nursery: trio.Nursery, autojump_clock: Any) -> None:
    w = await start(nursery)
    a, b, c = [await w.watch(None, Encoding.WS) for _ in range(3)]
    await w.post("x")
    await w.post("y")
    await settle(w)
    batches = [[data for how, data, _ in v.handed if how == "deliver"] for v in (a, b, c)]
    assert len(batches[0]) >= 1
    assert all(x is y for x, y in zip(batches[0], batches[1])) and all(x is y for x, y in zip(batches[0], batches[2]))


# -- a slow viewer ---------------------------------------------------------------------------------


async def test_a_full_slow_viewer_is_dropped_from_and_told_and_others_are_unaffected(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    s = attrs.evolve(SMALL, viewer_buffer=1000)  # a comment frame is ~200 bytes: 4 or 5 batches fit
    w = await start(nursery, s)
    fast_sse, slow, fast_ws = await w.watch(None, Encoding.SSE), await w.watch(None, Encoding.SSE), await w.watch(None, Encoding.WS)
    slow.stalled = True
    published = []
    for _ in range(12):
        published.append((await w.post("a")).id)
        await settle(w)  # one comment per flush: one batch each
    assert slow.queue.missed > 0, "the slow viewer's queue should have overflowed"
    for v in (fast_sse, fast_ws):
        assert v.ids() == published and v.missed() == 0
    slow.read(trio.current_time())
    after_read = (await w.post("a")).id
    await settle(w)
    got = slow.ids()
    kept = got[:-1]
    assert kept == published[: len(kept)], "what fitted, in order"
    missing = published[len(kept) :]
    assert missing and slow.missed() == len(missing)  # every dropped comment counted, once
    kinds = [k for k, _ in slow.events() if k in ("comment", "gap")]
    assert kinds[-2:] == ["gap", "comment"] and got[-1] == after_read  # the gap, then the stream goes on
    for v in (fast_sse, fast_ws):
        assert v.ids() == [*published, after_read]


# -- shadowed comments and removals -------------------------------------------------------------------


async def test_shadowed_comments_reach_only_their_author_and_never_the_snapshot(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    w = await start(nursery)
    anon, other = await w.watch(None, Encoding.SSE), await w.watch("b", Encoding.WS)
    mine_sse, mine_ws = await w.watch("a", Encoding.SSE_PLAIN), await w.watch("a", Encoding.WS)
    public = await w.post("b")
    await settle(w)
    room = w.room()
    body_before, etag_before = room.snapshot()
    hidden = await w.post("a", shadow=True)
    await settle(w)
    body_after, etag_after = room.snapshot()
    assert (body_after, etag_after) == (body_before, etag_before), "a shadowed comment changed the public snapshot"
    also_public = await w.post("a")
    await settle(w)
    for v in (anon, other):
        assert v.ids() == [public.id, also_public.id]
    for v in (mine_sse, mine_ws):
        assert v.ids() == [public.id, hidden.id, also_public.id]
    snapshot = json.loads(room.snapshot()[0])
    assert [c["id"] for c in snapshot["comments"]] == [str(public.id), str(also_public.id)]
    # A joiner's backlog is decided per viewer too.
    assert (await w.watch(None, backlog=10)).ids() == [public.id, also_public.id]
    assert (await w.watch("a", backlog=10)).ids() == [public.id, hidden.id, also_public.id]


async def test_removals_reach_everyone_and_shadow_removals_only_the_author(nursery: trio.Nursery, autojump_clock: Any) -> None:
    w = await start(nursery)
    anon, other, mine = await w.watch(None, Encoding.SSE), await w.watch("b", Encoding.SSE_PLAIN), await w.watch("a", Encoding.WS)
    public, hidden = await w.post("b"), await w.post("a", shadow=True)
    await settle(w)
    room = w.room()
    etag = room.snapshot()[1]
    await w.remove(hidden)
    await settle(w)
    assert room.snapshot()[1] == etag, "a shadowed comment's removal changed the public snapshot"
    await w.remove(public)
    await settle(w)
    for v in (anon, other):
        assert v.ids("remove") == [public.id]
    assert mine.ids("remove") == [hidden.id, public.id]
    snapshot = json.loads(room.snapshot()[0])
    assert snapshot["comments"] == [] and snapshot["removed"] == [str(public.id)]
    # Removed before its flush: nobody gets the comment, everyone gets the removal.
    gone = await w.post_now("b")
    await w.remove(gone)  # no checkpoint since the post: the comment still waits for its flush
    await settle(w)
    for v in (anon, other, mine):
        assert gone.id not in v.ids() and v.ids("remove")[-1] == gone.id


# -- catch_up: the ring, then the store, then reset ----------------------------------------------------


@pytest.mark.parametrize("seeded", [False, True], ids=["live", "seeded"])
async def test_catch_up_reads_the_ring_then_the_store_then_resets(
    nursery: trio.Nursery, autojump_clock: Any, seeded: bool
) -> None:
    s = attrs.evolve(SMALL, ring_size=4, replay_max=5)
    w = await start(nursery, s)
    ids: list[int] = []
    if seeded:  # the history is in the store before the room exists: the ring is seeded with the newest 4
        for _ in range(12):
            c = w.comment("a")
            await w.store.append(c)
            ids.append(c.id)
        room = await w.rooms.get(VIDEO)
    else:  # the room sees every comment live and evicts the oldest from its ring of 4
        room = await w.rooms.get(VIDEO)
        for _ in range(12):
            ids.append((await w.post("a")).id)
        await settle(w)
    assert [e.id for e in room.ring] == ids[-4:]

    def got(answer: tuple[bool, list[Any]]) -> tuple[bool, list[int]]:
        return answer[0], [e.id for e in answer[1]]

    assert got(await room.catch_up(None, 3, None)) == (False, ids[-3:])  # no cursor: the backlog
    assert got(await room.catch_up(ids[-3], 3, None)) == (False, ids[-2:])  # in the ring
    assert got(await room.catch_up(ids[-5], 3, None)) == (False, ids[-4:])  # the ring holds all after it
    assert w.store.reads == 0, "the ring could answer these"
    assert got(await room.catch_up(ids[-6], 3, None)) == (False, ids[-5:])  # too old for the ring: the store
    assert w.store.reads == 1
    assert got(await room.catch_up(ids[-7], 3, None)) == (True, ids[-3:])  # 6 > replay_max after it: reset
    # The same through open_stream: a reset event, then the backlog.
    _, _, first = await w.rooms.open_stream(StreamParams(VIDEO, ids[0], 2, None), Encoding.SSE_PLAIN)
    events = parse_sse(first)
    assert [k for k, _ in events] == ["retry", "reset", "comment", "comment"]
    assert [int(d["id"]) for k, d in events if k == "comment"] == ids[-2:]


async def test_replay_leaves_pending_comments_to_the_flush(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """A viewer connecting while comments wait for a flush gets them once, from the flush."""
    s = attrs.evolve(SMALL, flush_rate=1.0, flush_burst=1)
    w = await start(nursery, s)
    early = await w.watch(None)
    first = await w.post("a")
    await trio.testing.wait_all_tasks_blocked()
    second = await w.post("a")  # held back by the pacer (one flush per second)
    await trio.testing.wait_all_tasks_blocked()
    assert early.ids() == [first.id] and w.room().pending_ids == {second.id}
    v1 = await w.watch(None, after=first.id - 1)
    v2 = await w.watch(None, backlog=5)
    await settle(w)
    for v in (early, v1, v2):
        assert v.ids() == [first.id, second.id]


async def test_a_comment_flushed_while_the_store_is_read_still_reaches_the_joiner(
    nursery: trio.Nursery, autojump_clock: Any
) -> None:
    s = attrs.evolve(SMALL, ring_size=2, replay_max=50)
    w = await start(nursery, s)
    old = [await w.post("a") for _ in range(6)]
    await w.rooms.get(VIDEO)
    w.store.gate = trio.Event()  # the store query is slow
    opened: list[bytes] = []

    async def connect() -> None:
        opened.append((await w.rooms.open_stream(StreamParams(VIDEO, old[0].id, 0, None), Encoding.SSE_PLAIN))[2])

    nursery.start_soon(connect)
    await trio.testing.wait_all_tasks_blocked()
    late = await w.post("a")  # stored and flushed while the query is in flight
    await settle(w)
    w.store.gate.set()
    await trio.testing.wait_all_tasks_blocked()
    got = [int(d["id"]) for k, d in parse_sse(opened[0]) if k == "comment"]
    assert got == [c.id for c in old[1:]] + [late.id]


# -- modes ----------------------------------------------------------------------------------------------


class Presence:
    """Counts this node's viewers only, and answers proposals with ``answer``."""

    def __init__(self) -> None:
        self.answer: Mode | None = None
        self.proposals: list[Mode] = []

    async def total_viewers(self, video_id: str, local: int) -> int:
        return local

    async def agree_mode(self, video_id: str, current: Mode, proposed: Mode) -> Mode | None:
        self.proposals.append(proposed)
        return self.answer

    async def agree_spread(self, video_id: str, current: int, proposed: int) -> int | None:
        return proposed

    async def agreed(self, video_id: str) -> tuple[Mode, int] | None:
        return None


async def test_settle_mode_none_keeps_the_mode_and_proposes_again_later(nursery: trio.Nursery, autojump_clock: Any) -> None:
    s = attrs.evolve(SMALL, tier_sampled_at=2, tier_sampled_below=1, tier_cdn_at=50, tier_cdn_below=40, tier_min_dwell_s=3.0)
    presence = Presence()
    w = World(s)
    w.rooms = Rooms(s, w.store, w.bus, w.metrics, presence=presence)
    await nursery.start(w.rooms.run)
    viewers = [await w.watch(None, enc) for enc in Encoding]  # 3 viewers: the tier wants sampled
    await trio.sleep(1.5)
    assert presence.proposals == ["sampled"]  # no answer: nothing changes ...
    room = w.room()
    assert room.mode == "push" and room.tier.mode == "push"
    await trio.sleep(3.0)
    assert presence.proposals == ["sampled", "sampled"]  # ... and the room proposes again after the dwell
    assert all(v.modes() == [] for v in viewers)
    presence.answer = "sampled"
    await trio.sleep(3.0)
    assert w.room().mode == "sampled" and presence.proposals == ["sampled"] * 3
    assert all(v.modes() == ["sampled"] for v in viewers)


async def test_settle_mode_applies_the_decision_and_tells_every_viewer(nursery: trio.Nursery, autojump_clock: Any) -> None:
    w = await start(nursery)
    viewers = [await w.watch(user, enc) for enc in Encoding for user in (None, "a")]
    room = w.room()
    room.settle_mode(None)
    assert room.mode == "push" and all(v.modes() == [] for v in viewers)
    room.settle_mode("cdn")
    assert w.room().mode == "cdn" and room.tier.mode == "cdn" and room.tier.changed_at == trio.current_time()
    for v in viewers:
        assert v.modes() == ["cdn"]
        mode = next(d for k, d in v.events() if k == "mode")
        assert mode["snapshot_url"] == f"/v1/videos/{VIDEO}/snapshot.json" and mode["interval_ms"] == 1000
    room.settle_mode("cdn")  # already so: nobody is told twice
    assert all(v.modes() == ["cdn"] for v in viewers)
    # In cdn mode nobody is pushed comments (or removals: the snapshot has them) but an
    # author's own shadowed ones.
    public = await w.post("b")
    hidden = await w.post("a", shadow=True)
    await settle(w)
    await w.remove(public)
    await settle(w)
    for v in viewers:
        assert v.ids() == ([hidden.id] if v.user_id == "a" else []) and v.ids("remove") == []
    assert json.loads(room.snapshot()[0])["removed"] == [str(public.id)]
    # A joiner learns the mode first.
    late = await w.watch(None, Encoding.WS)
    assert [k for k, _ in late.events()][:1] == ["mode"]
    room.settle_mode("push")
    assert all(v.modes()[-1] == "push" for v in [*viewers, late])


# -- open_stream and the linger --------------------------------------------------------------------------


async def test_open_stream_starts_sse_with_retry_and_websocket_without(nursery: trio.Nursery, autojump_clock: Any) -> None:
    w = await start(nursery)
    posted = [await w.post("a") for _ in range(2)]
    await settle(w)
    for enc in Encoding:
        _, user_id, first = await w.rooms.open_stream(StreamParams(VIDEO, None, 5, Identity("u", "U")), enc)
        assert user_id == "u"
        if enc is Encoding.WS:
            assert b"retry" not in first
            events = parse_ws(first)
        else:
            assert first.startswith(b"retry: 1234\n\n")
            events = parse_sse(first)  # unchunked: the transport writes it as one chunk itself
            assert events[0] == ("retry", {"ms": 1234})
        assert [int(d["id"]) for k, d in events if k == "comment"] == [c.id for c in posted]


async def test_a_room_without_viewers_lingers_then_closes(nursery: trio.Nursery, autojump_clock: Any) -> None:
    w = await start(nursery)
    linger = SMALL.room_linger_s
    v = await w.watch(None)
    room = w.room()
    await trio.sleep(linger * 3)
    assert not room.closed, "a room with a viewer never lingers out"
    room.leave(v)
    await trio.sleep(linger - 0.125)
    assert not room.closed and w.rooms.rooms[VIDEO] is room and w.bus.channels() == 1
    await trio.sleep(0.25)
    await trio.testing.wait_all_tasks_blocked()
    assert not w.guard.spun and room.closed and VIDEO not in w.rooms.rooms and w.bus.channels() == 0
    again = await w.watch(None)  # the next viewer gets a new room
    assert w.room() is not room and not w.room().closed and again in w.room().viewers


async def test_a_room_lingers_out_without_spinning(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Left at 1.1 s with a 3 s linger: (1.1 + 3.0) - 1.1 < 3.0 in floating point, so at the
    deadline the room neither closes nor waits, and on a clock that only moves when every
    task waits (any mock clock) it never will."""
    w = await start(nursery, attrs.evolve(SMALL, room_linger_s=3.0))
    v = await w.watch(None)
    room = w.room()
    await trio.sleep(1.1)
    room.leave(v)
    await trio.sleep(10.0)
    assert room.closed
    assert not w.guard.spun, "the room's loop spun at its linger deadline"


async def test_a_viewer_back_within_the_linger_finds_the_same_room(nursery: trio.Nursery, autojump_clock: Any) -> None:
    """Reconnecting within the linger finds the ring warm: what was posted meanwhile is in the backlog."""
    w = await start(nursery)
    v = await w.watch(None)
    room = w.room()
    room.leave(v)
    await trio.sleep(SMALL.room_linger_s / 2)
    c = await w.post("a")
    await settle(w)
    back = await w.watch(None, backlog=5)
    assert w.room() is room and back.ids() == [c.id]


# -- the state machine --------------------------------------------------------------------------------


class TrioThread:
    """A Trio run on a thread of its own, driven one step at a time by a (synchronous)
    state machine. Its clock moves only when a step says so, and every step returns only
    once every task in the run is blocked: between steps the world holds still."""

    def __init__(self, guard: SpinGuard) -> None:
        self.guard = guard
        self.clock = trio.testing.MockClock()  # rate 0, no autojump
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the trio thread did not start"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as e:
            self.error = e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        trio.lowlevel.add_instrument(self.guard)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    def __call__(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def step() -> T:
            result = await fn()
            await trio.testing.wait_all_tasks_blocked()
            return result

        if self.error is not None:
            raise self.error
        return trio.from_thread.run(step, trio_token=self.token)

    def sync(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self(run)

    def close(self) -> None:
        if self.error is None:
            trio.from_thread.run_sync(self.nursery.cancel_scope.cancel, trio_token=self.token)
        self._thread.join(30)
        if self.error is not None:
            raise self.error


@attrs.define(eq=False)
class Watcher:
    viewer: FakeViewer
    published_at: int  # how many comments were published when it joined
    removed_at: int  # how many removals
    push_only: bool = True  # the room was in push mode all the time it was connected


USERS = [None, "a", "b"]
AUTHORS = ["a", "b", "c"]
MACHINE = Settings(
    ring_size=5,
    replay_max=4,
    snapshot_size=3,
    viewer_buffer=450,  # two comments: a stalled viewer soon drops
    flush_rate=8.0,
    flush_burst=2,
    heartbeat_s=2.0,
    room_linger_s=3.0,
    retry_ms=1000,
)


class RoomMachine(RuleBasedStateMachine):
    """Viewers (anonymous or signed in, any transport, any cursor) come and go, authors
    post (shadowed or not), comments are removed, clients stall and read, the mode
    changes and the clock moves. The reference is the list of what was published and
    removed; every viewer's stream must be explainable by it."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(MACHINE)
        self.trio = TrioThread(self.world.guard)
        self.trio(lambda: self.trio.nursery.start(self.world.rooms.run))
        self.published: list[Comment] = []
        self.removals: list[Comment] = []
        self.removed: set[int] = set()
        self.watchers: list[Watcher] = []
        self.violations: list[str] = []

    def teardown(self) -> None:
        self.trio.close()

    # -- helpers

    def _visible(self, c: Comment, user: str | None) -> bool:
        return not c.shadow or c.author.id == user

    def _check_handed(self, v: FakeViewer, how: str, data: bytes, comments: int) -> None:
        """Runs inside the room's flush: what the room hands a viewer, at that moment."""
        events = parse(v.encoding, data)
        for kind, d in events:
            if kind == "comment" and int(d["id"]) in self.removed:
                self.violations.append(f"comment {d['id']} handed to a viewer after its removal")
        if how == "deliver":
            counted = sum(1 for k, _ in events if k in ("comment", "remove"))
            if counted != comments:
                self.violations.append(f"a batch of {counted} events counted as {comments}")

    def _room(self) -> Room | None:
        return self.world.rooms.rooms.get(VIDEO)

    # -- rules

    @initialize(viewers=st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(Encoding)), min_size=1, max_size=3))
    def first_viewers(self, viewers: list[tuple[str | None, Encoding]]) -> None:
        for user, encoding in viewers:
            self._join(user, encoding, 0, None)

    @rule(
        user=st.sampled_from(USERS),
        encoding=st.sampled_from(Encoding),
        backlog=st.integers(0, 4),
        cursor=st.sampled_from(["none", "zero", "published", "newest"]),
        data=st.data(),
    )
    def join(self, user: str | None, encoding: Encoding, backlog: int, cursor: str, data: st.DataObject) -> None:
        after: int | None = None
        if cursor == "zero":
            after = 0
        elif cursor == "published" and self.published:
            after = data.draw(st.sampled_from([c.id for c in self.published]))
        elif cursor == "newest" and self.published:
            after = self.published[-1].id
        v = self._join(user, encoding, backlog, after)
        opening = [k for k, _ in parse(encoding, v.handed[0][1])]
        event(f"joined with cursor {cursor}" + (" and got reset" if "reset" in opening else ""))

    def _join(self, user: str | None, encoding: Encoding, backlog: int, after: int | None) -> FakeViewer:
        w = self.world

        async def connect() -> FakeViewer:
            identity = Identity(user, user.upper()) if user is not None else None
            room, user_id, first = await w.rooms.open_stream(StreamParams(VIDEO, after, backlog, identity), encoding)
            v = FakeViewer(user_id, encoding, MACHINE.viewer_buffer)
            v.on_handed = self._check_handed
            v.control(chunk(first) if encoding is Encoding.SSE else first, trio.current_time())
            room.join(v)
            return v

        v = self.trio(connect)
        self.watchers.append(Watcher(v, len(self.published), len(self.removals)))
        return v

    @precondition(lambda self: bool(self.watchers))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        watcher = data.draw(st.sampled_from(self.watchers))
        self.watchers.remove(watcher)
        room = self._room()
        assert room is not None and watcher.viewer in room.viewers

        def go() -> None:
            room.leave(watcher.viewer)
            watcher.viewer.close()

        self.trio.sync(go)

    @rule(user=st.sampled_from(AUTHORS), shadow=st.booleans(), n=st.integers(1, 3))
    def publish(self, user: str, shadow: bool, n: int) -> None:
        batch = [self.world.comment(user, shadow=shadow) for _ in range(n)]
        self.published += batch

        async def post() -> None:
            for c in batch:
                await self.world.broker.publish(c)

        self.trio(post)

    @precondition(lambda self: len(self.removed) < len(self.published))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from([c for c in self.published if c.id not in self.removed]))
        self.removed.add(c.id)
        self.removals.append(c)
        self.trio(lambda: self.world.remove(c))

    @rule(dt=st.sampled_from([0.0078125, 0.0625, 0.125, 0.25, 1.0, 2.5, 4.0]))
    def tick(self, dt: float) -> None:
        self.trio.sync(lambda: self.trio.clock.jump(dt))

    @precondition(lambda self: bool(self.watchers))
    @rule(data=st.data(), stalled=st.booleans())
    def stall_or_read(self, data: st.DataObject, stalled: bool) -> None:
        v = data.draw(st.sampled_from(self.watchers)).viewer
        if stalled:
            v.stalled = True
        else:
            self.trio.sync(lambda: v.read(trio.current_time()))

    @precondition(lambda self: self._room() is not None)
    @rule(mode=st.sampled_from(["push", "sampled", "cdn", None]), how=st.sampled_from(["settle", "bus"]))
    def set_mode(self, mode: Mode | None, how: str) -> None:
        room = self._room()
        assert room is not None
        before = room.mode
        if how == "settle":
            self.trio.sync(lambda: room.settle_mode(mode))
        elif mode is not None:
            self.trio(lambda: self.world.bus.publish(VIDEO, ModeChange(VIDEO, mode)))
        assert room.mode == (mode if mode is not None else before)

    @rule()
    def settle(self) -> None:
        """Long enough for every pending flush; every client reads: nothing may be missing
        from a viewer in push mode but what its gap notices count."""
        self.trio.sync(lambda: self.trio.clock.jump(SETTLE_S))
        def read_all() -> None:
            for w in self.watchers:
                w.viewer.read(trio.current_time())

        self.trio.sync(read_all)
        self._track_modes()
        for w in self.watchers:
            if not w.push_only:
                continue
            user = w.viewer.user_id
            expected = {
                c.id for c in self.published[w.published_at :] if self._visible(c, user) and c.id not in self.removed
            }
            expected_removals = {c.id for c in self.removals[w.removed_at :] if self._visible(c, user)}
            missing = expected - set(w.viewer.ids())
            missing_removals = expected_removals - set(w.viewer.ids("remove"))
            assert len(missing) + len(missing_removals) <= w.viewer.missed(), (missing, missing_removals, w.viewer.missed())
            event("settled a push viewer with " + ("a gap" if w.viewer.missed() else "no gap"))
            if expected:
                event("settled a push viewer that expected comments")

    # -- invariants

    def _track_modes(self) -> None:
        room = self._room()
        mode = room.mode if room is not None else "push"
        for w in self.watchers:
            if mode != "push":
                w.push_only = False

    @invariant()
    def nothing_went_wrong_inside(self) -> None:
        assert self.trio.error is None, self.trio.error
        assert not self.violations, self.violations
        assert not self.trio.guard.spun, "a room's loop spun"

    @invariant()
    def every_viewer_is_in_the_room_and_knows_its_mode(self) -> None:
        self._track_modes()
        room = self._room()
        if not self.watchers:
            return
        assert room is not None, "a room with viewers closed"
        assert {w.viewer for w in self.watchers} == room.viewers
        for w in self.watchers:
            assert (w.viewer.modes() or ["push"])[-1] == room.mode

    @invariant()
    def every_stream_is_ordered_and_shows_only_what_its_viewer_may_see(self) -> None:
        by_id = {c.id: c for c in self.published}
        for w in self.watchers:
            v = w.viewer
            events = v.events()  # well-formed, or this raises
            got = v.ids()
            assert all(a < b for a, b in itertools.pairwise(got)), got  # once each, in id order
            for i in got:
                assert i in by_id and self._visible(by_id[i], v.user_id), i
            for i in v.ids("remove"):
                assert i in by_id and self._visible(by_id[i], v.user_id), f"removal of {i} revealed"
            assert all(int(d["missed"]) > 0 for k, d in events if k == "gap")
            retries = [i for i, (k, _) in enumerate(events) if k == "retry"]
            assert retries == ([] if v.encoding is Encoding.WS else [0])

    @invariant()
    def the_snapshot_is_public(self) -> None:
        room = self._room()
        if room is None:
            return
        body = json.loads(self.trio.sync(lambda: room.snapshot())[0])
        by_id = {c.id: c for c in self.published}
        shown = [int(c["id"]) for c in body["comments"]]
        assert all(not by_id[i].shadow for i in shown), shown
        assert all(not by_id[int(i)].shadow for i in body["removed"]), body["removed"]
        if room.mode != "cdn":  # cdn: one snapshot per interval, whatever changed meanwhile
            assert not set(shown) & self.removed


RoomMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestRoomMachine = RoomMachine.TestCase
