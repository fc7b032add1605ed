"""Write locally, read globally: forwarding a region's comments to the regions that watch them.

Presence (viewer counts per video and rms node, ``presence.py``) is written only in its
own region's Redis: viewers joining and leaving never cross a region boundary. A
comment is rare by comparison, so it is the comment that goes looking: with
``LIVECOMMENTS_REGION_OUTBOX_MAX`` > 0 the append script (``lua/append.lua``) also puts
each accepted comment on its region's outbox (a capped stream per hash slot,
``Keys.outbox``), in the same atomic step that makes it readable and publishes it. The
``forward`` role drains the outbox with one consumer group per remote region
(``Forwarder``): for each batch it reads that region's presence of the batch's videos
(one read per video, over the inter-region link), and appends the comments of videos
with viewers there into that region's hot store, with their ids: each video's in id
order, one append (one round trip) after another, the videos of a batch side by side. That
region's rms nodes then get them through their own bus, like their local comments.

- Idempotent: the append script answers "already there" for a known id, so a batch
  re-sent after a failure (the remote wrote it, the ack was lost) adds nothing.
- No loops: the forwarder's remote appends go through a ``HotStore`` without an outbox,
  so a forwarded comment is never forwarded again.
- Older ids: a forwarded comment arrives the link's delay (or, after a link loss, the
  outage) after its id's time, beyond the remote's reorder window; the forwarder's
  remote ``HotStore`` accepts ids up to ``accept_ms`` old (the hot TTL). The remote's rms
  nodes hold comments ``REORDER_WINDOW_MS + REORDER_MARGIN_MS`` (350 ms) before
  releasing them in id order, so a comment that arrives within that after its id's time
  (the link's one-way delay plus a batch) is ordered with the others; one arriving
  later (catching up after a link loss) is delivered at once, and counted in
  ``livecomments_bus_late_comments`` if that region released a higher id of the video
  meanwhile (only if the video also had comments from elsewhere during the outage).
- Link loss: a failed presence read or append raises, nothing of the batch is
  acknowledged, and ``GroupConsumer`` retries with jittered back-off, re-reading its
  pending entries first: the remote catches up in order when the link returns.
  Bounded: the outbox is capped (``MAXLEN ~``); an outage longer than the cap's worth of
  comments loses the oldest for forwarding (they stay acknowledged, stored and shown in
  their own region). Entries are acknowledged (``XACK``) but not deleted, since other
  regions' groups read the same outbox: the cap is what trims it.
- Removals (a delete or automod in this region, ``lua/remove.lua`` with the outbox) go
  on the same outbox and are applied, after the batch's appends, in every remote region
  that has the comment (forwarded while it had viewers), and published on its bus there.
- What was sent is counted per remote region in the local hash ``Keys.forwarded``:
  ``comments``, ``bytes`` (records), ``skipped`` (comments of videos without viewers
  there), ``too_old``, ``removed``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from adapters.redis.bus import encode
from adapters.redis.client import Redis
from adapters.redis.hotstore import HotStore, LateComment, record_json
from adapters.redis.keys import Keys
from adapters.redis.streams import RETRIED, GroupConsumer, text
from domain.model import Comment, Removal

log = logging.getLogger("livecomments.regions")

ViewersOf = Callable[[str], Awaitable[int]]


def parse_remotes(spec: str) -> list[tuple[str, str]]:
    """``"b=redis://h:p,c=redis://h:q"`` -> [(name, url), ...]."""
    out: list[tuple[str, str]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, url = part.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise ValueError(f"region remote {part!r}: want name=redis_url")
        out.append((name.strip(), url.strip()))
    return out


class Forwarder(GroupConsumer):
    """Drains the local outboxes for one remote region (its own consumer group)."""

    store_name = "the remote region"

    def __init__(
        self,
        local: Redis,
        keys: Keys,
        remote_name: str,
        remote_hot: HotStore,
        remote_viewers: ViewersOf,
        *,
        consumer: str,
        prepare: Callable[[], Awaitable[None]] | None = None,
        batch: int = 256,
        block_ms: int = 1000,
        max_backoff_s: float = 2.0,
    ) -> None:
        super().__init__(
            local, f"region:{remote_name}", consumer, batch=batch, block_ms=block_ms, max_backoff_s=max_backoff_s
        )
        self.name = f"forward to {remote_name}"
        self.keys = keys
        self.remote_name = remote_name
        self.remote_hot = remote_hot
        self.remote_redis = remote_hot.redis
        self.remote_viewers = remote_viewers
        # With ``prepare`` (connect and load the append script on the remote's lean pipe,
        # ``remote_hot.pipe``), a video's appends are pipelined: each is queued on the one
        # connection before the next is started, so they reach the remote in id order
        # and a batch costs one round trip per video instead of one per comment.
        # Without it (coredis: TLS, Cluster, Sentinel URLs) they go one after another.
        self.prepare = prepare
        self.forwarded = 0
        self.skipped = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for stream in self.keys.outboxes():
                nursery.start_soon(self.drain_forever, stream)
            task_status.started()

    async def handle(self, stream: str, entries: list[Any]) -> None:
        by_video: dict[str, list[Comment]] = defaultdict(list)
        removals: dict[str, list[int]] = defaultdict(list)
        ids: list[str] = []
        for e in entries:
            ids.append(text(e.identifier))
            fields = {text(k): text(v) for k, v in dict(e.field_values or {}).items()}
            try:
                if fields.get("k") == "r":
                    removals[fields["v"]].append(int(fields["id"]))
                    continue
                comment = Comment.from_record(json.loads(fields["r"]))
            except (KeyError, ValueError, TypeError):
                continue  # unreadable (or trimmed while pending): nothing to send
            by_video[comment.video_id].append(comment)
        counts = {"sent": 0, "bytes": 0, "skipped": 0, "too_old": 0, "removed": 0}
        failed: list[BaseException] = []

        async def one(video_id: str, comments: list[Comment]) -> None:
            """A video's comments, in id order, one append after another (each a round trip)."""
            try:
                # Read globally: the remote region's viewers of this video, now.
                if await self.remote_viewers(video_id) <= 0:
                    counts["skipped"] += len(comments)
                    return
                ordered = sorted(comments, key=lambda c: c.id)
                if self.prepare is None:
                    for comment in ordered:
                        await append(comment)
                    return
                await self.prepare()
                async with trio.open_nursery() as nursery:
                    for comment in ordered:
                        await nursery.start(queued, comment)
            except RETRIED as e:
                failed.append(e)

        async def append(comment: Comment) -> None:
            try:
                if await self.remote_hot.append(comment):
                    counts["sent"] += 1
                    counts["bytes"] += len(record_json(comment).encode())
            except LateComment:
                counts["too_old"] += 1  # older than the hot TTL: the remote would not keep it

        async def queued(comment: Comment, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            # started() returns without a checkpoint, and the lean pipe queues the call on
            # its open connection before its first one: queued in the order started.
            task_status.started()
            try:
                await append(comment)
            except RETRIED as e:
                failed.append(e)

        async def remove(video_id: str, comment_ids: list[int]) -> None:
            """Removals go wherever the comment is (forwarded while that region had
            viewers), whatever its viewers now; a region without it gets no tombstone."""
            try:
                for comment_id in comment_ids:
                    found = await self.remote_hot.get(video_id, comment_id)
                    if found is not None and await self.remote_hot.remove(video_id, comment_id):
                        await self.remote_redis.spublish(
                            self.keys.channel(video_id), encode(Removal(video_id, comment_id, found.author.id, found.shadow))
                        )
                        counts["removed"] += 1
            except RETRIED as e:
                failed.append(e)

        # Videos side by side (their orders are independent), each video's comments in turn.
        async with trio.open_nursery() as nursery:
            for video_id, comments in by_video.items():
                nursery.start_soon(one, video_id, comments)
        if removals and not failed:  # after the appends: a comment and its removal in one batch
            async with trio.open_nursery() as nursery:
                for video_id, comment_ids in removals.items():
                    nursery.start_soon(remove, video_id, comment_ids)
        if failed:
            # The link (or the remote Redis) failed: nothing of the batch is acknowledged;
            # GroupConsumer backs off and re-reads the pending entries (what was appended
            # already is "already there" the next time).
            raise failed[0]
        sent, nbytes, skipped, too_old = counts["sent"], counts["bytes"], counts["skipped"], counts["too_old"]
        await self._count(sent, nbytes, skipped, too_old, counts["removed"])
        await self.ack(stream, ids)

    async def _count(self, sent: int, nbytes: int, skipped: int, too_old: int, removed: int) -> None:
        self.forwarded += sent
        self.skipped += skipped
        async with self.redis.pipeline(transaction=False) as pipe:
            key = self.keys.forwarded(self.remote_name)
            pipe.hincrby(key, "comments", sent)
            pipe.hincrby(key, "bytes", nbytes)
            pipe.hincrby(key, "skipped", skipped)
            pipe.hincrby(key, "too_old", too_old)
            pipe.hincrby(key, "removed", removed)
        if too_old:
            log.warning("%s: %d comment(s) older than the remote accepts, not sent", self.name, too_old)

    async def ack(self, stream: str, ids: list[str]) -> None:
        """Acknowledge only: other regions' groups read the same outbox (the cap trims it)."""
        if ids:
            await self.redis.xack(stream, self.group, ids)
