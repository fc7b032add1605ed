"""Assembling the processes of cluster mode: ``ingest``, ``rms`` and ``persist``.

The same parts as the all-in-one server (``node.serve``), with Redis in the middle:

- ``ingest`` (stateless, N of them): the Quart app's posting, moderation and sign-in
  routes on Hypercorn. Comments go to the Redis hot store (which publishes them), the
  rate limit is the shared Redis one, removals are published on the Redis bus.
- ``rms`` (stateful, N of them): the lean front door for event streams plus the Quart
  app's long-poll, history, snapshot and stats routes; rooms subscribe to their video's
  Redis channel, read recent comments from the hot store (history from the cold store),
  and report their viewer counts; modes are decided once for the cluster.
- ``persist``: drains the hot store's streams into the cold store.

The cold store is the SQLite file in ``--data-dir`` (shared by the processes of a local
cluster) or, with ``LIVECOMMENTS_STORE=scylla``, the CQL cluster. Guest sign-in is off
unless ``LIVECOMMENTS_GUEST_SIGNIN=true`` (the command defaults it to off).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from livecomments.config import Settings
from livecomments.model import Comment
from livecomments.node import drain, listen, wait_for_signal
from livecomments.redis.client import REDIS_ERRORS, Redis, open_redis
from livecomments.redis.keys import Keys
from livecomments.retry import Retry
from livecomments.store.base import Store, StoreUnavailable
from policy.backoff import Backoff

if TYPE_CHECKING:
    from livecomments.auth import TokenIssuer
    from livecomments.metrics import Metrics

log = logging.getLogger("livecomments.roles")

# What each role's command defaults differently from ``serve``.
CLUSTER_DEFAULTS: dict[str, Any] = {"guest_signin": False}
# Connecting to a CQL cluster that is not up yet: 0.5 s doubling up to 10 s. Not jittered:
# a handful of processes each try once per delay, too few to need spreading out.
CQL_CONNECT = Backoff(initial_s=0.5, max_s=10.0, jitter=0.0)


def quiet_client_logs() -> None:
    """coredis logs every retry at INFO; our own warnings say what matters."""
    logging.getLogger("coredis").setLevel(logging.WARNING)


def keys_for(settings: Settings) -> Keys:
    return Keys(settings.redis_prefix, settings.redis_shards)


def node_id(settings: Settings, role: str) -> str:
    return settings.node_id or f"{role}-{socket.gethostname()}-{os.getpid()}"


def hold_ms(settings: Settings) -> int:
    return settings.reorder_window_ms + settings.reorder_margin_ms


# -- the cold store --------------------------------------------------------------------------


class LazyStore:
    """A store that may not be reachable yet: calls raise ``StoreUnavailable`` until
    ``connect`` succeeded (a CQL cluster that is down when a process starts must not
    stop it from starting: the hot store carries on without it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inner: Store | None = None

    def _get(self) -> Store:
        if self.inner is None:
            raise StoreUnavailable(f"the {self.name} store is not connected yet")
        return self.inner

    async def append(self, comment: Comment) -> None:
        await self._get().append(comment)

    async def remove(self, video_id: str, comment_id: int) -> bool:
        return await self._get().remove(video_id, comment_id)

    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        return await self._get().get(video_id, comment_id)

    async def latest(self, video_id: str, limit: int, viewer_id: str | None = None) -> list[Comment]:
        return await self._get().latest(video_id, limit, viewer_id)

    async def after(self, video_id: str, after_id: int, limit: int, viewer_id: str | None = None) -> list[Comment]:
        return await self._get().after(video_id, after_id, limit, viewer_id)

    async def before(
        self, video_id: str, before_id: int | None, limit: int, viewer_id: str | None = None
    ) -> list[Comment]:
        return await self._get().before(video_id, before_id, limit, viewer_id)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()


@asynccontextmanager
async def open_cold_store(settings: Settings) -> AsyncIterator[Store]:
    """The SQLite file in the data dir, or (``store=scylla``) a CQL session that keeps
    trying to connect in the background."""
    if settings.store != "scylla":
        from livecomments.store.sqlite import SqliteStore

        path = os.path.join(settings.data_dir, "comments.sqlite3")
        async with SqliteStore.open(path, durable=settings.sqlite_synchronous == "full") as sqlite:
            yield sqlite
        return
    from livecomments.store.scylla import ScyllaStore
    from policy.shards import ShardingThresholds

    hosts = [h.strip() for h in settings.scylla_hosts.split(",") if h.strip()]
    lazy = LazyStore("CQL")
    # As the all-in-one server's store (node.open_store): the bucket size decides where an
    # id lives, so every process must use the configured one; the thresholds drive the
    # sharding switch of the process that writes (persist).
    hot_v, hot_n = settings.shard_hot_comments_per_s, settings.shard_hot_viewers
    thresholds = ShardingThresholds(
        hot_velocity=hot_v, cool_velocity=hot_v / 2, hot_viewers=hot_n, cool_viewers=int(hot_n * 0.8)
    )

    async def connect() -> None:
        retry = Retry(CQL_CONNECT)
        while True:
            store = ScyllaStore(
                hosts,
                settings.scylla_keyspace,
                ttl_s=settings.comment_ttl_s,
                consistency=settings.scylla_consistency,
                bucket_s=settings.scylla_bucket_s,
                shards=settings.scylla_shards,
                thresholds=thresholds,
            )
            try:
                await store.connect()
            except Exception as e:  # the driver raises several kinds; all mean "not yet"
                delay = retry.next_delay()
                log.warning("CQL store at %s not reachable (%s); retrying in %.1f s", settings.scylla_hosts, e, delay)
                await retry.sleep(delay)
                continue
            lazy.inner = store
            log.info("CQL store connected: %s/%s", settings.scylla_hosts, settings.scylla_keyspace)
            return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        try:
            yield lazy
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await lazy.aclose()


# -- pieces shared by ingest and rms -------------------------------------------------------------


@attrs.define
class Common:
    settings: Settings
    redis: Redis
    keys: Keys
    cold: Store
    issuer: TokenIssuer
    metrics: Metrics
    lsock: socket.socket


@asynccontextmanager
async def common(settings: Settings) -> AsyncIterator[Common]:
    from livecomments.auth import TokenIssuer, signing_key
    from livecomments.metrics import Metrics

    quiet_client_logs()
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    issuer = TokenIssuer(signing_key(settings.jwt_secret, settings.data_dir))
    lsock = listen(settings.host, settings.port)
    if settings.port == 0:
        settings = attrs.evolve(settings, port=lsock.getsockname()[1])
    async with open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) as redis, open_cold_store(
        settings
    ) as cold:
        yield Common(settings, redis, keys_for(settings), cold, issuer, Metrics(), lsock)


