"""The cdn tier's snapshot: one writer per video for the whole cluster.

Every ``interval_s``, each rms node that has the video's room in ``cdn`` mode tries to
hold the video's lease (a Redis key naming the node, expiring after three intervals).
The holder writes the room's snapshot (body and ETag) to a Redis key; every node serves
``snapshot.json`` from that key, so the edge caches the same bytes whichever node it
asks, and the origin builds one snapshot per second per video however many nodes and
pollers there are. If the holder dies or its room leaves cdn mode, the lease expires and
another node takes over; until a snapshot is written, a node serves its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from adapters.redis import scripts
from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys

if TYPE_CHECKING:
    from rms.room import Rooms

log = logging.getLogger("livecomments.snapshots")

def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


class SnapshotPublisher:
    def __init__(self, redis: Redis, keys: Keys, node_id: str, *, interval_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.interval_s = interval_s
        self.lease_ms = int(interval_s * 3000)
        self.writes = 0
        self._write = scripts.register(redis, "snapshot_write")

    async def run(self, rooms: Rooms, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            for room in [r for r in list(rooms.rooms.values()) if r.mode == "cdn"]:
                body, etag = room.snapshot()
                try:
                    written = await self._write(
                        keys=[self.keys.snapshot_lease(room.video_id), self.keys.snapshot(room.video_id)],
                        args=[self.node_id, self.lease_ms, etag, body],
                    )
                except REDIS_ERRORS as e:
                    log.debug("snapshot of %s not published: %s", room.video_id, e)
                    continue
                if int(written):
                    self.writes += 1
            await trio.sleep(self.interval_s)

    async def fetch(self, video_id: str) -> tuple[bytes, str] | None:
        """The cluster's snapshot of the video, when one is published."""
        try:
            raw = await self.redis.get(self.keys.snapshot(video_id))
        except REDIS_ERRORS:
            return None
        if not raw:
            return None
        etag, _, body = _bytes(raw).partition(b"\n")
        return body, etag.decode()
