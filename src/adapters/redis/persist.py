"""The persist worker: drains the hot store's streams into the cold store.

Ingest appends every accepted comment (and every removal) to a Redis Stream; this worker
reads them with a consumer group, writes them to the cold store (Scylla, or the SQLite
file of a local cluster) in batches, and acknowledges an entry only once the cold store
accepted it. So:

- a cold-store outage never blocks posting: entries wait in the stream (and the recent
  comments are served from Redis meanwhile); the worker retries with backoff and drains
  the backlog when the store is back;
- a worker that dies leaves its entries pending; on restart it reads its own pending
  entries first (same consumer name), and entries another consumer left pending for
  ``claim_idle_s`` are claimed (``XAUTOCLAIM``), so nothing is lost;
- writes are idempotent (the stores upsert by comment id), so an entry written twice
  (crash between write and ack) is stored once.

A batch (up to ``batch`` entries, see ``streams``) costs one read, one ``append_many``
on the cold store and one acknowledgement. A removal is applied only after the comments
of its batch were written, so a removed comment can never be written back after its
tombstone.

The worker is the process that writes to Scylla, so its store decides whether a video's
writes spread over shards (``ScyllaStore``'s sharding switch). The store counts comment
velocity itself; the other input, a video's viewers over every rms node, comes from the
presence hashes in Redis through a ``ViewerFeed``: a video's total is read before its
first write (so a video that arrives with a huge audience is sharded from its first
comment) and then every ``interval_s`` while the worker keeps writing to it.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys
from adapters.redis.streams import GroupConsumer, text
from domain.model import Comment
from domain.ports import Store, StoreUnavailable

log = logging.getLogger("adapters.redis.persist")

GROUP = "persist"


@attrs.frozen
class Entry:
    entry_id: str
    kind: str  # "c" comment | "r" removal | "?" unreadable
    comment: Comment | None = None
    video_id: str = ""
    comment_id: int = 0


_s = text


def parse(entry_id: Any, fields: Any) -> Entry:
    f = {_s(k): _s(v) for k, v in dict(fields).items()}
    eid = _s(entry_id)
    try:
        if f.get("k") == "c":
            return Entry(eid, "c", comment=Comment.from_record(json.loads(f["r"])))
        if f.get("k") == "r":
            return Entry(eid, "r", video_id=f["v"], comment_id=int(f["id"]))
    except (ValueError, KeyError, TypeError):
        pass
    return Entry(eid, "?")


class ViewerFeed:
    """Feeds a cold store's sharding switch with the viewers of the videos it writes.

    ``read_total(video_id)`` reads a video's viewers over every node (``Presence.total``);
    ``note(video_id, viewers)`` hands it to the store (``ScyllaStore.note_viewers``).
    Bounded: only videos written in the last ``recent_s`` are followed, at most
    ``max_videos`` of them (the least recently written are dropped first), with at most
    ``concurrency`` Redis reads in flight. A failed read is skipped (the store treats a
    viewer count older than its ``viewers_stale_s`` as 0); it never holds up writing.
    ``note`` may raise ``StoreUnavailable`` (a store not connected yet): the video is then
    primed again before its next batch.
    """

    def __init__(
        self,
        read_total: Callable[[str], Awaitable[int]],
        note: Callable[[str, int], object],
        *,
        interval_s: float = 1.0,
        recent_s: float = 60.0,
        max_videos: int = 10_000,
        concurrency: int = 16,
        prime_timeout_s: float = 0.5,
    ) -> None:
        if interval_s <= 0 or recent_s <= 0 or max_videos < 1 or concurrency < 1:
            raise ValueError("interval_s, recent_s, max_videos and concurrency must be positive")
        self.read_total = read_total
        self.note = note
        self.interval_s = interval_s
        self.recent_s = recent_s
        self.max_videos = max_videos
        self.prime_timeout_s = prime_timeout_s
        self._limiter = trio.CapacityLimiter(concurrency)
        self._videos: OrderedDict[str, float] = OrderedDict()  # video -> last write, oldest first
        self.reads = 0
        self.failures = 0

    async def wrote(self, video_ids: Iterable[str]) -> None:
        """Called before a batch is written: follow these videos; read the viewers of the
        ones not followed yet (bounded by ``prime_timeout_s``) before their first write."""
        now = trio.current_time()
        new: list[str] = []
        for v in dict.fromkeys(video_ids):
            if self._videos.pop(v, None) is None:
                new.append(v)
            self._videos[v] = now
        while len(self._videos) > self.max_videos:
            self._videos.popitem(last=False)
        if new:
            with trio.move_on_after(self.prime_timeout_s):
                await self._feed(new)

    async def tick(self) -> None:
        """Forget videos not written for ``recent_s``; feed the others' current totals."""
        now = trio.current_time()
        while self._videos:
            video, last = next(iter(self._videos.items()))
            if now - last < self.recent_s:
                break
            del self._videos[video]
        await self._feed(list(self._videos))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            with trio.move_on_after(self.interval_s * 5):
                await self.tick()

    async def _feed(self, video_ids: Sequence[str]) -> None:
        async def one(video_id: str) -> None:
            async with self._limiter:
                try:
                    viewers = await self.read_total(video_id)
                except REDIS_ERRORS as e:
                    self.failures += 1
                    log.debug("persist: viewers of %s not read (%s)", video_id, e)
                    return
            self.reads += 1
            try:
                self.note(video_id, int(viewers))
            except StoreUnavailable:
                # The store cannot take it yet (not connected): forget the video, so that
                # its next batch reads the viewers again before writing.
                self._videos.pop(video_id, None)

        if len(video_ids) == 1:
            await one(video_ids[0])
            return
        async with trio.open_nursery() as nursery:
            for v in video_ids:
                nursery.start_soon(one, v)