def redis_check(redis: Redis) -> Callable[[], Awaitable[None]]:
    async def redis_reachable() -> None:
        await redis.ping()

    return redis_reachable


def asgi(app: Any, settings: Settings) -> Any:
    """The app as Hypercorn should run it: behind ``proxy_hops`` trusted proxies, the
    client address comes from X-Forwarded-For."""
    if settings.proxy_hops > 0:
        from hypercorn.middleware import ProxyFixMiddleware

        return ProxyFixMiddleware(app, mode="legacy", trusted_hops=settings.proxy_hops)
    return app


class Connections:
    """Connections handed to Hypercorn that are still open (for a graceful stop)."""

    def __init__(self, handoff: Any) -> None:
        self.handoff = handoff
        self.open = 0
        self._idle = trio.Event()
        self._idle.set()

    async def serve(self, conn: socket.socket) -> None:
        self.open += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            await self.handoff(conn, b"")
        finally:
            self.open -= 1
            if self.open == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


async def accept_into(lsock: socket.socket, conns: Connections, nursery: trio.Nursery) -> None:
    """Hand every connection on ``lsock`` to Hypercorn (ingest has no lean path)."""
    while True:
        try:
            await trio.lowlevel.wait_readable(lsock)
        except (trio.ClosedResourceError, OSError, ValueError):
            return
        for _ in range(256):
            try:
                conn, _addr = lsock.accept()
            except BlockingIOError:
                break
            except OSError as e:
                if lsock.fileno() == -1:
                    return
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await trio.sleep(0.1)
                break
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(conns.serve, conn)
        await trio.lowlevel.checkpoint()


