"""Assembling a process: the embedded all-in-one server (ingest + rms on one port)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from backpressure.ratelimit import InMemoryRateLimiter
from ingest.moderation import ModerationService
from ingest.service import CommentService
from livecomments.app import create_app
from livecomments.auth import TokenIssuer, signing_key
from livecomments.bus import InProcessBus
from livecomments.config import Settings
from livecomments.handoff import AsgiHandoff
from livecomments.metrics import Metrics
from livecomments.moderation.pipeline import Automod, InProcessQueue, ModerationMetrics
from livecomments.services import Services
from livecomments.store.base import Store
from livecomments.store.moderation import SqliteModerationStore
from livecomments.store.sqlite import SqliteStore
from rms.frontdoor import FrontDoor
from rms.room import Rooms

log = logging.getLogger("livecomments")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (each viewer is a socket)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The configured comment store, open for the duration of the block."""
    if settings.store == "scylla":
        from livecomments.store.scylla import ScyllaStore
        from policy.shards import ShardingThresholds

        hot_v, hot_n = settings.shard_hot_comments_per_s, settings.shard_hot_viewers
        thresholds = ShardingThresholds(
            hot_velocity=hot_v, cool_velocity=hot_v / 2, hot_viewers=hot_n, cool_viewers=int(hot_n * 0.8)
        )
        async with ScyllaStore.open(
            [h.strip() for h in settings.scylla_hosts.split(",") if h.strip()],
            settings.scylla_keyspace,
            ttl_s=settings.comment_ttl_s,
            consistency=settings.scylla_consistency,
            bucket_s=settings.scylla_bucket_s,
            shards=settings.scylla_shards,
            thresholds=thresholds,
        ) as scylla:
            yield scylla
    else:
        path = os.path.join(settings.data_dir, "comments.sqlite3")
        async with SqliteStore.open(path, durable=settings.sqlite_synchronous == "full") as sqlite:
            yield sqlite


async def serve(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    """Run the all-in-one server until ``until`` returns, then drain and stop."""
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    issuer = TokenIssuer(signing_key(settings.jwt_secret, settings.data_dir))
    metrics = Metrics()
    mod_metrics = ModerationMetrics(metrics.registry)
    automod = Automod.from_settings(settings, mod_metrics)  # a bad rules file stops us here
    lsock = listen(settings.host, settings.port)
    if settings.port == 0:
        import attrs

        settings = attrs.evolve(settings, port=lsock.getsockname()[1])
    async with (
        open_store(settings) as store,
        SqliteModerationStore.open(os.path.join(settings.data_dir, "moderation.sqlite3")) as mod_store,
    ):
        bus = InProcessBus()
        limiter = InMemoryRateLimiter()
        rooms = Rooms(settings, store, bus, metrics)
        moderation = ModerationService(mod_store, worker_id=settings.worker_id)
        await moderation.load()
        mod_queue = InProcessQueue(settings.moderation_queue, mod_metrics)
        comments = CommentService(settings, store, bus, limiter, metrics, moderation=moderation, queue=mod_queue)
        automod.remover = comments
        svc = Services(
            settings=settings,
            issuer=issuer,
            metrics=metrics,
            store=store,
            limiter=limiter,
            comments=comments,
            moderation=moderation,
            rooms=rooms,
        )

        async def store_readable() -> None:
            await store.latest("readyz", 1)

        svc.ready_checks.append(store_readable)
        app = create_app(svc)
        handoff = AsgiHandoff(app)
        front = FrontDoor(settings, rooms, issuer, metrics, handoff, comments)
        async with trio.open_nursery() as root:
            await root.start(rooms.run)
            await root.start(automod.run, mod_queue, settings.moderation_workers)
            await handoff.start(root)
            await root.start(front.serve, [lsock])
            print(f"livecomments: serving {settings.url()}/watch/lobby", flush=True)
            await until()
            await drain(svc, front, handoff, settings.shutdown_grace_s)
            root.cancel_scope.cancel()
    print("livecomments: stopped", flush=True)


async def drain(svc: Services, front: FrontDoor, handoff: AsgiHandoff, grace_s: float) -> None:
    """Let a node's viewers go before it stops: no new connections, ``goaway`` to every
    viewer, keep-alive connections closed after their request, then up to ``grace_s`` for
    the viewers to leave."""
    log.info("draining: goaway to viewers, no new connections")
    svc.draining = front.draining = True
    front.stop_accepting()
    front.rooms.goaway()
    await handoff.terminate()
    with trio.move_on_after(grace_s):
        await front.rooms.wait_empty()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
