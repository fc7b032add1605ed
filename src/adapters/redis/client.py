"""Opening a Redis client from a URL (the key names are ``adapters.redis.keys``).

URLs (``LIVECOMMENTS_REDIS_URL``):

- ``redis://[:password@]host:port[/db]``, ``rediss://...``, ``unix:///path.sock``: one
  server (``coredis.Redis``);
- ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): a Redis
  Cluster, discovered from the given startup nodes (``coredis.RedisCluster``);
- ``redis+sentinel://host:port[,host:port...]/service_name[/db]``: the primary of a
  Sentinel-managed service (``coredis.Sentinel(...).primary_for``), which follows
  failovers.

The bus is Redis 7's sharded pub/sub on every topology (``SPUBLISH`` in the scripts,
``SSUBSCRIBE`` here): ``shard_subscriber(redis)`` gives a subscriber for either client.
On a Redis Cluster it holds one connection per master and sends each channel's
``SSUBSCRIBE`` to the master of the channel's slot; on one server (or a Sentinel's
primary) it is one connection.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import coredis
import coredis.exceptions
from coredis.commands.constants import CommandName
from coredis.connection import TCPLocation
from coredis.patterns.pubsub import PubSub

# What a Redis outage looks like to a caller: the connection is gone or the server is
# busy loading its data after a restart. Scripts and commands raise one of these.
REDIS_ERRORS: tuple[type[BaseException], ...] = (coredis.exceptions.RedisError, OSError, TimeoutError)

Redis = coredis.Redis[Any] | coredis.RedisCluster[Any]

# Connections per cluster node: blocking commands (XREADGROUP BLOCK of the persist and
# moderate workers, one per stream of the node) and appends waiting for WAIT hold one
# each; past the bound a caller waits for a connection to come back.
CLUSTER_CONNECTIONS_PER_NODE = 64


def skip_tracing_checks() -> None:
    """coredis decides on every command (several times: pool wait, connection use, span)
    whether to trace it for OpenTelemetry, each time reading ``COREDIS_OTEL_ENABLED``
    from ``os.environ``: about 6% of an ingest node's CPU under load (py-spy,
    docs/performance.md). Unless that variable asks for tracing, tell coredis tracing is
    unavailable, which it then never checks again. The flag is private to coredis: if a
    release drops it, this does nothing and coredis behaves as before."""
    if os.environ.get("COREDIS_OTEL_ENABLED", "").lower() in ("1", "true", "t"):
        return
    try:
        telemetry = importlib.import_module("coredis._telemetry")
    except ImportError:
        return
    if isinstance(getattr(telemetry, "_otel_unavailable", None), bool):
        setattr(telemetry, "_otel_unavailable", True)  # noqa: B010 (a module the type checker reads as typed)


def is_cluster(redis: Redis) -> bool:
    """A Redis Cluster client: a script may touch the keys of one slot only."""
    return isinstance(redis, coredis.RedisCluster)


def _split_hosts(netloc: str) -> list[tuple[str, int]]:
    out = []
    for part in netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        out.append((host.strip("[]"), int(port or 6379)))
    return out


@asynccontextmanager
async def open_redis(url: str, *, timeout_s: float = 2.0) -> AsyncIterator[Redis]:
    """A connected client for ``url`` (see the module docstring), closed on exit."""
    if not url:
        raise ValueError("a Redis URL is needed (LIVECOMMENTS_REDIS_URL)")
    skip_tracing_checks()
    parts = urlsplit(url)
    kw: dict[str, Any] = {"connect_timeout": timeout_s, "stream_timeout": timeout_s}
    async with AsyncExitStack() as stack:
        client: Any
        if parts.scheme in ("redis+cluster", "rediss+cluster"):
            # Every node given is a startup node: the client discovers the cluster from
            # whichever answers (the first may be the one that is down).
            client = coredis.RedisCluster(
                startup_nodes=[TCPLocation(h, p) for h, p in _split_hosts(parts.netloc)],
                username=parts.username or None,
                password=parts.password,
                ssl=parts.scheme.startswith("rediss"),
                max_connections=CLUSTER_CONNECTIONS_PER_NODE,
                max_connections_per_node=True,
                **kw,
            )
        elif parts.scheme == "redis+sentinel":
            path = [p for p in parts.path.split("/") if p]
            if not path:
                raise ValueError("a Sentinel URL names its service: redis+sentinel://host:port/service")
            sentinel = coredis.Sentinel(
                [coredis.connection.TCPLocation(h, p) for h, p in _split_hosts(parts.netloc)],
                password=parts.password,
                **kw,
            )
            await stack.enter_async_context(sentinel)
            client = sentinel.primary_for(path[0], db=int(path[1]) if len(path) > 1 else 0)
        else:
            client = coredis.Redis.from_url(url, **kw)
        await stack.enter_async_context(client)
        yield client


def note_failure(redis: Redis, error: BaseException) -> None:
    """Tell a cluster client that talking to the cluster failed outside its own commands
    (the bus's subscriber): after two such reports it re-reads the slot map, which is
    how it learns of a failover. Reported as a cluster error whatever it was: the client
    only counts those (a subscriber's failures are timeouts, a MOVED it cannot see, or a
    KeyError for a master it has no connection to, as well as lost connections)."""
    if isinstance(redis, coredis.RedisCluster):
        cause = coredis.exceptions.RedisClusterError(f"subscriber failed: {error!r}")
        redis.connection_pool.cluster_layout.report_errors(None, cause)


class ShardChannels(PubSub[Any]):
    """coredis' single-server subscriber, subscribing to shard channels
    (``SSUBSCRIBE``/``SUNSUBSCRIBE``): what ``SPUBLISH`` reaches on a server that is not
    part of a cluster. Messages arrive as ``smessage`` and are reported as ``message``."""

    async def subscribe(self, *channels: Any, **channel_handlers: Any) -> None:
        if channel_handlers or not channels:
            raise TypeError("subscribe takes one or more channel names (no handlers)")
        new = dict.fromkeys(map(self._encode, channels))
        waiters = {channel: anyio.Event() for channel in new}
        for channel, event in waiters.items():
            self._subscription_waiters[channel].append(event)
        self._execute_command(CommandName.SSUBSCRIBE, *new)
        await self._ensure_subscribed(waiters)
        self.channels.update(new)

    async def unsubscribe(self, *channels: Any) -> None:
        waiters = {self._encode(c): anyio.Event() for c in (channels or self.channels)}
        for channel, event in waiters.items():
            self._unsubscription_waiters[channel].append(event)
        self._unsubscribe(*channels)
        await self._ensure_unsubscribed(waiters)

    def _unsubscribe(self, *channels: Any) -> None:
        self._execute_command(CommandName.SUNSUBSCRIBE, *channels)

    def _punsubscribe(self, *patterns: Any) -> None:
        """No pattern subscriptions here (nothing to send on clean-up)."""


def shard_subscriber(redis: Redis) -> Any:
    """A subscriber to shard channels for ``redis`` (an async context manager with
    ``subscribe``, ``unsubscribe`` and ``get_message``), without coredis' own retries:
    the caller reconnects (and backfills) when it fails. Subscription messages are
    delivered: a ``sunsubscribe`` the caller did not ask for means the channel's slot
    moved to another master (a manual failover or a resharding)."""
    if isinstance(redis, coredis.RedisCluster):
        return redis.sharded_pubsub(retry_policy=None)
    return ShardChannels(redis.connection_pool, retry_policy=None)