@attrs.define
class Stats:
    written: int = 0
    removed: int = 0
    batches: int = 0
    failures: int = 0
    skipped: int = 0


class PersistWorker(GroupConsumer):
    name = "persist"
    store_name = "cold store"

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        cold: Store,
        *,
        consumer: str,
        batch: int = 500,
        block_ms: int = 1000,
        claim_idle_s: float = 30.0,
        max_backoff_s: float = 5.0,
        linger_s: float = 0.0,
        viewers: ViewerFeed | None = None,
    ) -> None:
        self.stats = Stats()
        super().__init__(
            redis, GROUP, consumer, batch=batch, block_ms=block_ms, claim_idle_s=claim_idle_s,
            max_backoff_s=max_backoff_s, linger_s=linger_s,
        )  # fmt: skip
        self.keys = keys
        self.cold = cold
        self.viewers = viewers
        self.stopped = trio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run`` (nothing new is read)."""
        self.stopping = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One task per stream (and the viewer feed), until cancelled or stopped."""
        try:
            async with trio.open_nursery() as outer:
                if self.viewers is not None:
                    await outer.start(self.viewers.run)
                async with trio.open_nursery() as nursery:
                    for stream in self.keys.streams():
                        nursery.start_soon(self.drain_forever, stream)
                    task_status.started()
                outer.cancel_scope.cancel()  # stopped: the feed has nothing left to feed
        finally:
            self.stopped.set()

    async def handle(self, stream: str, entries: list[Any]) -> None:
        await self.write(stream, [parse(e.identifier, e.field_values) for e in entries])

    @property
    def failures(self) -> int:  # the consumer's outage count is part of the worker's stats
        return self.stats.failures

    @failures.setter
    def failures(self, value: int) -> None:
        self.stats.failures = value

    async def write(self, stream: str, entries: Sequence[Entry]) -> None:
        """Write a batch to the cold store; ack what it accepted (see the module doc)."""
        comments = [e.comment for e in entries if e.kind == "c" and e.comment is not None]
        ok: set[str] = {e.entry_id for e in entries if e.kind == "?"}
        self.stats.skipped += len(ok)
        failed: list[BaseException] = []
        if self.viewers is not None and comments:
            await self.viewers.wrote(c.video_id for c in comments)
        # The batch's comments in one call: one transaction in SQLite, a few concurrent
        # writes (one batch per partition) in CQL. All of them or, for the ack, none.
        written = False
        if comments:
            try:
                await self.cold.append_many(comments)
                written = True
            except StoreUnavailable as exc:
                failed.append(exc)
        if written:
            ok.update(e.entry_id for e in entries if e.kind == "c")
            self.stats.written += len(comments)
        blocked = bool(comments) and not written  # removals after unwritten comments wait
        for e in entries:
            if e.kind == "r" and not blocked:
                try:
                    await self.cold.remove(e.video_id, e.comment_id)
                except StoreUnavailable as exc:
                    failed.append(exc)
                    blocked = True
                    continue
                ok.add(e.entry_id)
                self.stats.removed += 1
        if ok:
            await self.ack(stream, [e.entry_id for e in entries if e.entry_id in ok])
        self.stats.batches += 1
        if failed:
            raise StoreUnavailable(f"{len(failed)} write(s) failed: {failed[0]}")
