"""Viewer counts summed over every rms node, and one fan-out mode per video for all nodes.

Presence: once per ``interval_s`` each rms node writes, for each video it has a room for,
its own viewer count into the video's hash (field = node id, value = "count:expires_ms")
and reads back the sum of the fields that have not expired, in one script. A node that
dies stops refreshing its field, and its viewers stop counting ``ttl_s`` later; a node
whose room closed deletes its field at once. The sums feed the tier controller
(``total_viewers``, the ``domain.ports.Presence`` port), the stats endpoint and the metrics.

Modes: every node's tier controller sees the same totals, but their dwell timers and
their one-second ticks differ, so each decision is proposed to Redis: the script
changes the video's mode only if the proposer saw the current mode and the current mode
has been held for ``min_dwell_s`` (on Redis' clock), and then publishes a ``mode`` event
on the video's channel, which every node's room applies. A proposal that lost (stale
view, dwell not over) returns the mode in force, which the proposing room adopts.

Spread: the shard count of a hot video (``backpressure.spread``) is agreed the same way,
without an event: a node proposes a change from the count it saw; the script applies it
only if that view is current. Clients read the count (``GET /v1/videos/{id}/spread``), so
nothing needs telling; a node that opens a room reads the mode and count in force
(``agreed``) instead of starting from push and one shard.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import trio
from prometheus_client import Gauge

from adapters.redis import scripts
from adapters.redis.bus import encode
from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys
from backpressure.tiers import MODES, Mode
from domain.model import ModeChange

if TYPE_CHECKING:
    from domain.metrics import Metrics
    from rms.room import Rooms

log = logging.getLogger("livecomments.presence")

# The shard count key's lifetime. Nobody refreshes it: a count left over by a video whose
# rooms all closed is shrunk by the first room that opens for the video again (its
# controller sees the small audience), so this only bounds how long Redis keeps it.
SPREAD_TTL_MS = 86_400_000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Presence:
    """This node's share of the viewer counts, and the cluster's totals."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        node_id: str,
        *,
        ttl_s: float = 5.0,
        interval_s: float = 1.0,
        min_dwell_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = interval_s
        self.dwell_ms = int(min_dwell_s * 1000)
        self.totals: dict[str, int] = {}
        self._reported: set[str] = set()
        self._report = scripts.register(redis, "presence_report")
        self._propose = scripts.register(redis, "mode_propose")
        self._spread = scripts.register(redis, "spread_propose")
        self._gauge: Gauge | None = None
        if metrics is not None:
            self._gauge = Gauge(
                "livecomments_video_viewers",
                "Viewers of a video summed over every rms node (videos with a room on this node)",
                ["video_id"],
                registry=metrics.registry,
            )

    async def report(self, video_id: str, count: int) -> int:
        total = await self._report(
            keys=[self.keys.presence(video_id)], args=[self.node_id, count, self.ttl_ms, "0"]
        )
        return int(total)

    async def total(self, video_id: str) -> int:
        """The video's viewers over every node (read only)."""
        return int(await self._report(keys=[self.keys.presence(video_id)], args=[self.node_id, 0, self.ttl_ms, "1"]))

    async def mode(self, video_id: str) -> str:
        cur = await self.redis.get(self.keys.mode(video_id))
        return _text(cur).split(":", 1)[0] if cur else "push"

    async def shards(self, video_id: str) -> int:
        """The video's shard count (1 when it is not spread)."""
        raw = await self.redis.get(self.keys.spread(video_id))
        return max(1, int(_text(raw))) if raw else 1

    async def run(
        self, rooms: Rooms, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Report this node's counts every ``interval_s`` until cancelled (then withdraw)."""
        task_status.started()
        try:
            while True:
                await self.tick(rooms)
                await trio.sleep(self.interval_s)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.withdraw()

    async def tick(self, rooms: Rooms) -> None:
        counts = {video_id: len(room.viewers) for video_id, room in list(rooms.rooms.items())}
        gone = self._reported - counts.keys()
        for video_id in gone:
            counts[video_id] = 0
        for video_id, count in counts.items():
            try:
                total = await self.report(video_id, count)
            except REDIS_ERRORS as e:
                log.debug("presence: Redis unavailable: %s", e)
                return
            if count > 0:
                self._reported.add(video_id)
            else:
                self._reported.discard(video_id)
            if video_id in rooms.rooms:
                self.totals[video_id] = total
                if self._gauge is not None:
                    self._gauge.labels(video_id).set(total)
            else:
                self.totals.pop(video_id, None)
                if self._gauge is not None:
                    try:
                        self._gauge.remove(video_id)
                    except KeyError:
                        pass

    async def withdraw(self) -> None:
        """Take this node's counts out at once (graceful stop)."""
        for video_id in list(self._reported):
            try:
                await self.report(video_id, 0)
            except REDIS_ERRORS:
                return
        self._reported.clear()

    # -- the Presence port ------------------------------------------------------------------

    async def total_viewers(self, video_id: str, local: int) -> int:
        total = self.totals.get(video_id)
        if total is None:
            # A room this node has not reported yet: ask for the others' count rather than
            # decide from this node's viewers alone (a room that adopted the cluster's mode
            # would otherwise propose a step down on its first tick).
            try:
                total = await self.total(video_id)
            except REDIS_ERRORS:
                total = local
        return max(total, local)

    async def agree_mode(self, video_id: str, current: Mode, proposed: Mode) -> Mode | None:
        try:
            return cast(
                Mode,
                _text(
                    await self._propose(
                        keys=[self.keys.mode(video_id)],
                        args=[
                            current,
                            proposed,
                            self.dwell_ms,
                            self.keys.channel(video_id),
                            encode(ModeChange(video_id, proposed)),
                        ],
                    )
                ),
            )
        except REDIS_ERRORS as e:
            log.warning("mode decision for %s deferred: Redis unavailable: %s", video_id, e)
            return None

    async def agree_spread(self, video_id: str, current: int, proposed: int) -> int | None:
        try:
            return int(await self._spread(keys=[self.keys.spread(video_id)], args=[current, proposed, SPREAD_TTL_MS]))
        except REDIS_ERRORS as e:
            log.warning("shard count of %s deferred: Redis unavailable: %s", video_id, e)
            return None

    async def agreed(self, video_id: str) -> tuple[Mode, int] | None:
        try:
            mode, shards = await self.mode(video_id), await self.shards(video_id)
        except REDIS_ERRORS as e:
            log.debug("mode and shard count of %s not read: %s", video_id, e)
            return None
        return (mode if mode in MODES else "push", shards)
