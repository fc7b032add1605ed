"""Rooms: one per video with viewers on this node, each a task in the rooms' nursery.

A room holds the video's ring of recent comments (as ``Entry`` objects, encoded once),
its viewers, and what is waiting for the next flush. The bus handler only appends to the
ring and wakes the room; the room's task flushes, paced by ``FlushPacer``: one
pre-encoded bytes object per encoding per flush, written to every viewer without
waiting. A room is created by its first viewer and closes ``room_linger_s`` after its
last one left (the linger keeps the ring warm across reconnect storms).

A node holds at most ``max_rooms`` rooms. A new one past that closes the room idle the
longest (no viewers: lingering, or opened by a long-poll or snapshot read) to make space;
when every room has viewers, the new video is refused with 503 ``too_many_rooms`` and
``Retry-After`` (``TooManyRooms``): the viewers already watching keep their rooms.

The ring holds every author's shadowed comments (seeded from the store with them too):
what each viewer may see is decided when it is read (``visible_to``), so a shadow-banned
author's backlog is the same whether or not the room was just created.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Any

import trio

from backpressure.pacer import FlushPacer
from backpressure.sampler import Candidate, Sampler
from backpressure.spread import SpreadController, SpreadThresholds
from backpressure.tiers import Mode, Thresholds, TierController
from backpressure.velocity import Velocity
from domain.errors import TooManyRooms
from domain.metrics import Metrics
from domain.model import BusGap, Comment, ModeChange, Reaction, Removal
from domain.params import StreamParams
from domain.ports import Bus, BusEvent, Presence, SnapshotSource, Store
from domain.settings import Settings
from ringbuf import Ring, TooOld
from rms.frames import Encoding, Entry, control, heartbeat, join, wrap
from rms.viewer import Viewer

log = logging.getLogger("livecomments.rms")

# Viewers written per flush before the room yields to the scheduler, so that accepts,
# posts and other rooms keep flowing while a big room fans out.
YIELD_EVERY = 512

# Retry-After of a refused new room (every room has viewers): a room becomes evictable as
# soon as its last viewer leaves, which is not predictable; a few seconds spreads retries.
ROOMS_RETRY_AFTER_S = 5


def _by_id(entry: Entry) -> int:
    return entry.id


class Room:
    def __init__(self, video_id: str, rooms: Rooms) -> None:
        settings, store, bus, metrics = rooms.settings, rooms.store, rooms.bus, rooms.metrics
        self.owner = rooms
        self.video_id = video_id
        self.settings = settings
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.ring: Ring[Entry] = Ring(settings.ring_size)
        self.viewers: set[Viewer] = set()
        self.by_shard: dict[int, int] = {}  # shard -> viewers here (see join)
        self.pending: list[Entry] = []
        self.pending_ids: set[int] = set()
        self.pending_removals: list[int] = []
        self.removed_recent: deque[int] = deque(maxlen=settings.snapshot_size)
        self.pacer = FlushPacer(settings.flush_rate, settings.flush_burst)
        self.velocity = Velocity()
        self.tier = TierController(rooms.thresholds)
        self.sampler = Sampler(settings.sample_target_per_s)
        self.removals_total = 0
        self.mode: Mode = "push"
        self._mode_events = 0  # ModeChange events received (see adopt_agreed)
        # Over how many shards the cluster agreed to spread the video's viewers, and this
        # node's controller that proposes changes (None: spreading is off here).
        self.shards = 1
        self.spread = SpreadController(rooms.spread) if rooms.spread is not None else None
        # Bumps on every change the public snapshot shows, and only then: a shadowed
        # comment (or its removal) must not change it, or the ETag would tell.
        self.version = 0
        self.ready = trio.Event()
        self.closed = False
        self.changed = trio.Event()  # set (and replaced) after every flush: long-poll waits on it
        self._wake = trio.Event()
        self._last_used = trio.current_time()
        self._snapshot: tuple[int, bytes, str] | None = None
        self._snapshot_at = float("-inf")

    # -- bus side ---------------------------------------------------------------------

    def on_event(self, event: BusEvent) -> None:
        if isinstance(event, Comment):
            entry = Entry(event)
            if self.ring.append(entry):
                self.pending.append(entry)
                self.pending_ids.add(entry.id)
                self.velocity.observe(trio.current_time())
                if not event.shadow:
                    self.version += 1
                self._wake.set()
        elif isinstance(event, Reaction):
            reacted = self.ring.get(event.comment_id)
            if reacted is not None:
                reacted.reactions += 1
        elif isinstance(event, BusGap):
            self.backfill_gap(event.first_id, event.missed)
        elif isinstance(event, ModeChange):
            self._mode_events += 1
            if event.mode in ("push", "sampled", "cdn") and event.mode != self.mode:
                self.set_mode(event.mode)  # type: ignore[arg-type]
        elif isinstance(event, Removal) and event.shadow:
            # Only its author ever saw it: tell only the author's connections, at once,
            # and keep it out of the public removal list (that would reveal the id).
            self.ring.remove(event.comment_id)
            if event.comment_id in self.pending_ids:
                self.pending_ids.discard(event.comment_id)
                self.pending = [e for e in self.pending if e.id != event.comment_id]
            now = trio.current_time()
            for v in list(self.viewers):
                if v.user_id is not None and v.user_id == event.author_id:
                    v.control(control("remove", {"id": str(event.comment_id)}, v.encoding), now)
        elif isinstance(event, Removal):
            self.ring.remove(event.comment_id)
            if event.comment_id in self.pending_ids:
                self.pending_ids.discard(event.comment_id)
                self.pending = [e for e in self.pending if e.id != event.comment_id]
            self.pending_removals.append(event.comment_id)
            self.removed_recent.append(event.comment_id)
            self.removals_total += 1
            self.version += 1
            self._wake.set()

    # -- viewer side --------------------------------------------------------------------

    def touch(self) -> None:
        self._last_used = trio.current_time()
        self.owner.used(self)

    def backlog(self, n: int, user_id: str | None) -> list[Entry]:
        """The newest ``n`` entries this viewer may see, excluding those awaiting a flush
        (the flush will bring them, so a joiner never gets one twice)."""
        out: list[Entry] = []
        if n <= 0:
            return out
        for e in reversed(self.ring.last(n + len(self.pending) + 64)):
            if e.id in self.pending_ids or not e.comment.visible_to(user_id):
                continue
            out.append(e)
            if len(out) >= n:
                break
        out.reverse()
        return out

    def replay(self, after_id: int, user_id: str | None) -> list[Entry]:
        """Entries after ``after_id`` held in the ring (TooOld if it lost some)."""
        return [
            e for e in self.ring.since(after_id) if e.id not in self.pending_ids and e.comment.visible_to(user_id)
        ]

    async def replay_from_store(self, after_id: int, user_id: str | None) -> list[Entry] | None:
        """Replay older than the ring from the store; None when more than ``replay_max``."""
        limit = self.settings.replay_max
        newest = self.ring.newest_id
        comments = await self.store.after(self.video_id, after_id, limit + 1, user_id)
        if len(comments) > limit:
            return None
        entries: list[Entry] = []
        for c in comments:
            if c.id in self.pending_ids:
                return entries  # the flush brings these and everything after them
            held = self.ring.get(c.id)
            entries.append(held if held is not None else Entry(c))
        # What arrived while the store was read (and may be flushed already) is in the
        # ring, not in the store's answer; if the ring lost some of it meanwhile: reset.
        last = entries[-1].id if entries else after_id
        if self.ring.evicted_max > max(last, newest if newest is not None else -1):
            return None
        return entries + [
            e for e in self.ring if e.id > last and e.id not in self.pending_ids and e.comment.visible_to(user_id)
        ]

    async def catch_up(self, after_id: int | None, backlog: int, user_id: str | None) -> tuple[bool, list[Entry]]:
        """What a viewer gets on connect: (reset?, entries oldest first)."""
        if after_id is None:
            return False, self.backlog(backlog, user_id)
        try:
            return False, self.replay(after_id, user_id)
        except TooOld:
            pass
        entries = await self.replay_from_store(after_id, user_id)
        if entries is None:
            return True, self.backlog(backlog, user_id)
        return False, entries

    def opening(self, encoding: Encoding, reset: bool, entries: list[Entry]) -> bytes:
        """What a viewer gets first, unwrapped: the mode (when not push), so the client
        knows how to read what follows, then ``reset`` if asked, then its catch-up."""
        plain = Encoding.WS if encoding is Encoding.WS else Encoding.SSE_PLAIN
        out = self.mode_frame(plain) if self.mode != "push" else b""
        if reset:
            out += control("reset", {}, plain)
        return out + join(entries, encoding)

    def join(self, viewer: Viewer, shard: int = 0) -> None:
        """``shard``: the slice of a spread video's audience the viewer came through
        (``StreamParams.shard``); the room counts its viewers per shard (``by_shard``)."""
        if self.closed:
            # Closed (evicted, or lingered out) between the caller's ``Rooms.get`` and
            # this join: nothing would ever be delivered here. End the connection at once;
            # the client reconnects and gets the video's new room.
            viewer.close()
            return
        viewer.shard = shard
        self.viewers.add(viewer)
        self.by_shard[shard] = self.by_shard.get(shard, 0) + 1
        self.owner.viewer_joined(self)

    def leave(self, viewer: Viewer) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            left = self.by_shard.get(viewer.shard, 0) - 1
            if left > 0:
                self.by_shard[viewer.shard] = left
            else:
                self.by_shard.pop(viewer.shard, None)
            self._last_used = trio.current_time()
            self.owner.viewer_left(self)
            self._wake.set()

    def settle_mode(self, agreed: Mode | None) -> None:
        """The outcome of this room's proposal to change mode (``Presence.agree_mode``):
        the mode every node uses from now on, or None to propose again on a later tick."""
        if agreed is None:
            self.tier.mode = self.mode
            return
        self.tier.mode = agreed
        self.tier.changed_at = trio.current_time()
        if agreed != self.mode:
            self.set_mode(agreed)

    def settle_spread(self, agreed: int | None) -> None:
        """The outcome of this room's proposal of a shard count (``Presence.agree_spread``),
        or the count read when the room opened; None: propose again later."""
        if self.spread is None:
            return
        self.spread.settle(self.shards if agreed is None else agreed)
        if self.spread.shards != self.shards:
            self.metrics.spread_changed(self.video_id, self.shards, self.spread.shards)
            self.shards = self.spread.shards

    async def adopt_agreed(self) -> None:
        """Start from the mode and shard count in force for the video rather than from
        push and one shard: a node that opens a room for a video others already serve (a
        spread video's new shard, the next node after one died) must not push to its
        viewers what the others sample, nor propose changes from a view it never had.
        Called after subscribing, so no change falls between the two; a mode event that
        arrives while the answer is on its way is newer than the answer and wins."""
        seen = self._mode_events
        agreed = await self.owner.presence.agreed(self.video_id)
        if agreed is None:
            return
        mode, shards = agreed
        if self._mode_events == seen and mode != self.mode:
            self.set_mode(mode)
        self.tier.mode = self.mode
        self.settle_spread(shards)

    def evict(self) -> None:
        """Close this idle room now (``Rooms`` needs its place): its task ends at once."""
        self.closed = True
        self._wake.set()

    def set_mode(self, mode: Mode) -> None:
        """Switch the fan-out mode and tell every viewer (``mode`` event)."""
        old, self.mode = self.mode, mode
        self.version += 1
        self._snapshot = None
        self.metrics.mode_changed(self.video_id, old, mode)
        now = trio.current_time()
        frames = {enc: self.mode_frame(enc) for enc in Encoding}
        for v in list(self.viewers):
            v.control(frames[v.encoding], now)

    def mode_frame(self, encoding: Encoding) -> bytes:
        data: dict[str, Any] = {"mode": self.mode}
        if self.mode == "cdn":
            data["snapshot_url"] = f"/v1/videos/{self.video_id}/snapshot.json"
            data["interval_ms"] = int(self.settings.snapshot_interval_s * 1000)
        return control("mode", data, encoding)

    def goaway(self) -> None:
        now = trio.current_time()
        for v in list(self.viewers):
            v.control(control("goaway", {"reconnect_ms": [500, 3000]}, v.encoding), now)

    def backfill_gap(self, first_id: int, missed: int) -> None:
        """The bus resubscribed after an outage but could not replay everything live:
        ``missed`` comments before ``first_id`` will not come through it. Replays from a
        cursor before ``first_id`` go to the store from now on, and every viewer is told
        with a ``gap`` event. (Cluster mode only; not on the delivery path.)"""
        self.ring.forget_before(first_id - 1)
        now = trio.current_time()
        for v in list(self.viewers):
            v.control(control("gap", {"missed": missed}, v.encoding), now)

    # -- the room's task ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.bus.subscribe(self.video_id, self.on_event)
        try:
            await self.adopt_agreed()
            try:
                # Every author's shadowed comments too: visibility is decided per viewer
                # when the ring is read, as for the comments that arrive live.
                seed = await self.store.latest(self.video_id, self.settings.ring_size, every_author=True)
            except Exception as e:  # the room still serves live comments without history
                log.warning("room %s: could not load history: %s", self.video_id, e)
                seed = []
            for c in seed:
                self.ring.append(Entry(c))
            if len(seed) >= self.settings.ring_size:
                self.ring.forget_before(seed[0].id - 1)
            self.ready.set()
            task_status.started()
            await self._loop()
        finally:
            self.closed = True
            self.owner.forget(self)
            self.ready.set()
            self.changed.set()
            if self.shards > 1:
                self.metrics.spread_changed(self.video_id, self.shards, 1)  # its gauge goes
            with trio.CancelScope(shield=True):
                await self.bus.unsubscribe(self.video_id, self.on_event)

    async def _loop(self) -> None:
        s = self.settings
        next_heartbeat = trio.current_time() + s.heartbeat_s
        while True:
            now = trio.current_time()
            if self.closed:
                return  # evicted
            if not self.viewers and now >= self._last_used + s.room_linger_s and not self.pending:
                return
            if not (self.pending or self.pending_removals):
                deadline = min(next_heartbeat, self._last_used + s.room_linger_s if not self.viewers else next_heartbeat)
                with trio.move_on_at(deadline):
                    await self._wake.wait()
                self._wake = trio.Event()
            now = trio.current_time()
            if self.pending or self.pending_removals:
                ready_at = self.pacer.ready_at(now)
                if ready_at > now:
                    await trio.sleep_until(ready_at)  # pacing: let a batch gather
                start = trio.current_time()
                await self.flush(start)
                self.pacer.flushed(start, trio.current_time() - start)
            if trio.current_time() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = trio.current_time() + s.heartbeat_s

    def _heartbeat(self) -> None:
        now = trio.current_time()
        frames = {enc: heartbeat(enc) for enc in Encoding}
        for v in list(self.viewers):
            if v.queue.clear:
                v.control(frames[v.encoding], now)

    async def flush(self, now: float) -> None:
        entries, self.pending = self.pending, []
        entries.sort(key=_by_id)  # arrival order is not id order when ids come from several posters
        self.pending_ids = set()
        removals, self.pending_removals = self.pending_removals, []
        public, private = self._select(entries, now)
        if self.mode == "cdn":
            removals = []
        encoded: dict[Encoding, bytes] = {}
        viewers = list(self.viewers)
        n = len(public)
        for i, v in enumerate(viewers):
            enc = v.encoding
            if private and v.user_id in private:
                own = sorted(public + private[v.user_id], key=lambda e: e.id)
                v.deliver(self._encode(enc, own, removals), len(own) + len(removals), now)
            else:
                data = encoded.get(enc)
                if data is None:
                    data = encoded[enc] = self._encode(enc, public, removals)
                if data:
                    # A dropped batch counts its removals as missed too, so a viewer that
                    # missed only a removal still gets its gap notice.
                    v.deliver(data, n + len(removals), now)
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await trio.lowlevel.checkpoint()
        self.metrics.delivered(n * len(viewers), len(viewers) if (n or removals) else 0)
        self.changed.set()
        self.changed = trio.Event()

    def _select(self, entries: list[Entry], now: float) -> tuple[list[Entry], dict[str, list[Entry]]]:
        """Split a batch into what everyone gets and what only its author gets.

        Shadowed comments go to their author only, in every mode. In ``sampled`` mode the
        sampler picks what everyone gets; the rest still reaches its author. In ``cdn``
        mode nobody is pushed comments (they read the snapshot), except an author's own
        shadowed ones, which no snapshot may carry.
        """
        private: dict[str, list[Entry]] = {}
        visible = []
        for e in entries:
            if e.comment.shadow:
                private.setdefault(e.comment.author.id, []).append(e)
            else:
                visible.append(e)
        if self.mode == "push" or not visible:
            return visible, private
        if self.mode == "cdn":
            return [], private
        keep = self.sampler.choose(
            [Candidate(e.id, e.comment.streamer, e.comment.author.verified, e.reactions) for e in visible], now
        )
        public = []
        for e in visible:
            if e.id in keep:
                public.append(e)
            else:
                private.setdefault(e.comment.author.id, []).append(e)
        self.metrics.sampled_out(len(visible) - len(public))
        return public, private

    @staticmethod
    def _encode(enc: Encoding, entries: list[Entry], removals: Iterable[int]) -> bytes:
        frames = join(entries, enc)
        if removals:
            frames += b"".join(
                control("remove", {"id": str(r)}, Encoding.SSE_PLAIN if enc is not Encoding.WS else enc)
                for r in removals
            )
        return wrap(enc, frames)

    # -- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> tuple[bytes, str]:
        """The public snapshot body and its ETag, rebuilt at most once per version."""
        from rms.frames import dumps

        now = trio.current_time()
        stale = self._snapshot is None or self._snapshot[0] != self.version
        if stale and self.mode == "cdn" and self._snapshot is not None and now - self._snapshot_at < self.settings.snapshot_interval_s:
            stale = False  # cdn mode: one snapshot per interval, whatever the edge asks
        if stale or self._snapshot is None:
            entries = self._public_tail(self.settings.snapshot_size)
            body = dumps(
                {
                    "video_id": self.video_id,
                    "mode": self.mode,
                    "comments": [e.comment.to_json() for e in entries],
                    "removed": [str(r) for r in self.removed_recent],
                    "next": str(entries[-1].id) if entries else None,
                }
            )
            # From the body alone: the same public view has the same ETag on every node
            # and across restarts, and nothing the public cannot see can change it.
            etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
            self._snapshot = (self.version, body, etag)
            self._snapshot_at = now
            self.metrics.snapshot_written(len(body))
        return self._snapshot[1], self._snapshot[2]

    def _public_tail(self, n: int) -> list[Entry]:
        """The newest ``n`` public entries in the ring, oldest first (looking past any
        number of shadowed ones, so that those cannot thin out the snapshot)."""
        out: list[Entry] = []
        for e in reversed(self.ring.last(len(self.ring))):
            if not e.comment.shadow:
                out.append(e)
                if len(out) >= n:
                    break
        out.reverse()
        return out


def spread_thresholds(settings: Settings) -> SpreadThresholds | None:
    """The spread controllers' thresholds of a cluster's rms node (None: turned off)."""
    if settings.spread_viewers_per_node <= 0 or settings.spread_max_shards <= 1:
        return None
    return SpreadThresholds(
        settings.spread_viewers_per_node, settings.spread_max_shards, shrink_after_s=settings.spread_shrink_after_s
    )


class LocalPresence:
    """The ``Presence`` of a process that is the whole cluster: its own viewers, its
    own decisions."""

    async def total_viewers(self, video_id: str, local: int) -> int:
        return local

    async def agree_mode(self, video_id: str, current: Mode, proposed: Mode) -> Mode | None:
        return proposed

    async def agree_spread(self, video_id: str, current: int, proposed: int) -> int | None:
        return 1  # one process: nothing to spread over

    async def agreed(self, video_id: str) -> tuple[Mode, int] | None:
        return None  # the rooms are the only state


class Rooms:
    """The rooms of this node, owned by the nursery that ``run`` opens."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        bus: Bus,
        metrics: Metrics,
        *,
        presence: Presence | None = None,
        snapshots: SnapshotSource | None = None,
        spread: SpreadThresholds | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.rooms: dict[str, Room] = {}
        # The rooms without viewers, least recently used first: the ones ``_make_space``
        # closes first when ``max_rooms`` is reached. Kept in step by join, leave, touch.
        self.idle: OrderedDict[str, Room] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self.viewers = 0
        self._empty = trio.Event()
        self.thresholds = Thresholds(
            settings.tier_sampled_at,
            settings.tier_sampled_below,
            settings.tier_cdn_at,
            settings.tier_cdn_below,
            settings.tier_min_dwell_s,
        )
        self.presence: Presence = presence if presence is not None else LocalPresence()
        self.snapshots = snapshots
        self.spread = spread  # None: videos are not spread (one process, or turned off)

    async def tier_loop(self, interval: float = 1.0) -> None:
        """Once a second, feed each room's total viewers to its tier controller (and its
        spread controller)."""
        while True:
            await trio.sleep(interval)
            await self.tier_tick()

    async def tier_tick(self) -> None:
        now = trio.current_time()
        for room in list(self.rooms.values()):
            total = await self.presence.total_viewers(room.video_id, len(room.viewers))
            change = room.tier.observe(total, now)
            if change is not None:
                room.settle_mode(await self.presence.agree_mode(room.video_id, room.mode, change))
            if room.spread is not None:
                shards = room.spread.observe(total, now)
                if shards is not None:
                    room.settle_spread(await self.presence.agree_spread(room.video_id, room.shards, shards))
        self.metrics.tier_evaluations.inc()

    def viewer_joined(self, room: Room) -> None:
        self.viewers += 1
        self.metrics.viewer_joined()
        if self.idle.get(room.video_id) is room:
            del self.idle[room.video_id]

    def viewer_left(self, room: Room) -> None:
        self.viewers -= 1
        self.metrics.viewer_left()
        if not room.viewers and self.rooms.get(room.video_id) is room:
            self.idle[room.video_id] = room
            self.idle.move_to_end(room.video_id)
        if self.viewers == 0:
            self._empty.set()
            self._empty = trio.Event()

    async def wait_empty(self) -> None:
        """Return once no viewer is connected to this node."""
        if self.viewers:
            await self._empty.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.tier_loop)
            task_status.started()

    async def open_stream(self, params: StreamParams, encoding: Encoding) -> tuple[Room, str | None, bytes]:
        """A new viewer's room, its user id, and the bytes it gets first (for SSE: the
        ``retry`` field, then the room's opening), whichever transport serves it."""
        room = await self.get(params.video_id)
        user_id = params.identity.user_id if params.identity else None
        reset, entries = await room.catch_up(params.after, params.backlog, user_id)
        retry = b"" if encoding is Encoding.WS else b"retry: %d\n\n" % self.settings.retry_ms
        return room, user_id, retry + room.opening(encoding, reset, entries)

    async def get(self, video_id: str) -> Room:
        """The video's room, created (and its history loaded) if it has none."""
        room = self.rooms.get(video_id)
        if room is None:
            assert self._nursery is not None, "Rooms.run must be started first"
            self._make_space()
            room = Room(video_id, self)
            self.rooms[video_id] = room
            self.idle[video_id] = room  # no viewers yet
            self.metrics.rooms.set(len(self.rooms))
            self._nursery.start_soon(room.run)
        await room.ready.wait()
        if room.closed:
            return await self.get(video_id)
        room.touch()
        return room

    def _make_space(self) -> None:
        """Make space for one more room under ``max_rooms``.

        The decision when full: close the rooms idle the longest (no viewers; a ring is
        cheap to load again), so a flood of new video ids recycles idle rooms instead of
        growing memory; when every room has viewers, refuse the new one (503 with
        Retry-After) rather than take a room from people watching. Rooms still loading
        their history are passed over (their first caller is waiting for them).
        """
        excess = len(self.rooms) + 1 - self.settings.max_rooms
        if excess <= 0:
            return
        victims: list[Room] = []
        for room in self.idle.values():
            if len(victims) >= excess:
                break
            if room.ready.is_set() and not room.closed:
                victims.append(room)
        if len(victims) < excess:
            self.metrics.rooms_refused.inc()
            raise TooManyRooms(
                f"this node holds its maximum of {self.settings.max_rooms} rooms, all with viewers",
                ROOMS_RETRY_AFTER_S,
            )
        for room in victims:
            self.forget(room)
            room.evict()
            self.metrics.rooms_evicted.inc()

    def used(self, room: Room) -> None:
        """A room was read (get, long-poll): idle, it goes to the back of the eviction order."""
        if self.idle.get(room.video_id) is room:
            self.idle.move_to_end(room.video_id)

    def forget(self, room: Room) -> None:
        if self.rooms.get(room.video_id) is room:
            del self.rooms[room.video_id]
            self.metrics.rooms.set(len(self.rooms))
        if self.idle.get(room.video_id) is room:
            del self.idle[room.video_id]

    async def snapshot(self, room: Room) -> tuple[bytes, str]:
        """``snapshot.json`` of the room's video, (body, ETag): in cdn mode the one the
        cluster published, when there is a ``SnapshotSource`` and it has one; otherwise
        this node's own."""
        if self.snapshots is not None and room.mode == "cdn":
            published = await self.snapshots.fetch(room.video_id)
            if published is not None:
                return published
        return room.snapshot()

    def viewer_count(self, video_id: str) -> int:
        room = self.rooms.get(video_id)
        return len(room.viewers) if room else 0

    def goaway(self) -> None:
        for room in list(self.rooms.values()):
            room.goaway()
