"""Prometheus metrics, in a registry per process (no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.viewers = Gauge("livecomments_viewers", "Viewers connected to this node", registry=r)
        self.rooms = Gauge("livecomments_rooms", "Rooms (videos with viewers) on this node", registry=r)
        self.rooms_evicted = Counter(
            "livecomments_rooms_evicted", "Idle rooms closed early to make space under max_rooms", registry=r
        )
        self.rooms_refused = Counter(
            "livecomments_rooms_refused", "Requests refused (503 too_many_rooms): max_rooms reached, no room idle", registry=r
        )
        self.long_polls = Gauge("livecomments_long_polls_held", "Long-poll requests held open, waiting for news", registry=r)
        self.posts = Counter("livecomments_posts", "POST comment results", ["status"], registry=r)
        self.posts_served = Counter(
            "livecomments_posts_served", "POST comment requests by the path that served them (lean | asgi)", ["path"],
            registry=r,
        )
        self.post_seconds = Histogram(
            "livecomments_post_seconds",
            "Time to accept a comment (validation to 201)",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.deliveries = Counter("livecomments_deliveries", "Comments delivered to viewers (comment x viewer)", registry=r)
        self.writes = Counter("livecomments_writes", "Batches written to viewers", registry=r)
        self.drops = Counter("livecomments_dropped_comments", "Comments dropped for slow viewers", registry=r)
        self.stuck_disconnects = Counter("livecomments_stuck_disconnects", "Viewers disconnected for making no progress", registry=r)
        self.overflow_disconnects = Counter(
            "livecomments_overflow_disconnects", "Viewers disconnected because even a control frame did not fit", registry=r
        )
        self.ws_reads_paused = Counter(
            "livecomments_ws_reads_paused",
            "Times a WebSocket client's input was left unread until the socket took our answers",
            registry=r,
        )
        self.ws_refused = Counter(
            "livecomments_ws_refused", "WebSocket client messages refused or closed on (by reason)", ["reason"], registry=r
        )
        self.connections = Counter("livecomments_connections", "Stream connections accepted", ["transport"], registry=r)
        self.removals = Counter("livecomments_removals", "Comments removed", registry=r)
        self.mode_changes = Counter("livecomments_mode_changes", "Fan-out mode changes", ["to"], registry=r)
        self.video_mode = Gauge("livecomments_video_mode", "Videos not in push mode (1 per video)", ["video_id", "mode"], registry=r)
        self.video_shards = Gauge(
            "livecomments_video_shards",
            "Shards a spread video's viewers are served over (videos with more than one and a room here)",
            ["video_id"],
            registry=r,
        )
        self.sampled_out_total = Counter("livecomments_sampled_out", "Comments sampled out (sent to their author only)", registry=r)
        self.tier_evaluations = Counter("livecomments_tier_evaluations", "Rounds of tier decisions", registry=r)
        self.snapshot_writes = Counter("livecomments_snapshot_writes", "Snapshots built", registry=r)
        self.snapshot_bytes = Gauge("livecomments_snapshot_bytes", "Size of the last snapshot built", registry=r)

    # The room and viewer call these; they stay cheap (no labels on the hot path).
    def viewer_joined(self) -> None:
        self.viewers.inc()

    def viewer_left(self) -> None:
        self.viewers.dec()

    def delivered(self, deliveries: int, writes: int) -> None:
        if deliveries:
            self.deliveries.inc(deliveries)
        if writes:
            self.writes.inc(writes)

    def dropped(self, comments: int) -> None:
        self.drops.inc(comments)

    def stuck(self) -> None:
        self.stuck_disconnects.inc()

    def overflow(self) -> None:
        self.overflow_disconnects.inc()

    def reads_paused(self) -> None:
        self.ws_reads_paused.inc()

    def mode_changed(self, video_id: str, old: str, new: str) -> None:
        self.mode_changes.labels(new).inc()
        if old != "push":
            try:
                self.video_mode.remove(video_id, old)
            except KeyError:
                pass
        if new != "push":  # only the few big videos get a series
            self.video_mode.labels(video_id, new).set(1)

    def spread_changed(self, video_id: str, old: int, new: int) -> None:
        if new > 1:  # only spread videos get a series
            self.video_shards.labels(video_id).set(new)
        elif old > 1:
            try:
                self.video_shards.remove(video_id)
            except KeyError:
                pass

    def sampled_out(self, n: int) -> None:
        if n:
            self.sampled_out_total.inc(n)

    def snapshot_written(self, size: int) -> None:
        self.snapshot_writes.inc()
        self.snapshot_bytes.set(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
