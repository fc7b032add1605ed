"""Opening a Redis client from a URL (the key names are ``adapters.redis.keys``).

URLs (``LIVECOMMENTS_REDIS_URL``):

- ``redis://[:password@]host:port[/db]``, ``rediss://...``, ``unix:///path.sock``: one
  server (``coredis.Redis``);
- ``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``): a Redis
  Cluster, discovered from the given startup nodes (``coredis.RedisCluster``);
- ``redis+sentinel://host:port[,host:port...]/service_name[/db]``: the primary of a
  Sentinel-managed service (``coredis.Sentinel(...).primary_for``), which follows
  failovers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import coredis
import coredis.exceptions

# What a Redis outage looks like to a caller: the connection is gone or the server is
# busy loading its data after a restart. Scripts and commands raise one of these.
REDIS_ERRORS: tuple[type[BaseException], ...] = (coredis.exceptions.RedisError, OSError, TimeoutError)

Redis = coredis.Redis[Any] | coredis.RedisCluster[Any]


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
            base = parts.scheme.split("+")[0]
            first = _split_hosts(parts.netloc)[0]
            auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
            client = coredis.RedisCluster.from_url(f"{base}://{auth}{first[0]}:{first[1]}", **kw)
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
