"""The dispatcher bus (``LIVECOMMENTS_BUS=dispatcher``): LinkedIn's alternative to pub/sub.

Instead of subscribing to a video's Redis channel, an rms node *registers* "viewers of
video X are here" in Redis, and ingest sends each comment straight to the registered
nodes over TCP. Redis keeps the registry and, as with pub/sub, the hot store (the
history and the persist stream); it no longer carries the fan-out.

The registry. ``Keys.dispatch(video)`` is a sorted set of the node's delivery address
(``host:port``) scored by the wall-clock ms its registration expires. A node adds itself
when a room opens (``subscribe``), renews every ``interval_s`` (expiry ``ttl_s`` ahead:
the presence settings), and removes itself when the room closes. A node that dies stops
renewing and drops out after ``ttl_s``.

The sender (``DispatchSender``, in ingest and moderate processes). After the hot store
accepted a comment (``DispatchingBroker``), and for removals and reactions
(``publish``), it asks where to send: the registry, through a cache of ``cache_s`` per
video (bounded at ``CACHE_MAX`` videos, the oldest evicted). The cache merges what it
read with what it knew: a node stays a target until the expiry it last showed passed, so
losing the registry (a Redis restart without persistence, a flush) does not stop
deliveries to nodes that renew within ``ttl_s``. Each target node has a ``_Link``: one
TCP connection, a bounded queue (``LINK_QUEUE_MAX`` lines; when full the newest is
dropped and counted: the node's catch-up brings it), and a writer task that sends what
queued as one write. A failed write is retried on a new connection ``SEND_ATTEMPTS``
times, then the batch is dropped and counted.

The wire: lines. The first is ``LCD1 <token>`` where the token is an HMAC of the
cluster's signing key (``hello_token``): a process without the JWT secret cannot inject
comments. Each further line is one bus event as the pub/sub bus encodes it
(``adapters.redis.bus.encode``); a line longer than ``MAX_LINE`` closes the connection.

The receiver (``DispatcherBus``, in rms nodes). Delivered comments go into the same
reorder buffer as pub/sub's, held ``hold_ms`` and released in id order to the same room
handlers. Convergence when deliveries are missed:

- joining: a node's registration reaches senders' caches up to ``cache_s`` later, so a
  newly opened channel is *gated*: ``subscribe`` ignores deliveries for it until
  ``cache_s`` + a slack has passed, then reads the hot store after the channel's cursor
  (all that was accepted until then) and returns; the buffer takes over. Nothing of the
  video is released before that read, so the join cannot interleave out of order, and
  the room's ring is current before its first viewer joins. The price: opening a room
  (a video's first viewer on this node) takes ``cache_s`` + 0.2 s longer than with
  pub/sub; viewers joining an open room do not wait;
- a send that failed ``SEND_ATTEMPTS`` times, a full link queue, a sender that started
  with an empty cache after the registry was lost: every ``interval_s`` the node reads the
  hot store after each channel's last released id (``catch-up``). What it brings is
  delivered; if a higher id was already released, it is delivered late (counted in
  ``livecomments_bus_late_comments``), as pub/sub does after a partial loss;
- mode changes stay on the presence script (``SPUBLISH`` of the ``mode`` event), which
  nobody subscribes to here: the catch-up tick reads the video's mode key and hands a
  ``ModeChange`` to the rooms when it changed (up to ``interval_s`` later than pub/sub);
- removals and reactions travel as comments do, without a catch-up: a removal whose
  sends all failed reaches live viewers of that node only when they resume (the store
  applies tombstones to every read). Documented in docs/operations.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio
from coredis import PureToken

from adapters.redis.bus import READ_ERRORS, RedisBus, decode, encode
from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys
from domain.errors import Unavailable
from domain.ids import lowest_id_at, snowflake_ms
from domain.model import Comment, ModeChange, Removal
from domain.ports import BusEvent, Handler

if TYPE_CHECKING:
    from domain.metrics import Metrics

log = logging.getLogger("adapters.dispatcher")

HELLO = b"LCD1 "
MAX_LINE = 64 * 1024  # one encoded event (a comment is at most a few KiB)
READ_SIZE = 65536
CACHE_MAX = 10_000  # videos whose targets a sender remembers
LINK_QUEUE_MAX = 10_000  # lines waiting for one node
LINK_IDLE_S = 30.0  # a link with nothing to send this long is closed (its task ends)
SEND_ATTEMPTS = 2  # a batch is written at most this many times (a new connection each)
SEND_TIMEOUT_S = 1.0
GATE_SLACK_S = 0.2  # added to cache_s before a new channel's first hot-store read


def hello_token(signing_key: str) -> bytes:
    """The shared secret's proof on the delivery port (never the key itself)."""
    return hmac.new(signing_key.encode(), b"livecomments-dispatch", hashlib.sha256).hexdigest().encode()


