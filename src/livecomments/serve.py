"""Assembling a process: the embedded all-in-one server (ingest + rms on one port)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

import trio

from adapters.memory import InProcessBus, LocalBroker
from adapters.sqlite.moderation import SqliteModerationStore
from domain.identity import TokenIssuer, signing_key
from domain.metrics import Metrics
from domain.settings import Settings
from ingest.moderation.automod import Automod, InProcessQueue, ModerationMetrics
from ingest.moderation.bans import ModerationService
from ingest.posting import PostPipeline
from ingest.service import CommentService
from livecomments.stores import open_store
from policy.ratelimit import InMemoryRateLimiter
from rms.room import Rooms
from transport.app import all_in_one_app, asgi
from transport.frontdoor import FrontDoor
from transport.handoff import AsgiHandoff
from transport.routes_rms import local_stats, one_shard
from transport.services import IngestParts, Node, RmsParts

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


async def serve(settings: Settings, *, until: Callable[[], Awaitable[None]] = wait_for_signal) -> None:
    """Run the all-in-one server until ``until`` returns, then drain and stop."""
    await trio.Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    issuer = TokenIssuer(signing_key(settings.jwt_secret, settings.data_dir))
    metrics = Metrics()
    mod_metrics = ModerationMetrics(metrics.registry)
    make_automod = Automod.loader(settings, mod_metrics)  # a bad rules file stops us here
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
        comments = CommentService(
            settings, LocalBroker(store, bus), store, bus, limiter, metrics, moderation=moderation, queue=mod_queue
        )
        pipeline = PostPipeline(comments, issuer, settings.max_body)
        automod = make_automod(comments)
        async def store_readable() -> None:
            await store.latest("readyz", 1)

        node = Node(settings, issuer, metrics, ready_checks=(store_readable,))
        app = all_in_one_app(
            node,
            IngestParts(pipeline, comments, moderation, limiter),
            RmsParts(rooms, store, local_stats(rooms), one_shard),
        )
        handoff = AsgiHandoff(asgi(app, settings), settings)  # behind proxy_hops proxies too
        front = FrontDoor(settings, issuer, metrics, handoff, rooms=rooms, pipeline=pipeline)
        async with trio.open_nursery() as root:
            await root.start(rooms.run)
            await root.start(automod.run, mod_queue, settings.moderation_workers)
            await handoff.start(root)
            await root.start(front.serve, [lsock])
            print(f"livecomments: serving {settings.url()}/watch/lobby", flush=True)
            await until()
            await drain(node, front, handoff, settings.shutdown_grace_s)
            root.cancel_scope.cancel()
    print("livecomments: stopped", flush=True)


async def drain(node: Node, front: FrontDoor, handoff: AsgiHandoff, grace_s: float) -> None:
    """Let a node's clients go before it stops: no new connections, ``goaway`` to every
    viewer, keep-alive connections closed after their request, then up to ``grace_s`` for
    the viewers to leave (a node without streams: for its connections to close)."""
    log.info("draining: goaway to viewers, no new connections")
    node.draining = front.draining = True
    front.stop_accepting()
    if front.rooms is not None:
        front.rooms.goaway()
    await handoff.terminate()
    with trio.move_on_after(grace_s):
        if front.rooms is not None:
            await front.rooms.wait_empty()
        else:
            await front.wait_idle()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
