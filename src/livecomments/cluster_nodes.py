"""Assembling the processes of cluster mode: ``ingest``, ``rms`` and ``persist``.

The same parts as the all-in-one server (``node.serve``), with Redis in the middle:

- ``ingest`` (stateless, N of them): posts on the lean front door, the Quart app's
  moderation and sign-in routes on Hypercorn. A post is one Redis call: the shared rate
  limit and the append to the hot store (which publishes it and queues it for the
  ``moderate`` workers) in one script; removals are published on the Redis bus.
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

import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from adapters.redis.client import REDIS_ERRORS, Redis, open_redis
from adapters.redis.keys import Keys
from domain.identity import TokenIssuer
from domain.metrics import Metrics
from domain.ports import Bus, Store, StoreUnavailable
from domain.settings import Settings
from livecomments.serve import drain, listen, wait_for_signal
from livecomments.stores import LazyStore, open_store

if TYPE_CHECKING:
    from adapters.redis.dispatcher import DispatchSender
    from adapters.redis.hotstore import HotStore
    from adapters.redis.lean import ScriptPipe
    from adapters.redis.presence import Presence
    from adapters.redis.spread import ShardLoads
    from rms.room import Rooms
    from transport.services import VideoSpread, VideoStats

log = logging.getLogger("livecomments.cluster_nodes")

# What each role's command defaults differently from ``serve``.
CLUSTER_DEFAULTS: dict[str, Any] = {"guest_signin": False}


def quiet_client_logs() -> None:
    """coredis logs every retry at INFO; our own warnings say what matters."""
    logging.getLogger("coredis").setLevel(logging.WARNING)


def keys_for(settings: Settings) -> Keys:
    if settings.redis_shards == 1 and settings.redis_url.split("://", 1)[0].endswith("+cluster"):
        log.warning(
            "a Redis Cluster with LIVECOMMENTS_REDIS_SHARDS=1: every video and stream is on one slot, so"
            " on one master; set it (e.g. 16) to spread them"
        )
    return Keys(settings.redis_prefix, settings.redis_shards)


def node_id(settings: Settings, role: str) -> str:
    return settings.node_id or f"{role}-{socket.gethostname()}-{os.getpid()}"


def hold_ms(settings: Settings) -> int:
    return settings.reorder_window_ms + settings.reorder_margin_ms


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
    from domain.identity import signing_key

    quiet_client_logs()
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    issuer = TokenIssuer(signing_key(settings.jwt_secret, settings.data_dir))
    lsock = listen(settings.host, settings.port)
    if settings.port == 0:
        settings = attrs.evolve(settings, port=lsock.getsockname()[1])
    async with open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) as redis, open_store(settings, wait_for_cql=False) as cold:
        yield Common(settings, redis, keys_for(settings), cold, issuer, Metrics(), lsock)


def hot_store(redis: Redis, keys: Keys, settings: Settings, *, pipe: ScriptPipe | None = None) -> HotStore:
    """The hot store as configured. Appends put each comment on its video's moderation
    stream too (``moderate`` reads them), and go through ``pipe`` where there is one."""
    from adapters.redis.hotstore import HotStore
    from adapters.redis.moderation import MODERATION_STREAM_MAX

    return HotStore(
        redis,
        keys,
        hot_size=settings.hot_size,
        ttl_s=settings.hot_ttl_s,
        window_ms=settings.reorder_window_ms,
        wait_replicas=settings.redis_wait_replicas,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
        moderation_max=MODERATION_STREAM_MAX,
        outbox_max=settings.region_outbox_max,
        pipe=pipe,
    )


def dispatch_sender(settings: Settings, redis: Redis, keys: Keys) -> DispatchSender | None:
    """With ``bus=dispatcher``: what sends comments, removals and reactions to the rms nodes
    registered for their video (``adapters.redis.dispatcher``); else None (pub/sub)."""
    if settings.bus != "dispatcher":
        return None
    from adapters.redis.dispatcher import DispatchSender, hello_token
    from domain.identity import signing_key

    hello = hello_token(signing_key(settings.jwt_secret, settings.data_dir))
    return DispatchSender(redis, keys, hello, cache_s=settings.dispatch_cache_s)


def redis_check(redis: Redis) -> Callable[[], Awaitable[None]]:
    async def redis_reachable() -> None:
        await redis.ping()

    return redis_reachable




# -- ingest -----------------------------------------------------------------------------------


async def run_ingest(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    from adapters.redis.broker import RedisBroker
    from adapters.redis.bus import RedisBus
    from adapters.redis.client import is_cluster
    from adapters.redis.hotstore import ClusterStore
    from adapters.redis.lean import open_script_pipe
    from adapters.redis.moderation import RedisModerationStore
    from adapters.redis.ratelimit import RedisRateLimiter
    from ingest.moderation.automod import ModerationMetrics
    from ingest.moderation.bans import ModerationService
    from ingest.posting import PostPipeline
    from ingest.service import CommentService
    from transport.app import asgi, ingest_app
    from transport.frontdoor import FrontDoor
    from transport.handoff import AsgiHandoff
    from transport.services import IngestParts, Node

    async with common(settings) as c, open_script_pipe(settings.redis_url, timeout_s=settings.redis_timeout_s) as pipe:
        settings = c.settings
        mod_metrics = ModerationMetrics(c.metrics.registry)
        # Bans, slow mode and the log live in Redis, shared by every ingest process; each
        # keeps a read cache that follows changes. The append script puts each accepted
        # comment on its moderation stream too, which `livecomments moderate` workers
        # drain off the posting path.
        mod_store = RedisModerationStore(c.redis, c.keys)
        hot = hot_store(c.redis, c.keys, settings, pipe=pipe)
        store = ClusterStore(hot, c.cold)
        sender = dispatch_sender(settings, c.redis, c.keys)
        bus: Bus = sender if sender is not None else RedisBus(c.redis, c.keys)
        limiter = RedisRateLimiter(c.redis, c.keys)
        moderation = ModerationService(mod_store, worker_id=settings.worker_id)
        await moderation.load()
        # A post is one Redis call: its rate limits and the append in one script (two calls
        # on a Redis Cluster, where the user's and the video's keys live in other slots),
        # sent on a connection of its own without coredis' per-command cost (lean.py;
        # coredis for TLS, Cluster and Sentinel URLs).
        broker: Any = RedisBroker(hot, limiter, one_call=not is_cluster(c.redis), moderation_queued=mod_metrics.queued.inc)
        if sender is not None:  # bus=dispatcher: after the append, straight to the rms nodes
            from adapters.redis.dispatcher import DispatchingBroker

            broker = DispatchingBroker(broker, sender)
        comments = CommentService(
            settings, broker, store, bus, limiter, c.metrics, moderation=moderation, limited=broker
        )
        pipeline = PostPipeline(comments, c.issuer, settings.max_body)
        node = Node(settings, c.issuer, c.metrics, ready_checks=(redis_check(c.redis),))
        handoff = AsgiHandoff(asgi(ingest_app(node, IngestParts(pipeline, comments, moderation, limiter)), settings), settings)
        # Posts on the lean path, as in the all-in-one server; the rest through Hypercorn.
        front = FrontDoor(settings, c.issuer, c.metrics, handoff, pipeline=pipeline)
        async with trio.open_nursery() as root:
            if sender is not None:
                await root.start(sender.run)
            root.start_soon(mod_store.watch, moderation.load)
            await handoff.start(root)
            await root.start(front.serve, [c.lsock])
            print(f"livecomments ingest: serving {settings.url()} (worker id {settings.worker_id})", flush=True)
            await until()
            await drain(node, front, handoff, settings.shutdown_grace_s)
            root.cancel_scope.cancel()
    print("livecomments ingest: stopped", flush=True)


# -- rms ----------------------------------------------------------------------------------------


def cluster_spread(rooms: Rooms, presence: Presence, loads: ShardLoads) -> VideoSpread:
    """``GET /v1/videos/{id}/spread``: the count agreed in Redis and, when above 1, each
    shard's viewers over the cluster (when Redis cannot answer: this node's room's last
    agreed count, or 1, without loads; clients then pick uniformly)."""

    async def spread(video_id: str) -> dict[str, Any]:
        try:
            shards = await presence.shards(video_id)
            if shards == 1:
                return {"shards": 1}
            return {"shards": shards, "viewers": await loads.loads(video_id, shards)}
        except REDIS_ERRORS:
            room = rooms.rooms.get(video_id)
            return {"shards": room.shards if room else 1}

    return spread


def cluster_stats(rooms: Rooms, presence: Presence, hot: HotStore) -> VideoStats:
    """``GET /v1/videos/{id}/stats`` with the cluster's numbers (this node's own room
    when Redis cannot answer)."""

    async def stats(video_id: str) -> dict[str, Any]:
        room = rooms.rooms.get(video_id)
        now = trio.current_time()
        try:
            viewers = await presence.total(video_id)
            cps = await hot.comments_per_s(video_id)
            mode = await presence.mode(video_id)
        except REDIS_ERRORS:
            viewers = len(room.viewers) if room else 0
            cps = room.velocity.rate(now) if room else 0.0
            mode = room.mode if room else "push"
        return {"video_id": video_id, "viewers": int(viewers), "comments_per_s": round(float(cps), 3), "mode": mode}

    return stats


async def run_rms(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    from adapters.redis.bus import RedisBus
    from adapters.redis.hotstore import ClusterStore
    from adapters.redis.presence import Presence
    from adapters.redis.snapshots import SnapshotPublisher
    from adapters.redis.spread import ShardLoads
    from rms.room import Rooms, spread_thresholds
    from transport.app import asgi, rms_app
    from transport.frontdoor import FrontDoor
    from transport.handoff import AsgiHandoff
    from transport.services import Node, RmsParts

    async with common(settings) as c:
        settings = c.settings
        me = node_id(settings, "rms")
        hot = hot_store(c.redis, c.keys, settings)
        recent_store = ClusterStore(hot, c.cold)
        bus_args: dict[str, Any] = dict(
            hold_ms=hold_ms(settings),
            recent=recent_store.recent_all,
            removed_since=hot.removed_since,
            backfill_max=settings.backfill_max,
            metrics=c.metrics,
        )
        if settings.bus == "dispatcher":
            from adapters.redis.dispatcher import DispatcherBus, DispatcherMetrics, hello_token
            from domain.identity import signing_key

            dbus = DispatcherBus(
                c.redis, c.keys, host=settings.host, hello=hello_token(signing_key(settings.jwt_secret, settings.data_dir)),
                ttl_s=settings.presence_ttl_s, interval_s=settings.presence_interval_s, cache_s=settings.dispatch_cache_s,
                **bus_args,
            )  # fmt: skip
            DispatcherMetrics(c.metrics, dbus)
            bus: RedisBus = dbus
        else:
            bus = RedisBus(c.redis, c.keys, **bus_args)
        store = ClusterStore(hot, c.cold, read_bound=bus.read_bound)
        presence = Presence(
            c.redis,
            c.keys,
            me,
            ttl_s=settings.presence_ttl_s,
            interval_s=settings.presence_interval_s,
            min_dwell_s=settings.tier_min_dwell_s,
            metrics=c.metrics,
        )
        loads = ShardLoads(c.redis, c.keys, me, ttl_s=settings.presence_ttl_s, interval_s=settings.presence_interval_s)
        snapshots = SnapshotPublisher(c.redis, c.keys, me, interval_s=settings.snapshot_interval_s)
        rooms = Rooms(
            settings, store, bus, c.metrics, presence=presence, snapshots=snapshots, spread=spread_thresholds(settings)
        )
        node = Node(settings, c.issuer, c.metrics, ready_checks=(redis_check(c.redis),))
        app = rms_app(node, RmsParts(rooms, store, cluster_stats(rooms, presence, hot), cluster_spread(rooms, presence, loads)))
        handoff = AsgiHandoff(asgi(app, settings), settings)
        front = FrontDoor(settings, c.issuer, c.metrics, handoff, rooms=rooms)
        async with trio.open_nursery() as root:
            await root.start(bus.run)
            await root.start(rooms.run)
            await root.start(presence.run, rooms)
            await root.start(loads.run, rooms)
            await root.start(snapshots.run, rooms)
            await handoff.start(root)
            await root.start(front.serve, [c.lsock])
            print(f"livecomments rms: serving {settings.url()} (node {me})", flush=True)
            await until()
            await drain(node, front, handoff, settings.shutdown_grace_s)
            with trio.move_on_after(1):
                await presence.withdraw()
            root.cancel_scope.cancel()
    print("livecomments rms: stopped", flush=True)


# -- persist --------------------------------------------------------------------------------------


async def run_persist(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    from adapters.redis.persist import PersistWorker, ViewerFeed
    from adapters.redis.presence import Presence

    quiet_client_logs()
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    keys = keys_for(settings)
    me = node_id(settings, "persist")
    async with open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) as redis, open_store(settings, wait_for_cql=False) as cold:
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
        worker = PersistWorker(
            redis, keys, cold, consumer=me, batch=settings.persist_batch, linger_s=settings.stream_linger_ms / 1000,
            viewers=viewers,
        )  # fmt: skip
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
    from adapters.redis.broker import RedisBroker
    from adapters.redis.bus import RedisBus
    from adapters.redis.hotstore import ClusterStore
    from adapters.redis.moderation import RedisModerationSource, RedisModerationStore
    from adapters.redis.ratelimit import RedisRateLimiter
    from ingest.moderation.automod import Automod, ModerationMetrics
    from ingest.moderation.bans import ModerationService
    from ingest.service import CommentService

    quiet_client_logs()
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    keys = keys_for(settings)
    me = node_id(settings, "moderate")

    metrics = Metrics()
    async with open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s) as redis, open_store(settings, wait_for_cql=False) as cold:
        hot = hot_store(redis, keys, settings)
        mod_store = RedisModerationStore(redis, keys)
        moderation = ModerationService(mod_store, worker_id=settings.worker_id)
        await moderation.load()
        sender = dispatch_sender(settings, redis, keys)
        remover = CommentService(
            settings, RedisBroker(hot), ClusterStore(hot, cold), sender or RedisBus(redis, keys), RedisRateLimiter(redis, keys),
            metrics, moderation=moderation,
        )
        automod = Automod.loader(settings, ModerationMetrics(metrics.registry))(remover)
        source = RedisModerationSource(redis, keys, automod, consumer=me, linger_s=settings.stream_linger_ms / 1000)
        async with trio.open_nursery() as root:
            if sender is not None:
                await root.start(sender.run)
            root.start_soon(mod_store.watch, moderation.load)
            root.start_soon(automod.watch_rules)
            await root.start(source.run)
            print(f"livecomments moderate: draining the moderation streams (consumer {me})", flush=True)
            await until()
            root.cancel_scope.cancel()
    print(f"livecomments moderate: stopped (handled {source.handled})", flush=True)


# -- forward (regions) --------------------------------------------------------------------------


async def run_forward(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    """A region's forwarder: its outboxes to each remote region that has viewers of the
    video (``adapters.redis.regions``). ``LIVECOMMENTS_REGION_REMOTES``: name=redis_url,..."""
    from contextlib import AsyncExitStack

    from adapters.redis import scripts
    from adapters.redis.hotstore import HotStore
    from adapters.redis.lean import ReplyError, open_script_pipe
    from adapters.redis.presence import Presence
    from adapters.redis.regions import Forwarder, parse_remotes

    def load_append(pipe: ScriptPipe) -> Callable[[], Awaitable[None]]:
        """Connect the pipe and make sure the remote knows the append script (so that no
        pipelined call is answered NOSCRIPT and re-sent out of order): once per
        connection (a new one may be to a restarted Redis, which forgot its scripts)."""
        loaded_on = -1  # pipe.connections when the script was last loaded

        async def prepare() -> None:
            nonlocal loaded_on
            if pipe.connections == loaded_on:
                return
            reply = await pipe.command("SCRIPT", "LOAD", scripts.source("append"))
            if isinstance(reply, ReplyError):
                raise reply
            loaded_on = pipe.connections

        return prepare

    quiet_client_logs()
    remotes = parse_remotes(settings.region_remotes)
    if not remotes:
        raise ValueError("the forward role needs LIVECOMMENTS_REGION_REMOTES (name=redis_url,...)")
    keys = keys_for(settings)
    me = node_id(settings, "forward")
    async with AsyncExitStack() as stack:
        local = await stack.enter_async_context(open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s))
        forwarders: list[Forwarder] = []
        for name, url in remotes:
            remote = await stack.enter_async_context(open_redis(url, timeout_s=settings.redis_timeout_s))
            pipe = await stack.enter_async_context(open_script_pipe(url, timeout_s=settings.redis_timeout_s))
            # Forwarded ids are older than the remote's reorder window by the link's delay
            # (after a link loss, by the outage): accepted up to the hot TTL. No outbox and
            # no moderation stream there: moderated here, and never forwarded again.
            hot = HotStore(
                remote, keys, hot_size=settings.hot_size, ttl_s=settings.hot_ttl_s, window_ms=settings.hot_ttl_s * 1000,
                pipe=pipe,
            )  # fmt: skip
            presence = Presence(remote, keys, f"{me}-reader", ttl_s=settings.presence_ttl_s)
            forwarders.append(
                Forwarder(local, keys, name, hot, presence.total, consumer=me, prepare=load_append(pipe) if pipe else None)
            )
        async with trio.open_nursery() as root:
            for f in forwarders:
                await root.start(f.run)
            print(f"livecomments forward: outboxes to {', '.join(n for n, _ in remotes)} (consumer {me})", flush=True)
            await until()
            root.cancel_scope.cancel()
    print(f"livecomments forward: stopped (forwarded {sum(f.forwarded for f in forwarders)})", flush=True)