def advertised_host(host: str) -> str:
    """The address other processes reach this node at (a wildcard listens everywhere)."""
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostbyname(socket.gethostname())
    return host


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _video_of(event: BusEvent) -> str:
    return event.video_id


# -- the sender (ingest, moderate) ------------------------------------------------------------------


class _Link:
    """One rms node: a bounded queue of lines and the connection a writer task drains it on."""

    def __init__(self, address: str, hello: bytes, sender: DispatchSender) -> None:
        self.address = address
        self.hello = hello
        self.sender = sender
        self.queue: deque[bytes] = deque()
        self.wake = trio.Event()
        self.stream: trio.SocketStream | None = None
        self.closed = False
        self.failing = False

    def put(self, line: bytes) -> None:
        if len(self.queue) >= LINK_QUEUE_MAX:
            self.sender.dropped += 1  # the node's catch-up reads it from the hot store
            return
        self.queue.append(line)
        self.wake.set()

    async def run(self) -> None:
        try:
            while True:
                if not self.queue:
                    self.wake = trio.Event()
                    with trio.move_on_after(LINK_IDLE_S) as idle:
                        await self.wake.wait()
                    if idle.cancelled_caught and not self.queue:
                        return
                    continue
                batch = b"".join(self.queue)
                n = len(self.queue)
                self.queue.clear()
                await self._send(batch, n)
        finally:
            self.closed = True
            self.sender.links.pop(self.address, None)
            if self.stream is not None:
                with trio.CancelScope(shield=True):
                    await self.stream.aclose()

    async def _send(self, batch: bytes, n: int) -> None:
        for attempt in range(SEND_ATTEMPTS):
            try:
                with trio.fail_after(SEND_TIMEOUT_S):
                    if self.stream is None:
                        host, _, port = self.address.rpartition(":")
                        self.stream = await trio.open_tcp_stream(host, int(port))
                        await self.stream.send_all(HELLO + self.hello + b"\n")
                    await self.stream.send_all(batch)
                self.sender.sent += n
                self.failing = False
                return
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, ValueError) as e:
                if self.stream is not None:
                    await self.stream.aclose()
                    self.stream = None
                if attempt + 1 == SEND_ATTEMPTS:
                    # Bounded: the batch is given up; the node's catch-up reads it. Logged
                    # once per failing spell (a dead node's registration lasts ttl_s).
                    self.sender.dropped += n
                    if not self.failing:
                        log.warning("dispatcher: event(s) to %s dropped: %s", self.address, e)
                    self.failing = True


