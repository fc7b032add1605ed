"""Every Redis key and channel name of cluster mode, built here and nowhere else.

``prefix`` (``LIVECOMMENTS_REDIS_PREFIX``, default ``lc``) separates clusters sharing one
Redis. A key's hash tag (the part in braces) decides its slot in a Redis Cluster, and a
Lua script may only touch keys of one slot, so:

- a video's keys carry the tag ``{n}``, n = crc32(video) mod ``shards``, and so do the
  n-th stream of new comments and the n-th moderation stream: the append script writes
  the video's sorted set and its stream in one slot. ``shards`` > 1 spreads videos (and
  persist and moderation work) over the nodes of a Redis Cluster; every process of a
  cluster must use the same value;
- the moderation state (bans, settings, log, version) shares the tag ``{mod}``: each
  change and its log entry are one script;
- the keys of one rate-limit call share the tag of its first key (``{user:U}``);
- a video's pub/sub channel carries the video's tag too: it is a shard channel
  (``SPUBLISH`` / ``SSUBSCRIBE``, Redis 7), which a Redis Cluster keeps on the master
  that owns the slot, and a script may only ``SPUBLISH`` to a channel of its own slot.

``cluster_slot(key)`` is Redis Cluster's slot of a key (CRC16 of its hash tag).

| key (prefix ``lc``, video ``v`` in slot ``n``) | type | what |
| --- | --- | --- |
| ``lc:{n}:recent:v`` | sorted set | the newest comments (hot store) |
| ``lc:{n}:meta:v`` | hash | ``floor``: every comment above it is in ``recent`` |
| ``lc:{n}:removed:v`` | sorted set | tombstones, scored by removal time (ms) |
| ``lc:{n}:rate:v`` | hash | second -> comments accepted in it |
| ``lc:{n}:viewers:v`` | hash | rms node -> ``viewers:expires_ms`` (presence) |
| ``lc:{n}:mode:v`` | string | ``mode:changed_ms``, the video's fan-out mode |
| ``lc:{n}:spread:v`` | string | the video's shard count (absent: 1) |
| ``lc:{n}:shardviewers:v`` | hash | ``node/shard`` -> ``viewers:expires_ms`` (spread videos) |
| ``lc:{n}:snaplease:v`` | string | the rms node that writes the cdn snapshot |
| ``lc:{n}:snapshot:v`` | string | ``etag\\nbody``, the cdn snapshot |
| ``lc:{n}:stream`` | stream | new comments and removals for ``persist`` |
| ``lc:{n}:moderate`` | stream | accepted comments for the ``moderate`` workers |
| ``lc:{mod}:bans`` | hash | ``scope\\nuser`` -> ban (JSON) |
| ``lc:{mod}:settings`` | hash | video -> slow mode seconds |
| ``lc:{mod}:log:<scope>`` | sorted set | moderation log entries (lexicographic) |
| ``lc:{mod}:version`` | string | bumped by every ban, unban and settings change |
| ``lc:ratelimit:{first}:<key>`` | sorted set | event times of one rate-limit key |
| channel ``lc:{n}:events:v`` | shard pub/sub | the video's bus (comments, removals, modes) |
"""

from __future__ import annotations

import zlib

import attrs


