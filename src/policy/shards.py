"""When a hot video's writes spread over CQL shards: the sans-IO sharding switch.

``HotVideos`` decides, per video, from the comments it is told about and the viewer
counts it is given; every call receives ``now`` (seconds, any monotonic clock), so it is
a pure state machine. ``adapters.scylla.store.ScyllaStore`` owns one and feeds it
its clock (docs/storage.md, "Hot videos").
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ShardingThresholds:
    """When a video's writes spread over shards (seed: 500 comments/s or 50K viewers).

    Up at ``hot_velocity`` or ``hot_viewers``; back down only when both are below their
    ``cool_*`` values and the video has been hot for ``min_hot_s``, so a video hovering
    around a threshold does not flap.
    """

    hot_velocity: float = 500.0
    cool_velocity: float = 250.0
    hot_viewers: int = 50_000
    cool_viewers: int = 40_000
    min_hot_s: float = 60.0
    window_s: float = 1.0
    # A viewer count older than this counts as 0 (whoever reported it stopped reporting).
    viewers_stale_s: float = 60.0

    def __attrs_post_init__(self) -> None:
        if self.cool_velocity > self.hot_velocity or self.cool_viewers > self.hot_viewers:
            raise ValueError("cool_* thresholds must not exceed hot_* thresholds")
        if self.window_s <= 0:
            raise ValueError("window_s must be positive")


@attrs.define
class _VideoLoad:
    window_start: float
    last_seen: float
    count: int = 0
    velocity: float = 0.0  # comments/s over the last completed window
    viewers: int = 0
    viewers_at: float = 0.0
    hot: bool = False
    since: float = 0.0  # when ``hot`` last changed


@attrs.define
class HotVideos:
    """Per-video hot/not decision from observed comments and viewer counts.

    Sans-IO: every call receives ``now`` (seconds, any monotonic clock). The decision is
    local to the process that writes: two writers may disagree for a moment, which is
    harmless because the partitions each one used are recorded and reads cover them all.
    """

    thresholds: ShardingThresholds = attrs.field(factory=ShardingThresholds)
    _videos: dict[str, _VideoLoad] = attrs.field(factory=dict, init=False)

    def observe_comment(self, video_id: str, now: float) -> bool:
        """Count one comment; return whether this comment's write should be sharded."""
        v = self._load(video_id, now)
        self._roll(v, now)
        v.count += 1
        v.last_seen = now
        t = self.thresholds
        # Do not wait for the window to close when it has already seen a hot window's worth.
        if v.count >= t.hot_velocity * t.window_s:
            v.velocity = max(v.velocity, v.count / t.window_s)
        self._decide(v, now)
        return v.hot

    def observe_viewers(self, video_id: str, viewers: int, now: float) -> bool:
        """Record the video's current total viewers (all nodes); return the decision."""
        v = self._load(video_id, now)
        self._roll(v, now)
        v.viewers, v.viewers_at = viewers, now
        v.last_seen = now
        self._decide(v, now)
        return v.hot

    def is_hot(self, video_id: str, now: float) -> bool:
        v = self._videos.get(video_id)
        if v is None:
            return False
        self._roll(v, now)
        self._decide(v, now)
        return v.hot

    def velocity(self, video_id: str) -> float:
        v = self._videos.get(video_id)
        return 0.0 if v is None else v.velocity

    def sweep(self, now: float, idle_s: float) -> int:
        """Forget cold videos not seen for ``idle_s``; returns how many were dropped."""
        stale = [k for k, v in self._videos.items() if not v.hot and now - v.last_seen >= idle_s]
        for k in stale:
            del self._videos[k]
        return len(stale)

    def __len__(self) -> int:
        return len(self._videos)

    def _load(self, video_id: str, now: float) -> _VideoLoad:
        v = self._videos.get(video_id)
        if v is None:
            v = self._videos[video_id] = _VideoLoad(window_start=now, last_seen=now, since=now)
        return v

    def _roll(self, v: _VideoLoad, now: float) -> None:
        elapsed = now - v.window_start
        if elapsed >= self.thresholds.window_s:
            # Idle time counts: a burst after a long silence is averaged over the silence too.
            v.velocity = v.count / elapsed
            v.count = 0
            v.window_start = now

    def _decide(self, v: _VideoLoad, now: float) -> None:
        t = self.thresholds
        viewers = v.viewers if now - v.viewers_at < t.viewers_stale_s else 0
        if not v.hot:
            if v.velocity >= t.hot_velocity or viewers >= t.hot_viewers:
                v.hot, v.since = True, now
        elif now - v.since >= t.min_hot_s and v.velocity < t.cool_velocity and viewers < t.cool_viewers:
            v.hot, v.since = False, now
