"""Settings: the typed, frozen record every layer reads its own fields from.

Each field is a command-line flag and a ``LIVECOMMENTS_<NAME>`` variable; reading them
(flag over variable over default) is the entry points' job (``domain.settings``).
The process reads it once at start and passes it down; nothing reads the environment
later. ``check`` refuses combinations no field validator can see.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from policy.rate import parse_rate


def _setting(default: Any, help: str, *, kind: type = str) -> Any:
    return attrs.field(default=default, metadata={"help": help, "kind": kind})


def _rate_or_off(inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    if value.strip().lower() != "off":
        _rate(inst, attr, value)


def _rate(_inst: object, attr: attrs.Attribute[Any], value: str) -> None:
    try:
        parse_rate(value)
    except ValueError as e:
        raise ValueError(f"{attr.name}: {e}") from None


@attrs.frozen
class Settings:
    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8000, "port to listen on", kind=int)
    data_dir: str = _setting("./data", "directory for the SQLite store and the signing key")
    public_url: str = _setting("", "URL the page is reached at (printed by serve); default from host:port")
    jwt_secret: str = _setting("", "HS256 signing key; empty: a random key kept in the data dir")
    guest_signin: bool = _setting(True, "allow POST /v1/auth/guest", kind=bool)
    rate_limit: str = attrs.field(default="5/10s", validator=_rate, metadata={"help": "comments per user (N/period)", "kind": str})
    guest_rate_limit: str = attrs.field(default="20/m", validator=_rate, metadata={"help": "guest sign-ins per client address", "kind": str})
    guest_post_rate_limit: str = attrs.field(default="10/10s", validator=_rate_or_off, metadata={"help": "comments per client address from guest tokens (all its guests together; IPv6 by /64; off: no limit)", "kind": str})
    reaction_rate_limit: str = attrs.field(default="30/10s", validator=_rate, metadata={"help": "reactions per user (N/period)", "kind": str})
    ws_resume_rate: str = attrs.field(default="5/10s", validator=_rate, metadata={"help": "WebSocket resume messages per connection (N/period); more get an error rate_limited", "kind": str})
    moderation_rules: str = _setting("", "blocked words and patterns file for automod (docs/moderation.md); empty: none")
    moderation_queue: int = _setting(10000, "comments waiting for automod (all-in-one server; a cluster queues in Redis); when full, new ones skip moderation", kind=int)
    moderation_workers: int = _setting(2, "automod worker tasks in this process (0: queue only)", kind=int)
    moderation_new_account_min: float = _setting(10.0, "automod removes links from accounts first seen less than this many minutes ago (0: off)", kind=float)
    moderation_repeat: str = attrs.field(default="3/60s", validator=_rate_or_off, metadata={"help": "automod removes the same text from one user N times per period in a video (off: never)", "kind": str})
    moderation_flood: str = attrs.field(default="3/60s", validator=_rate_or_off, metadata={"help": "automod removes the same text from one user in N videos per period (off: never)", "kind": str})
    moderation_users_max: int = _setting(50000, "users whose recent texts automod remembers (memory bound)", kind=int)
    classifier: str = _setting("", "automod classifier to load, module:attr (docs/moderation.md); empty: none")
    classifier_timeout_s: float = _setting(2.0, "seconds a classifier may take per comment", kind=float)
    max_text: int = _setting(500, "longest comment text, in characters", kind=int)
    max_body: int = _setting(4096, "largest POST body, in bytes", kind=int)
    backlog: int = _setting(50, "comments a new viewer gets by default", kind=int)
    backlog_max: int = _setting(200, "largest ?backlog= a viewer may ask for", kind=int)
    history_max: int = _setting(200, "largest ?limit= for history pages", kind=int)
    ring_size: int = _setting(1000, "recent comments kept in memory per video for replay", kind=int)
    replay_max: int = _setting(1000, "most comments replayed after Last-Event-ID before a reset", kind=int)
    snapshot_size: int = _setting(200, "comments in snapshot.json", kind=int)
    heartbeat_s: float = _setting(15.0, "seconds between SSE heartbeats", kind=float)
    retry_ms: int = _setting(3000, "SSE retry: field, ms", kind=int)
    viewer_buffer: int = _setting(256 * 1024, "bytes queued per slow viewer before batches are dropped", kind=int)
    viewer_sndbuf: int = _setting(65536, "SO_SNDBUF of a lean-path stream socket, bytes (the kernel doubles it); 0: the kernel's autotuning", kind=int)
    stuck_s: float = _setting(30.0, "seconds without progress before a slow viewer (or any reader of an answer) is disconnected", kind=float)
    head_timeout_s: float = _setting(10.0, "seconds a client has to send a whole request head (a connection's first: from its start; a later one: from its first byte)", kind=float)
    idle_timeout_s: float = _setting(5.0, "seconds a keep-alive connection may wait for the first byte of its next request", kind=float)
    body_timeout_s: float = _setting(30.0, "seconds a client has to send a whole request body, from the end of its head", kind=float)
    flush_rate: float = _setting(20.0, "room flushes per second when busy", kind=float)
    flush_burst: int = _setting(4, "room flushes back to back when quiet", kind=int)
    room_linger_s: float = _setting(30.0, "seconds a room stays open after its last viewer leaves", kind=float)
    max_rooms: int = _setting(10000, "rooms (videos with viewers or lingering) per node; past it idle rooms are closed, oldest first, and when none is idle a new video is refused (503)", kind=int)
    longpoll_max_s: float = _setting(30.0, "longest long-poll wait", kind=float)
    shutdown_grace_s: float = _setting(5.0, "seconds to drain on SIGTERM before closing", kind=float)
    worker_id: int = _setting(0, "Snowflake worker id of this process (0-1023)", kind=int)
    store: str = _setting("sqlite", "comment store: sqlite | scylla")
    sqlite_synchronous: str = _setting("normal", "normal: a commit survives the process being killed; full: also an OS crash (fsync per commit)")
    scylla_hosts: str = _setting("127.0.0.1:9042", "CQL contact points, comma-separated")
    scylla_keyspace: str = _setting("livecomments", "CQL keyspace")
    scylla_consistency: str = _setting("LOCAL_QUORUM", "CQL consistency level")
    comment_ttl_s: int = _setting(14 * 86400, "comment time to live in the CQL store", kind=int)
    scylla_replication: int = _setting(1, "replication factor for a keyspace that migrate creates", kind=int)
    scylla_bucket_s: int = _setting(600, "seconds of comments per CQL partition bucket (fixed per keyspace)", kind=int)
    scylla_shards: int = _setting(8, "CQL partitions a hot video's writes spread over", kind=int)
    shard_hot_comments_per_s: float = _setting(500.0, "comment velocity at which writes spread over shards", kind=float)
    shard_hot_viewers: int = _setting(50000, "viewers at which writes spread over shards", kind=int)
    redis_url: str = _setting("", "Redis URL (cluster mode)")
    tier_sampled_at: int = _setting(50000, "viewers at which a video goes to sampled", kind=int)
    tier_sampled_below: int = _setting(40000, "viewers below which it returns to push", kind=int)
    tier_cdn_at: int = _setting(100000, "viewers at which a video goes to cdn", kind=int)
    tier_cdn_below: int = _setting(80000, "viewers below which it returns to sampled", kind=int)
    tier_min_dwell_s: float = _setting(10.0, "seconds in a mode before it may change again", kind=float)
    spread_viewers_per_node: int = _setting(20000, "viewers of one video per shard: a video gets one more shard (an rms node, usually) per this many viewers (cluster mode; 0: never spread)", kind=int)
    spread_max_shards: int = _setting(64, "most shards one video's viewers spread over (1-999; also the range of ?shard=)", kind=int)
    spread_shrink_after_s: float = _setting(60.0, "seconds a spread video's audience must stay small before new viewers go to fewer shards", kind=float)
    sample_target_per_s: float = _setting(20.0, "comments per second everyone sees in sampled mode", kind=float)
    snapshot_interval_s: float = _setting(1.0, "seconds between snapshots in cdn mode", kind=float)
    log_level: str = _setting("info", "debug | info | warning | error")
    # Cluster mode (livecomments ingest | rms | persist | cluster up; see docs/operations.md).
    bus: str = _setting("redis", "how comments reach the rms nodes: redis (sharded pub/sub) | dispatcher (nodes register their videos, ingest sends to them; docs/operations.md)")
    dispatch_cache_s: float = _setting(1.0, "seconds an ingest process reuses a video's dispatcher targets (bus=dispatcher)", kind=float)
    redis_prefix: str = _setting("lc", "prefix of every Redis key and channel (one per cluster sharing a Redis)")
    redis_shards: int = _setting(1, "hash-tag slots for video keys and comment streams (>1 spreads a Redis Cluster)", kind=int)
    redis_timeout_s: float = _setting(2.0, "Redis connect and command timeout, seconds", kind=float)
    redis_wait_replicas: int = _setting(0, "replicas that must confirm a comment (WAIT) before it is acknowledged (201); 0: answer once the master has it", kind=int)
    redis_wait_timeout_ms: int = _setting(100, "how long a post waits for redis_wait_replicas confirmations before answering 503", kind=int)
    hot_size: int = _setting(1000, "newest comments per video kept in the Redis hot store", kind=int)
    hot_ttl_s: int = _setting(86400, "seconds an idle video's hot data stays in Redis", kind=int)
    reorder_window_ms: int = _setting(250, "Redis accepts a comment only if its id's time is this close to Redis' clock", kind=int)
    reorder_margin_ms: int = _setting(100, "rms holds comments reorder_window_ms + this before releasing them in id order", kind=int)
    region_outbox_max: int = _setting(
        0,
        "multi-region: > 0 puts each accepted comment on its region's outbox stream too, capped at about this many entries"
        " (the oldest are trimmed: comments older than that are not forwarded); 0: no outbox (one region)",
        kind=int,
    )
    region_remotes: str = _setting("", "the forward role's other regions: name=redis_url, comma-separated")
    backfill_max: int = _setting(10000, "most comments a node replays live per video after a Redis outage", kind=int)
    presence_ttl_s: float = _setting(5.0, "seconds a node's viewer count stays counted without a refresh", kind=float)
    presence_interval_s: float = _setting(1.0, "seconds between viewer count reports", kind=float)
    node_id: str = _setting("", "name of this node in presence and consumer groups (default: host-pid)")
    persist_batch: int = _setting(500, "stream entries the persist worker writes per batch", kind=int)
    stream_linger_ms: int = _setting(
        100, "persist and moderate workers wait this long after a batch that was not full, so batches fill", kind=int
    )
    proxy_hops: int = _setting(0, "trusted reverse proxies in front (X-Forwarded-For is read through them)", kind=int)

    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


def check(s: Settings) -> None:
    for f in attrs.fields(Settings):
        value = getattr(s, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number")
    if not 0 <= s.port <= 65535:
        raise ValueError("port must be in 0..65535")
    positive = (
        "flush_rate",
        "heartbeat_s",
        "stuck_s",
        "head_timeout_s",
        "idle_timeout_s",
        "body_timeout_s",
        "sample_target_per_s",
        "snapshot_interval_s",
        "longpoll_max_s",
    )
    for name in positive:
        if getattr(s, name) <= 0:
            raise ValueError(f"{name} must be positive")
    for name in ("room_linger_s", "shutdown_grace_s", "tier_min_dwell_s", "spread_shrink_after_s"):
        if getattr(s, name) < 0:
            raise ValueError(f"{name} must not be negative")
    if s.spread_viewers_per_node < 0 or not 1 <= s.spread_max_shards <= 999:
        raise ValueError("spread_viewers_per_node must not be negative, spread_max_shards must be in 1..999")
    if not 0 <= s.worker_id <= 1023:
        raise ValueError("worker_id must be in 0..1023")
    if s.tier_sampled_below > s.tier_sampled_at or s.tier_cdn_below > s.tier_cdn_at:
        raise ValueError("tier *_below thresholds must not exceed their *_at thresholds")
    if s.sqlite_synchronous not in ("normal", "full"):
        raise ValueError("sqlite_synchronous must be normal or full")
    if s.bus not in ("redis", "dispatcher"):
        raise ValueError("bus must be redis or dispatcher")
    if not 0 < s.dispatch_cache_s <= 60:
        raise ValueError("dispatch_cache_s must be in (0, 60]")
    if s.bus == "dispatcher" and s.room_linger_s < s.dispatch_cache_s + 1:
        # A room opening under the dispatcher waits dispatch_cache_s (+0.2 s) for senders to
        # know it; lingering less, it would close before its first viewer joins.
        raise ValueError("with bus=dispatcher, room_linger_s must be at least dispatch_cache_s + 1")
    if s.store not in ("sqlite", "scylla"):
        raise ValueError("store must be sqlite or scylla")
    if s.moderation_queue < 1 or s.moderation_workers < 0 or s.moderation_users_max < 1:
        raise ValueError("moderation_queue and moderation_users_max must be positive, moderation_workers not negative")
    if s.persist_batch < 1 or s.stream_linger_ms < 0:
        raise ValueError("persist_batch must be positive and stream_linger_ms not negative")
    if s.viewer_sndbuf < 0:
        raise ValueError("viewer_sndbuf must not be negative (0: the kernel's autotuning)")
    if s.redis_wait_replicas < 0 or s.redis_wait_timeout_ms < 1:
        raise ValueError("redis_wait_replicas must not be negative and redis_wait_timeout_ms must be positive")
    if s.classifier and ":" not in s.classifier:
        raise ValueError("classifier must look like module:attr")
    for name in ("max_text", "max_body", "backlog_max", "history_max", "ring_size", "snapshot_size", "viewer_buffer", "max_rooms"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name} must be positive")