def cluster_slot(key: str) -> int:
    """The Redis Cluster slot of ``key``: CRC16 (XMODEM) of its hash tag (the first
    non-empty ``{...}``, else the whole key) mod 16384."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key.encode():
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc % 16384


@attrs.frozen
class Keys:
    """Where things live in Redis (see the module docstring)."""

    prefix: str = "lc"
    shards: int = 1

    def slot(self, video_id: str) -> int:
        return zlib.crc32(video_id.encode()) % self.shards

    def _tag(self, video_id: str) -> str:
        return f"{self.prefix}:{{{self.slot(video_id)}}}"

    # -- one video's keys (tag: its slot) ------------------------------------------------

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

    def spread(self, video_id: str) -> str:
        """String: over how many shards the video's viewers spread (absent: 1)."""
        return f"{self._tag(video_id)}:spread:{video_id}"

    def shard_viewers(self, video_id: str) -> str:
        """Hash: "rms node/shard" -> "viewers:expires_ms", for spread videos only."""
        return f"{self._tag(video_id)}:shardviewers:{video_id}"

    def snapshot_lease(self, video_id: str) -> str:
        """String: the rms node that writes the video's cdn snapshot."""
        return f"{self._tag(video_id)}:snaplease:{video_id}"

    def snapshot(self, video_id: str) -> str:
        """String "etag\\nbody": the video's cdn snapshot, as every node serves it."""
        return f"{self._tag(video_id)}:snapshot:{video_id}"

    # -- streams (tag: the slot they serve) -----------------------------------------------

    def stream(self, slot: int) -> str:
        """Stream of new comments and removals that ``persist`` drains to the cold store."""
        return f"{self.prefix}:{{{slot}}}:stream"

    def streams(self) -> list[str]:
        return [self.stream(n) for n in range(self.shards)]

    def stream_of(self, video_id: str) -> str:
        return self.stream(self.slot(video_id))

    def outbox(self, slot: int) -> str:
        """Capped stream of comments accepted in this region, for the ``forward`` role to
        send to other regions (one consumer group per remote region)."""
        return f"{self.prefix}:{{{slot}}}:outbox"

    def outboxes(self) -> list[str]:
        return [self.outbox(n) for n in range(self.shards)]

    def outbox_of(self, video_id: str) -> str:
        return self.outbox(self.slot(video_id))

    def forwarded(self, region: str) -> str:
        """Hash: what the ``forward`` role sent to ``region`` (comments, bytes, skipped)."""
        return f"{self.prefix}:region:forwarded:{region}"

    def moderation_stream(self, slot: int) -> str:
        """Capped stream of accepted comments that the ``moderate`` workers drain."""
        return f"{self.prefix}:{{{slot}}}:moderate"

    def moderation_streams(self) -> list[str]:
        return [self.moderation_stream(n) for n in range(self.shards)]

    def moderation_stream_of(self, video_id: str) -> str:
        return self.moderation_stream(self.slot(video_id))

    # -- moderation state (tag: {mod}) ------------------------------------------------------

    def _mod(self, name: str) -> str:
        return f"{self.prefix}:{{mod}}:{name}"

    def bans(self) -> str:
        """Hash: ``scope \\n user_id`` -> the ban as JSON."""
        return self._mod("bans")

    def video_settings(self) -> str:
        """Hash: video id -> slow_mode_s (absent when 0)."""
        return self._mod("settings")

    def moderation_log(self, scope: str) -> str:
        """Sorted set (scores 0) of ``<19-digit entry id>:<json>`` members of one scope."""
        return self._mod("log:" + scope)

    def moderation_version(self) -> str:
        """Counter bumped by every ban, unban and settings change."""
        return self._mod("version")

    # -- rate limits (tag: the first key of a call) ------------------------------------------

    def limiter(self, group: str, key: str) -> str:
        """Sorted set of one rate-limit key's event times. ``group`` is the first key of the
        call (``user:U`` for a post), so the keys checked together share a slot."""
        return f"{self.prefix}:ratelimit:{{{group}}}:{key}"

    # -- pub/sub channels (shard channels: the video's tag) ------------------------------------

    def dispatch(self, video_id: str) -> str:
        """Sorted set of rms node addresses (``host:port`` of their delivery port) that have
        viewers of the video, scored by the ms their registration expires
        (``LIVECOMMENTS_BUS=dispatcher``, ``adapters.redis.dispatcher``)."""
        return f"{self._tag(video_id)}:dispatch:{video_id}"

    def channel(self, video_id: str) -> str:
        """The video's shard channel (``SPUBLISH``/``SSUBSCRIBE``), in the video's slot."""
        return f"{self._tag(video_id)}:events:{video_id}"

    def channel_video(self, channel: str) -> str | None:
        head = f"{self.prefix}:{{"
        if not channel.startswith(head):
            return None
        tag, sep, rest = channel[len(head) :].partition("}:events:")
        return rest if sep and tag.isdigit() else None
