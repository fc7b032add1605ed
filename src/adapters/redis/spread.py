"""A spread video's viewers per shard, summed over the rms nodes.

Clients weight their pick of a shard by these loads (``backpressure.spread.shard_weights``)
so that the shards opened last fill first. Every ``interval_s`` each rms node writes, for
each room of a video spread over more than one shard (or with viewers still on a shard
above 0 after the count shrank), its viewers per shard into the video's per-shard hash:
field ``node/shard``, value ``count:expires_ms``, written by the presence script (the same
format, expiry and sweeping as the per-video counts). ``loads`` sums the live fields of
each shard in one read-only script. A video that is not spread costs nothing here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from adapters.redis import scripts
from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys

if TYPE_CHECKING:
    from rms.room import Rooms

log = logging.getLogger("livecomments.spread")


class ShardLoads:
    def __init__(self, redis: Redis, keys: Keys, node_id: str, *, ttl_s: float = 5.0, interval_s: float = 1.0) -> None:
        self.keys = keys
        self.node_id = node_id
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self._reported: set[tuple[str, int]] = set()
        self._report = scripts.register(redis, "presence_report")
        self._loads = scripts.register(redis, "shard_loads")

    async def run(self, rooms: Rooms, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report this node's per-shard counts every ``interval_s`` until cancelled (then
        withdraw them)."""
        task_status.started()
        try:
            while True:
                await self.tick(rooms)
                await trio.sleep(self.interval_s)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.withdraw()

    async def tick(self, rooms: Rooms) -> None:
        counts: dict[tuple[str, int], int] = {}
        for video_id, room in list(rooms.rooms.items()):
            if room.shards > 1 or any(room.by_shard.keys() - {0}):
                for shard, n in room.by_shard.items():
                    counts[(video_id, shard)] = n
        for gone in self._reported - counts.keys():
            counts[gone] = 0
        for (video_id, shard), n in counts.items():
            try:
                await self._write(video_id, shard, n)
            except REDIS_ERRORS as e:
                log.debug("shard loads: Redis unavailable: %s", e)
                return

    async def withdraw(self) -> None:
        """Take this node's counts out at once (graceful stop)."""
        for video_id, shard in list(self._reported):
            try:
                await self._write(video_id, shard, 0)
            except REDIS_ERRORS:
                return

    async def _write(self, video_id: str, shard: int, n: int) -> None:
        await self._report(keys=[self.keys.shard_viewers(video_id)], args=[f"{self.node_id}/{shard}", n, self.ttl_ms, "0"])
        if n > 0:
            self._reported.add((video_id, shard))
        else:
            self._reported.discard((video_id, shard))

    async def loads(self, video_id: str, shards: int) -> list[int]:
        """The viewers of each of the video's ``shards`` shards, over every node."""
        return [int(n) for n in await self._loads(keys=[self.keys.shard_viewers(video_id)], args=[shards])]
