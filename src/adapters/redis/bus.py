"""The cluster bus: Redis sharded pub/sub, one channel per video, with per-video ordering.

An rms node subscribes to a video's channel while it has a room for the video (the room
subscribes when it opens and unsubscribes when it closes), so Redis only sends a node
the videos its viewers watch. Channels are shard channels (``SPUBLISH``/``SSUBSCRIBE``)
named with the video's hash tag (``Keys.channel``): in a Redis Cluster a video's
messages stay on the master that owns its slot, instead of being broadcast to every
node as classic ``PUBLISH`` is; the subscriber holds one connection per master.

Ordering. Comment ids are Snowflakes from several ingest processes, so Redis can accept
(and publish) id 1005 from one worker before id 1003 from another. A node must never
deliver a lower id after a higher one within a video: a viewer who saw 1005 and resumes
with ``Last-Event-ID: 1005`` would never get 1003. Two rules make that hold:

- ingest side (``lua/append.lua``): Redis accepts a comment only if its id's time is
  within ``window_ms`` of Redis' own clock (otherwise 503, retry with a new id). So once
  Redis' clock passes ``t + window_ms``, no comment with a time below ``t`` can appear;
- rms side (``policy.reorder.ReorderBuffer``): comments are held until the node's clock passes
  their id's time + ``hold_ms`` (``window_ms`` plus a margin for pub/sub delay and clock
  skew between the hosts), then released to the rooms in id order.

A room also reads comments from the store (its seed, replays older than its ring). Each
video channel has a cursor: the store gives rooms the comments up to it
(``read_bound``, used by ``ClusterStore``), the buffer everything after it. When the
node starts listening to a video, the cursor is set a little in the past and the hot
store's comments after it are fed into the buffer (what was published before the
SUBSCRIBE took effect); from then on the cursor follows the last released id. So the
two paths never interleave out of order, and duplicates are dropped by id.

The price is ``hold_ms`` of added broadcast latency (350 ms by default; the seed's budget
is 2 s). A comment that still arrives after a higher id was released (only if the
clocks drift apart by more than the margin) is delivered anyway and counted in
``livecomments_bus_late_comments``.

Redis restarts and failovers. The subscriber connection is ours: when it breaks, the bus
reconnects with jittered backoff, resubscribes every channel, and backfills each video
from the hot store (everything after the last id it released) and the removals recorded
since the outage began; the backfill goes through the same buffer, so order and
de-duplication hold across the outage. A Sentinel client finds the new primary on its
own when it reconnects; a Redis Cluster client is told of each failed attempt
(``client.note_failure``) so that it re-reads the slot map and finds the promoted
replica. On a cluster, a failure of any master's connection restarts the whole
subscriber (every video is backfilled, not only the failed master's): simpler, and a
backfill of a video that missed nothing reads one page and adds nothing. A
``sunsubscribe`` that the bus did not ask for (the slot moved: a manual failover or a
resharding) restarts it too.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from adapters.redis.client import REDIS_ERRORS, Redis, note_failure, shard_subscriber
from adapters.redis.keys import Keys
from adapters.retry import Retry
from domain.errors import Unavailable
from domain.ids import lowest_id_at, snowflake_ms
from domain.model import BusGap, Comment, ModeChange, Reaction, Removal
from domain.ports import BusEvent, Handler, StoreUnavailable
from policy.backoff import Backoff
from policy.reorder import Channel, ReorderBuffer

if TYPE_CHECKING:
    from domain.metrics import Metrics

log = logging.getLogger("adapters.memory")

SUBSCRIBE_CHUNK = 256
SUBSCRIBE_TIMEOUT_S = 3.0
JOIN_SLACK_MS = 1000
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, trio.TooSlowError)
# coredis' cluster subscriber raises KeyError for a channel whose slot has moved to a master
# it holds no connection to (the slot map changed under it): a fresh subscriber fixes that.
SUBSCRIBER_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, KeyError)
UNSUBSCRIBED = ("unsubscribe", "sunsubscribe")
READ_ERRORS: tuple[type[BaseException], ...] = (*REDIS_ERRORS, StoreUnavailable)
RECONNECT = Backoff(initial_s=0.1, max_s=2.0)  # the subscriber connection's jittered back-off
BACKFILL_ATTEMPTS = 10  # reads of the hot store a backfill tries (about 10 s with RECONNECT)


def encode(event: BusEvent) -> str:
    if isinstance(event, Comment):
        return json.dumps({"t": "c", "c": event.to_record()}, ensure_ascii=False, separators=(",", ":"))
    if isinstance(event, Removal):
        d: dict[str, Any] = {"t": "r", "v": event.video_id, "id": str(event.comment_id)}
        if event.shadow:
            d.update(s=True, a=event.author_id)
        return json.dumps(d)
    if isinstance(event, Reaction):
        return json.dumps({"t": "x", "v": event.video_id, "id": str(event.comment_id)})
    if isinstance(event, ModeChange):
        return json.dumps({"t": "m", "v": event.video_id, "mode": event.mode})
    raise TypeError(f"{type(event).__name__} is news of this node's own bus, never published")


def decode(data: bytes | str) -> BusEvent | None:
    try:
        d = json.loads(data)
        kind = d["t"]
        if kind == "c":
            return Comment.from_record(d["c"])
        if kind == "r":
            return Removal(d["v"], int(d["id"]), d.get("a"), bool(d.get("s", False)))
        if kind == "x":
            return Reaction(d["v"], int(d["id"]))
        if kind == "m":
            return ModeChange(d["v"], str(d["mode"]))
    except (ValueError, KeyError, TypeError) as e:
        log.warning("dropping a malformed bus message: %s", e)
    return None


Backfill = Callable[[str, int, int], Awaitable[list[Comment]]]
RemovedSince = Callable[[str, int], Awaitable[list[Removal]]]


class RedisBus:
    """The ``Bus`` protocol over Redis pub/sub. ``run`` owns the subscriber connection.

    Ingest publishes removals and reactions here; comments are published by the
    ``RedisBroker`` (the hot store's append script), atomically with their write.
    ``recent(video, after_id, limit)`` reads the hot store for joining and backfill;
    ``removed_since(video, ms)`` the tombstones. When a backfill has to give up on more
    than ``backfill_max`` comments, the video's handlers get a ``BusGap``.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        hold_ms: int = 350,
        recent: Backfill | None = None,
        removed_since: RemovedSince | None = None,
        backfill_max: int = 10_000,
        metrics: Metrics | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.buffer: ReorderBuffer[Comment] = ReorderBuffer(hold_ms)
        self._handlers: dict[str, list[Handler]] = {}  # per open channel of the buffer
        self.recent = recent
        self.removed_since = removed_since
        self.backfill_max = backfill_max
        self.wall_ms = wall_ms
        self.connected = False
        self.reconnects = 0
        self.backfilled = 0  # comments fed to rooms by backfills after reconnections
        self._ps: Any = None
        self._conn_scope: trio.CancelScope | None = None
        self._forced = False
        self._down_since_ms: int | None = None  # set while the subscriber is disconnected
        self._retry = Retry(RECONNECT)
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._up = trio.Event()
        self._metrics = _BusMetrics(metrics, self) if metrics is not None else None

    # -- the Bus protocol -----------------------------------------------------------------

    async def publish(self, video_id: str, event: BusEvent) -> None:
        try:
            await self.redis.spublish(self.keys.channel(video_id), encode(event))
        except REDIS_ERRORS as e:
            raise Unavailable(f"the bus is unavailable: {e}") from None

    async def subscribe(self, video_id: str, handler: Handler) -> None:
        handlers = self._handlers.get(video_id)
        if handlers is not None:
            handlers.append(handler)
            return
        cursor = lowest_id_at(self.wall_ms() - self.buffer.hold_ms - JOIN_SLACK_MS)
        ch = self.buffer.open(video_id, cursor)
        self._handlers[video_id] = [handler]
        ps = self._ps
        if ps is None:
            return  # not connected: the reconnect subscribes and backfills it
        try:
            with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
                await ps.subscribe(self.keys.channel(video_id))
        except SUBSCRIBER_ERRORS as e:
            # The connection may look alive but is not serving us: start a fresh one, which
            # subscribes every channel and backfills.
            log.warning("bus: subscribing %s failed (%s); reconnecting", video_id, e)
            self._restart_connection()
            return
        # What was accepted after the channel's cursor before we listened: through the buffer.
        await self._feed(video_id, ch, ch.cursor)

    async def unsubscribe(self, video_id: str, handler: Handler) -> None:
        handlers = self._handlers.get(video_id)
        if handlers is None or handler not in handlers:
            return
        handlers.remove(handler)
        if handlers:
            return
        del self._handlers[video_id]
        self.buffer.close(video_id)
        ps = self._ps
        if ps is not None:
            try:
                with trio.move_on_after(SUBSCRIBE_TIMEOUT_S):
                    await ps.unsubscribe(self.keys.channel(video_id))
            except REDIS_ERRORS:
                pass

    def channels(self) -> int:
        return len(self.buffer.channels)

    def _restart_connection(self) -> None:
        if self._conn_scope is not None:
            self._forced = True
            self._conn_scope.cancel()

    def read_bound(self, video_id: str) -> int:
        """Store reads for a room (``ClusterStore.latest``/``after``) return ids below
        this: the rest reaches the room through the buffer, in id order."""
        ch = self.buffer.channels.get(video_id)
        if ch is None:
            return lowest_id_at(self.wall_ms() - self.buffer.hold_ms - JOIN_SLACK_MS)
        return ch.read_from() + 1

    async def wait_connected(self) -> None:
        await self._up.wait()

    # -- the tasks -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the subscriber connection up and release held comments, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._release_loop)
            nursery.start_soon(self._connection_loop)
            task_status.started()

    async def _connection_loop(self) -> None:
        while True:
            try:
                with trio.CancelScope() as self._conn_scope:
                    await self._listen()
                if self._forced:  # _restart_connection: treat as an outage from now
                    self._forced = False
                    self._down_since_ms = self._down_since_ms or self.wall_ms()
            except* SUBSCRIBER_ERRORS as group:
                err: BaseException = group
                while isinstance(err, BaseExceptionGroup) and err.exceptions:
                    err = err.exceptions[0]
                note_failure(self.redis, err)
                if self._down_since_ms is None:
                    self._down_since_ms = self.wall_ms()
                    log.warning("bus: lost the Redis subscriber connection (%s); reconnecting", err)
            finally:
                self._ps = None
                self._conn_scope = None
                self.connected = False
                self._up = trio.Event() if self._up.is_set() else self._up
            await self._retry.sleep()

    async def _listen(self) -> None:
        """One subscriber connection: subscribe every channel, backfill if this is a
        reconnection, then dispatch messages until the connection fails."""
        async with shard_subscriber(self.redis) as ps:
            self._ps = ps
            videos = list(self.buffer.channels)
            for i in range(0, len(videos), SUBSCRIBE_CHUNK):
                chunk = [self.keys.channel(v) for v in videos[i : i + SUBSCRIBE_CHUNK]]
                with trio.fail_after(SUBSCRIBE_TIMEOUT_S):
                    await ps.subscribe(*chunk)
            self.connected = True
            self._up.set()
            self._retry.reset()
            if self._down_since_ms is not None:
                self.reconnects += 1
                log.info("bus: reconnected to Redis, resubscribed %d channel(s); backfilling", len(videos))
                assert self._nursery is not None
                self._nursery.start_soon(self._backfill_all, videos, self._down_since_ms)
                self._down_since_ms = None
            while True:
                msg = await ps.get_message()
                if msg is None:
                    continue
                if msg["type"] == "message" and isinstance(msg["data"], (bytes, str)):
                    self._dispatch(msg["channel"], msg["data"])
                elif msg["type"] in UNSUBSCRIBED and self._still_wanted(msg["channel"]):
                    log.warning("bus: Redis unsubscribed %s (its slot moved); resubscribing everything", msg["channel"])
                    self._restart_connection()
                    return

    def _still_wanted(self, channel: Any) -> bool:
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        video_id = self.keys.channel_video(name)
        return video_id is not None and video_id in self._handlers

    def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        video_id = self.keys.channel_video(name)
        if video_id is None:
            return
        event = decode(data)
        if event is None:
            return
        handlers = self._handlers.get(video_id)
        if handlers is None:
            return
        if isinstance(event, Comment):
            if self.buffer.add(video_id, event.id, snowflake_ms(event.id), event):
                self._wake.set()
            return
        if isinstance(event, Removal):
            self.buffer.drop(video_id, event.comment_id)
        for handler in list(handlers):
            handler(event)

    async def _release_loop(self) -> None:
        while True:
            due_ms = self.buffer.next_release_ms()
            if due_ms is None:
                await self._wake.wait()
            else:
                wait_s = (due_ms - self.wall_ms()) / 1000
                if wait_s > 0:
                    with trio.move_on_after(wait_s):
                        await self._wake.wait()
            self._wake = trio.Event()
            late_before = self.buffer.late
            for video_id, comment in self.buffer.due(self.wall_ms()):
                for handler in list(self._handlers.get(video_id, ())):
                    handler(comment)
            if self.buffer.late != late_before:
                log.warning("bus: %d comment(s) arrived after a higher id was released", self.buffer.late - late_before)

    # -- joining and backfill ---------------------------------------------------------------

    async def _feed(self, video_id: str, ch: Channel[Comment], after_id: int) -> int:
        """Put the hot store's comments after ``after_id`` into the buffer; returns how
        many it did not have yet. Beyond ``backfill_max`` only the newest are kept (and the rooms
        are told about the gap)."""
        if self.recent is None:
            return 0
        page = 1000
        kept: deque[Comment] = deque(maxlen=self.backfill_max)
        total = 0
        cursor = after_id
        # Right after a failover the cluster may still refuse reads for a moment: a
        # backfill given up here would leave the room without what it missed, so it is
        # tried again, with back-off, for up to BACKFILL_ATTEMPTS reads.
        retry = Retry(RECONNECT)
        for attempt in range(BACKFILL_ATTEMPTS):
            try:
                while True:
                    got = await self.recent(video_id, cursor, page)
                    kept.extend(got)
                    total += len(got)
                    if len(got) < page:
                        break
                    cursor = got[-1].id
                break
            except READ_ERRORS as e:
                if attempt == BACKFILL_ATTEMPTS - 1:
                    log.warning("bus: could not read recent comments of %s: %s; giving up", video_id, e)
                    return 0
                log.info("bus: could not read recent comments of %s (%s); again", video_id, e)
                await retry.sleep()
        if self.buffer.channels.get(video_id) is not ch:
            return 0  # the room left meanwhile
        if total > len(kept) and kept:
            log.warning("bus: %s: %d comment(s) too many to backfill live; skipped", video_id, total - len(kept))
            gap = BusGap(video_id, kept[0].id, total - len(kept))
            for handler in list(self._handlers.get(video_id, ())):
                handler(gap)
        added = 0
        for c in kept:
            added += self.buffer.add(video_id, c.id, snowflake_ms(c.id), c)
        if added:
            self._wake.set()
        return added

    async def _backfill_all(self, videos: list[str], down_since_ms: int) -> None:
        for video_id in videos:
            ch = self.buffer.channels.get(video_id)
            if ch is None:
                continue
            n = await self._feed(video_id, ch, ch.read_from())
            self.backfilled += n
            removed: list[Removal] = []
            if self.removed_since is not None:
                try:
                    removed = await self.removed_since(video_id, down_since_ms - 1000)
                except REDIS_ERRORS as e:
                    log.warning("bus: could not read removals of %s: %s", video_id, e)
            for removal in removed:
                self.buffer.drop(video_id, removal.comment_id)
                for handler in list(self._handlers.get(video_id, ())):
                    handler(removal)
            if n or removed:
                log.info("bus: backfilled %s: %d comment(s), %d removal(s)", video_id, n, len(removed))


class _BusMetrics:
    """Gauges read at scrape time (nothing on the hot path)."""

    def __init__(self, metrics: Metrics, bus: RedisBus) -> None:
        from prometheus_client import Gauge

        reg = metrics.registry
        Gauge("livecomments_bus_connected", "1 while the Redis subscriber connection is up", registry=reg).set_function(
            lambda: 1.0 if bus.connected else 0.0
        )
        Gauge("livecomments_bus_reconnects", "Redis subscriber reconnections", registry=reg).set_function(
            lambda: float(bus.reconnects)
        )
        Gauge(
            "livecomments_bus_backfilled_comments", "Comments read back after resubscribing", registry=reg
        ).set_function(lambda: float(bus.backfilled))
        Gauge("livecomments_bus_channels", "Video channels subscribed", registry=reg).set_function(
            lambda: float(len(bus.buffer.channels))
        )
        Gauge("livecomments_bus_held_comments", "Comments held for in-order release", registry=reg).set_function(
            lambda: float(bus.buffer.held)
        )
        Gauge(
            "livecomments_bus_late_comments", "Comments that arrived after a higher id was released", registry=reg
        ).set_function(lambda: float(bus.buffer.late))
