"""Opening a Redis client from a URL, and the key layout every cluster process shares.

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

import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import coredis
import coredis.exceptions

# What a Redis outage looks like to a caller: the connection is gone or the server is
# busy loading its data after a restart. Scripts and commands raise one of these.
REDIS_ERRORS: tuple[type[BaseException], ...] = (coredis.exceptions.RedisError, OSError, TimeoutError)

Redis = Any  # coredis.Redis | coredis.RedisCluster (their common surface is what we use)


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


@attrs.frozen
class Keys:
    """Where things live in Redis. ``prefix`` separates clusters sharing one Redis.

    A video's keys carry the hash tag ``{n}``, n = crc32(video) mod ``shards``, and so
    does stream n of new comments: the append script touches the video's sorted set and
    its stream in one slot. ``shards`` > 1 spreads videos (and persist work) over the
    nodes of a Redis Cluster; every process of a cluster must use the same value.
    """

    prefix: str = "lc"
    shards: int = 1

    def slot(self, video_id: str) -> int:
        return zlib.crc32(video_id.encode()) % self.shards

    def _tag(self, video_id: str) -> str:
        return f"{self.prefix}:{{{self.slot(video_id)}}}"

    def recent(self, video_id: str) -> str:
        """Sorted set of the newest comments (all scores 0; members sort by id)."""
        return f"{self._tag(video_id)}:recent:{video_id}"

    def meta(self, video_id: str) -> str:
        """Hash: ``floor`` (every comment with a greater id is in ``recent``)."""
        return f"{self._tag(video_id)}:meta:{video_id}"

    def tombstones(self, video_id: str) -> str:
        """Sorted set of removed comment ids, scored by removal time (ms)."""
        return f"{self._tag(video_id)}:removed:{video_id}"

    def rate(self, video_id: str) -> str:
        """Hash: second -> comments accepted in it (comments_per_s)."""
        return f"{self._tag(video_id)}:rate:{video_id}"

    def presence(self, video_id: str) -> str:
        """Hash: rms node -> "viewers:expires_ms"."""
        return f"{self._tag(video_id)}:viewers:{video_id}"

    def mode(self, video_id: str) -> str:
        """String "mode:changed_ms": the video's fan-out mode, decided once for all nodes."""
        return f"{self._tag(video_id)}:mode:{video_id}"

    def snapshot_lease(self, video_id: str) -> str:
        """String: the rms node that writes the video's cdn snapshot."""
        return f"{self._tag(video_id)}:snaplease:{video_id}"

    def snapshot(self, video_id: str) -> str:
        """String "etag\nbody": the video's cdn snapshot, as every node serves it."""
        return f"{self._tag(video_id)}:snapshot:{video_id}"

    def stream(self, slot: int) -> str:
        """Stream of new comments and removals that ``persist`` drains to the cold store."""
        return f"{self.prefix}:{{{slot}}}:stream"

    def streams(self) -> list[str]:
        return [self.stream(n) for n in range(self.shards)]

    def stream_of(self, video_id: str) -> str:
        return self.stream(self.slot(video_id))

    def channel(self, video_id: str) -> str:
        return f"{self.prefix}:events:{video_id}"

    def channel_video(self, channel: str) -> str | None:
        head = f"{self.prefix}:events:"
        return channel[len(head) :] if channel.startswith(head) else None

    def limiter(self, key: str) -> str:
        return f"{self.prefix}:ratelimit:{key}"