class DispatchSender:
    """Where a video's events go, and the links that take them there. ``run`` owns the
    links' tasks. Also the ``Bus`` of ingest and moderate processes (``publish`` only)."""

    def __init__(
        self, redis: Redis, keys: Keys, hello: bytes, *, cache_s: float = 1.0, cache_max: int = CACHE_MAX,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.keys = keys
        self.hello = hello
        self.cache_s = cache_s
        self.cache_max = cache_max
        self.wall_ms = wall_ms
        # video -> (read again at, {address: expires at ms}); insertion order = age.
        self.cache: dict[str, tuple[float, dict[str, float]]] = {}
        self.links: dict[str, _Link] = {}
        self.sent = 0
        self.dropped = 0
        self.lookups = 0
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def targets(self, video_id: str) -> list[str]:
        now = trio.current_time()
        hit = self.cache.get(video_id)
        known: dict[str, float] = hit[1] if hit is not None else {}
        if hit is None or hit[0] <= now:
            self.lookups += 1
            try:
                rows = await self.redis.zrange(
                    self.keys.dispatch(video_id), self.wall_ms(), "+inf", sortby=PureToken.BYSCORE, withscores=True
                )
            except REDIS_ERRORS as e:
                # Send where we last knew; nodes catch up from the hot store.
                log.warning("dispatcher: registry of %s unreadable: %s", video_id, e)
                rows = ()
            merged = dict(known)
            for member, score in rows:
                address = _text(member)
                merged[address] = max(float(score), merged.get(address, -math.inf))
            self.cache.pop(video_id, None)
            if len(self.cache) >= self.cache_max:
                self.cache.pop(next(iter(self.cache)))  # the oldest read: bounded
            self.cache[video_id] = (now + self.cache_s, merged)
            known = merged
        wall = self.wall_ms()
        return [a for a, expires in known.items() if expires > wall]

    async def send(self, video_id: str, event: BusEvent) -> None:
        addresses = await self.targets(video_id)
        if not addresses:
            return
        line = encode(event).encode() + b"\n"
        for address in addresses:
            self._link(address).put(line)

    def _link(self, address: str) -> _Link:
        link = self.links.get(address)
        if link is None or link.closed:
            link = self.links[address] = _Link(address, self.hello, self)
            if self._nursery is None:
                raise Unavailable("the dispatcher is not running")
            self._nursery.start_soon(link.run)
        return link

    # -- the Bus protocol (publishing side only) ----------------------------------------------------

    async def publish(self, video_id: str, event: BusEvent) -> None:
        await self.send(video_id, event)

    async def subscribe(self, video_id: str, handler: Handler) -> None:
        raise NotImplementedError("ingest does not subscribe")

    async def unsubscribe(self, video_id: str, handler: Handler) -> None:
        raise NotImplementedError("ingest does not subscribe")


class DispatchingBroker:
    """A broker (``Broker`` and ``LimitedBroker``) that, after the inner broker kept a
    comment, sends it to the video's registered rms nodes."""

    def __init__(self, inner: Any, sender: DispatchSender) -> None:
        self.inner = inner
        self.sender = sender

    async def publish(self, comment: Comment) -> int:
        at: int = await self.inner.publish(comment)
        await self.sender.send(comment.video_id, comment)
        return at

    async def publish_within(self, comment: Comment, limits: Sequence[tuple[str, Any]]) -> Any:
        decision = await self.inner.publish_within(comment, limits)
        if decision.allowed:
            await self.sender.send(comment.video_id, comment)
        return decision

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# -- the receiver (rms) ----------------------------------------------------------------------------


class DispatcherBus(RedisBus):
    """The ``Bus`` of an rms node under the dispatcher: the pub/sub bus' reorder buffer,
    joining and backfill, fed by deliveries on a port of its own instead of a subscriber.
    ``run`` owns the port, the release loop and the tick (renew, catch-up, mode)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        host: str,
        hello: bytes,
        ttl_s: float = 5.0,
        interval_s: float = 1.0,
        cache_s: float = 1.0,
        port: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(redis, keys, **kwargs)
        self.host = host
        self.port = port
        self.hello = HELLO + hello
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.cache_s = cache_s
        self.address = ""
        self.gated: dict[str, trio.Event] = {}  # channels opening: not yet read from the hot store
        self.modes: dict[str, str] = {}
        self.delivered = 0
        self.caught_up = 0  # comments the catch-up found that deliveries had not brought
        self.registrations_lost = 0
        self.rejected = 0  # connections refused (bad hello, oversized line)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        port = listeners[0].socket.getsockname()[1]
        self.address = f"{advertised_host(self.host)}:{port}"
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._release_loop)
            nursery.start_soon(trio.serve_listeners, self._serve, listeners)
            nursery.start_soon(self._tick_loop)
            self.connected = True
            self._up.set()
            log.info("dispatcher: delivery port %s", self.address)
            task_status.started()

    # -- the Bus protocol -----------------------------------------------------------------------

    async def subscribe(self, video_id: str, handler: Handler) -> None:
        handlers = self._handlers.get(video_id)
        if handlers is not None:
            handlers.append(handler)
            return
        cursor = lowest_id_at(self.wall_ms() - self.buffer.hold_ms - 1000)
        ch = self.buffer.open(video_id, cursor)
        self._handlers[video_id] = [handler]
        gate = self.gated[video_id] = trio.Event()
        await self._register(video_id)
        # Every sender's cache knows this node after cache_s: until then deliveries are
        # ignored, then the hot store gives all that was accepted. Awaited, so the room's
        # ring is current before its first viewer joins (a room sends new entries to every
        # viewer, whatever the viewer's resume position).
        await trio.sleep(self.cache_s + GATE_SLACK_S)
        if self.buffer.channels.get(video_id) is ch:
            await self._feed(video_id, ch, ch.cursor)
        if self.gated.get(video_id) is gate:
            del self.gated[video_id]

    async def unsubscribe(self, video_id: str, handler: Handler) -> None:
        handlers = self._handlers.get(video_id)
        if handlers is None or handler not in handlers:
            return
        handlers.remove(handler)
        if handlers:
            return
        del self._handlers[video_id]
        self.buffer.close(video_id)
        self.gated.pop(video_id, None)
        self.modes.pop(video_id, None)
        try:
            with trio.move_on_after(self.interval_s):
                await self.redis.zrem(self.keys.dispatch(video_id), [self.address])
        except REDIS_ERRORS:
            pass  # it expires after ttl_s

    # -- registry -------------------------------------------------------------------------------

    async def _register(self, video_id: str) -> None:
        key = self.keys.dispatch(video_id)
        try:
            added = await self.redis.zadd(key, {self.address: self.wall_ms() + int(self.ttl_s * 1000)})
            await self.redis.pexpire(key, int(self.ttl_s * 2000))
        except REDIS_ERRORS as e:
            log.warning("dispatcher: could not register %s: %s", video_id, e)
            return
        if added and video_id not in self.gated:
            self.registrations_lost += 1  # renewed, yet new: the registry lost it (flush, restart)

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(self.interval_s)
            for video_id in list(self._handlers):
                ch = self.buffer.channels.get(video_id)
                if ch is None:
                    continue
                await self._register(video_id)
                if video_id not in self.gated:
                    self.caught_up += await self._feed(video_id, ch, ch.read_from())
                await self._check_mode(video_id)

    async def _check_mode(self, video_id: str) -> None:
        try:
            raw = await self.redis.get(self.keys.mode(video_id))
        except READ_ERRORS:
            return
        if raw is None:
            return
        mode = _text(raw).split(":", 1)[0]
        if self.modes.get(video_id) == mode:
            return
        first = video_id not in self.modes
        self.modes[video_id] = mode
        if first:
            return  # the room read the agreed mode when it opened (adopt_agreed)
        for handler in list(self._handlers.get(video_id, ())):
            handler(ModeChange(video_id, mode))

    # -- deliveries -----------------------------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        authed = False
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, OSError):
                    return
                if not data:
                    return
                buf += data
                start = 0
                while (end := buf.find(b"\n", start)) >= 0:
                    line = bytes(buf[start:end])
                    start = end + 1
                    if not authed:
                        if not hmac.compare_digest(line, self.hello):
                            self.rejected += 1
                            return
                        authed = True
                        continue
                    event = decode(line)
                    if event is not None:
                        self.deliver(event)
                del buf[:start]
                if len(buf) > MAX_LINE:
                    self.rejected += 1
                    return

    def deliver(self, event: BusEvent) -> None:
        video_id = _video_of(event)
        handlers = self._handlers.get(video_id)
        if handlers is None:
            return
        self.delivered += 1
        if isinstance(event, Comment):
            if video_id in self.gated:
                return  # the gate's hot-store read brings it, in order
            if self.buffer.add(video_id, event.id, snowflake_ms(event.id), event):
                self._wake.set()
            return
        if isinstance(event, Removal):
            self.buffer.drop(video_id, event.comment_id)
        for handler in list(handlers):
            handler(event)


class DispatcherMetrics:
    """Gauges read at scrape time (the bus' own are registered by ``RedisBus``)."""

    def __init__(self, metrics: Metrics, bus: DispatcherBus) -> None:
        from prometheus_client import Gauge

        reg = metrics.registry
        gauges: tuple[tuple[str, str, Callable[[], int]], ...] = (
            ("delivered", "Events delivered to this node by the dispatcher", lambda: bus.delivered),
            ("caught_up", "Comments the dispatcher catch-up read that deliveries had not brought", lambda: bus.caught_up),
            ("registrations_lost", "Registrations found missing from the registry and renewed", lambda: bus.registrations_lost),
            ("rejected", "Delivery connections refused (bad hello or oversized line)", lambda: bus.rejected),
        )
        for name, doc, fn in gauges:
            Gauge(f"livecomments_dispatcher_{name}", doc, registry=reg).set_function(_as_float(fn))


def _as_float(fn: Callable[[], int]) -> Callable[[], float]:
    return lambda: float(fn())