def close_listener(lsock: socket.socket) -> None:
    trio.lowlevel.notify_closing(lsock)
    lsock.close()


# -- ingest -----------------------------------------------------------------------------------


async def run_ingest(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    from ingest.moderation import ModerationService
    from ingest.service import CommentService
    from livecomments.app import create_app
    from livecomments.handoff import AsgiHandoff
    from livecomments.moderation.pipeline import ModerationMetrics
    from livecomments.redis.bus import RedisBus
    from livecomments.redis.hotstore import ClusterStore, HotStore
    from livecomments.redis.moderation import RedisModerationQueue, RedisModerationStore
    from livecomments.redis.ratelimit import RedisRateLimiter
    from livecomments.services import Services

    async with common(settings) as c:
        settings = c.settings
        mod_metrics = ModerationMetrics(c.metrics.registry)
        # Bans, slow mode and the log live in Redis, shared by every ingest process; each
        # keeps a read cache that follows changes. Accepted comments go to the moderation
        # streams, which `livecomments moderate` workers drain off the posting path.
        mod_store = RedisModerationStore(c.redis, c.keys)
        hot = HotStore(
            c.redis, c.keys, hot_size=settings.hot_size, ttl_s=settings.hot_ttl_s, window_ms=settings.reorder_window_ms
        )
        store = ClusterStore(hot, c.cold)
        bus = RedisBus(c.redis, c.keys, publish_comments=False)
        limiter = RedisRateLimiter(c.redis, c.keys)
        moderation = ModerationService(mod_store, worker_id=settings.worker_id)
        await moderation.load()
        mod_queue = RedisModerationQueue(c.redis, c.keys, mod_metrics, buffer=settings.moderation_queue)
        comments = CommentService(
            settings, store, bus, limiter, c.metrics, moderation=moderation, queue=mod_queue
        )
        svc = Services(
            settings=settings,
            issuer=c.issuer,
            metrics=c.metrics,
            store=store,
            limiter=limiter,
            comments=comments,
            moderation=moderation,
        )
        svc.ready_checks.append(redis_check(c.redis))
        handoff = AsgiHandoff(asgi(create_app(svc, ingest=True, rms=False), settings))
        conns = Connections(handoff)
        async with trio.open_nursery() as root:
            await root.start(mod_queue.run)
            root.start_soon(mod_store.watch, moderation.load)
            await handoff.start(root)
            root.start_soon(accept_into, c.lsock, conns, root)
            print(f"livecomments ingest: serving {settings.url()} (worker id {settings.worker_id})", flush=True)
            await until()
            log.info("ingest draining")
            svc.draining = True
            close_listener(c.lsock)
            await handoff.terminate()  # idle keep-alive connections close, requests finish
            with trio.move_on_after(settings.shutdown_grace_s):
                await conns.wait_idle()
            root.cancel_scope.cancel()
    print("livecomments ingest: stopped", flush=True)


# -- rms ----------------------------------------------------------------------------------------


def install_cluster_stats(app: Any, svc: Any, presence: Any, hot: Any) -> None:
    """``GET /v1/videos/{id}/stats`` with the cluster's numbers (replaces the local view)."""
    from quart import Response

    from livecomments.web import json_response
    from rms.params import check_video

    async def stats(video_id: str) -> Response:
        check_video(video_id)
        room = svc.rooms.rooms.get(video_id) if svc.rooms is not None else None
        now = trio.current_time()
        try:
            viewers = await presence.total(video_id)
            cps = await hot.comments_per_s(video_id)
            mode = await presence.mode(video_id)
        except REDIS_ERRORS:
            viewers = len(room.viewers) if room else 0
            cps = room.velocity.rate(now) if room else 0.0
            mode = room.mode if room else "push"
        return json_response(
            {"video_id": video_id, "viewers": int(viewers), "comments_per_s": round(float(cps), 3), "mode": mode}
        )

    if "rms.stats" not in app.view_functions:
        raise RuntimeError("the rms blueprint has no stats endpoint to replace")
    app.view_functions["rms.stats"] = stats


async def run_rms(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    from backpressure.ratelimit import InMemoryRateLimiter
    from livecomments.app import create_app
    from livecomments.handoff import AsgiHandoff
    from livecomments.redis.bus import RedisBus
    from livecomments.redis.hotstore import ClusterStore, HotStore
    from livecomments.redis.presence import Presence
    from livecomments.redis.snapshots import SnapshotPublisher
    from livecomments.services import Services
    from rms.frontdoor import FrontDoor
    from rms.room import Rooms

    async with common(settings) as c:
        settings = c.settings
        me = node_id(settings, "rms")
        hot = HotStore(
            c.redis, c.keys, hot_size=settings.hot_size, ttl_s=settings.hot_ttl_s, window_ms=settings.reorder_window_ms
        )
        rooms_box: list[Rooms] = []

        def on_gap(video_id: str, first_id: int, missed: int) -> None:
            room = rooms_box[0].rooms.get(video_id) if rooms_box else None
            if room is not None:
                room.backfill_gap(first_id, missed)

        recent_store = ClusterStore(hot, c.cold)
        bus = RedisBus(
            c.redis,
            c.keys,
            hold_ms=hold_ms(settings),
            recent=recent_store.recent_all,
            removed_since=hot.removed_since,
            backfill_max=settings.backfill_max,
            on_gap=on_gap,
            metrics=c.metrics,
        )
        store = ClusterStore(hot, c.cold, read_bound=bus.read_bound)
        rooms = Rooms(settings, store, bus, c.metrics)
        rooms_box.append(rooms)
        presence = Presence(
            c.redis,
            c.keys,
            me,
            ttl_s=settings.presence_ttl_s,
            interval_s=settings.presence_interval_s,
            min_dwell_s=settings.tier_min_dwell_s,
            metrics=c.metrics,
        )
        rooms.count_viewers = presence.count_viewers_hook(rooms)
        rooms.decide = presence.decide_hook()
        snapshots = SnapshotPublisher(c.redis, c.keys, me, interval_s=settings.snapshot_interval_s)
        rooms.snapshot_source = snapshots.fetch
        svc = Services(
            settings=settings,
            issuer=c.issuer,
            metrics=c.metrics,
            store=store,
            limiter=InMemoryRateLimiter(),
            rooms=rooms,
        )
        svc.ready_checks.append(redis_check(c.redis))
        app = create_app(svc, ingest=False, rms=True)
        install_cluster_stats(app, svc, presence, hot)
        handoff = AsgiHandoff(asgi(app, settings))
        front = FrontDoor(settings, rooms, c.issuer, c.metrics, handoff)
        async with trio.open_nursery() as root:
            await root.start(bus.run)
            await root.start(rooms.run)
            await root.start(presence.run, rooms)
            await root.start(snapshots.run, rooms)
            await handoff.start(root)
            await root.start(front.serve, [c.lsock])
            print(f"livecomments rms: serving {settings.url()} (node {me})", flush=True)
            await until()
            await drain(svc, front, handoff, settings.shutdown_grace_s)
            with trio.move_on_after(1):
                await presence.withdraw()
            root.cancel_scope.cancel()
    print("livecomments rms: stopped", flush=True)


# -- persist --------------------------------------------------------------------------------------


async def run_persist(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    from livecomments.persist import PersistWorker, ViewerFeed
    from livecomments.redis.presence import Presence

    quiet_client_logs()
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    keys = keys_for(settings)
    me = node_id(settings, "persist")
    async with open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) as redis, open_cold_store(
        settings
    ) as cold:
        viewers: ViewerFeed | None = None
        if settings.store == "scylla":
            # This process writes to Scylla, so its store makes the sharding decision: feed
            # it every written video's viewers over all rms nodes (the presence hashes).
            presence = Presence(redis, keys, me, ttl_s=settings.presence_ttl_s)

            def note_viewers(video_id: str, count: int) -> None:
                inner = cold.inner if isinstance(cold, LazyStore) else cold
                if inner is None:  # not connected yet: the feed primes the video again
                    raise StoreUnavailable("the CQL store is not connected yet")
                note = getattr(inner, "note_viewers", None)
                if note is not None:
                    note(video_id, count)

            viewers = ViewerFeed(presence.total, note_viewers, interval_s=settings.presence_interval_s)
        worker = PersistWorker(redis, keys, cold, consumer=me, batch=settings.persist_batch, viewers=viewers)
        async with trio.open_nursery() as root:
            root.start_soon(worker.run)
            target = settings.scylla_hosts if settings.store == "scylla" else os.path.join(settings.data_dir, "comments.sqlite3")
            print(
                f"livecomments persist: draining {', '.join(keys.streams())} into {settings.store} {target} (consumer {me})",
                flush=True,
            )
            await until()
            log.info("persist stopping: finishing the batch in hand")
            worker.stop()
            with trio.move_on_after(settings.shutdown_grace_s):
                await worker.stopped.wait()
            root.cancel_scope.cancel()
    print(
        f"livecomments persist: stopped (written {worker.stats.written}, removed {worker.stats.removed})",
        flush=True,
    )


# -- moderate -------------------------------------------------------------------------------------


async def run_moderate(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    """Automod workers of a cluster: drain the moderation streams (a consumer group, so
    several workers share them and a crashed worker's entries are claimed by another)
    and remove what the rules or the classifier flag, as a delete would."""
    from ingest.moderation import ModerationService
    from ingest.service import CommentService
    from livecomments.moderation.pipeline import Automod, ModerationMetrics
    from livecomments.redis.bus import RedisBus
    from livecomments.redis.hotstore import ClusterStore, HotStore
    from livecomments.redis.moderation import RedisModerationSource, RedisModerationStore
    from livecomments.redis.ratelimit import RedisRateLimiter

    quiet_client_logs()
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    keys = keys_for(settings)
    me = node_id(settings, "moderate")
    from livecomments.metrics import Metrics

    metrics = Metrics()
    async with open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) as redis, open_cold_store(
        settings
    ) as cold:
        hot = HotStore(redis, keys, hot_size=settings.hot_size, ttl_s=settings.hot_ttl_s, window_ms=settings.reorder_window_ms)
        mod_store = RedisModerationStore(redis, keys)
        moderation = ModerationService(mod_store, worker_id=settings.worker_id)
        await moderation.load()
        remover = CommentService(
            settings, ClusterStore(hot, cold), RedisBus(redis, keys, publish_comments=False), RedisRateLimiter(redis, keys),
            metrics, moderation=moderation,
        )
        automod = Automod.from_settings(settings, ModerationMetrics(metrics.registry))
        automod.remover = remover
        source = RedisModerationSource(redis, keys, automod, consumer=me)
        async with trio.open_nursery() as root:
            root.start_soon(mod_store.watch, moderation.load)
            root.start_soon(automod.watch_rules)
            await root.start(source.run)
            print(f"livecomments moderate: draining the moderation streams (consumer {me})", flush=True)
            await until()
            root.cancel_scope.cancel()
    print(f"livecomments moderate: stopped (handled {source.handled})", flush=True)
