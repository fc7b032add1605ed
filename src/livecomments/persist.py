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

A removal is applied only after every comment before it in the batch was written, so a
removed comment can never be written back after its tombstone.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from livecomments.model import Comment
from livecomments.redis.client import REDIS_ERRORS, Keys, Redis
from livecomments.store.base import Store, StoreUnavailable

log = logging.getLogger("livecomments.persist")

GROUP = "persist"


@attrs.frozen
class Entry:
    entry_id: str
    kind: str  # "c" comment | "r" removal | "?" unreadable
    comment: Comment | None = None
    video_id: str = ""
    comment_id: int = 0


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


@attrs.define
class Stats:
    written: int = 0
    removed: int = 0
    batches: int = 0
    failures: int = 0
    skipped: int = 0


class PersistWorker:
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
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cold = cold
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.max_backoff_s = max_backoff_s
        self.stats = Stats()
        self.idle = trio.Event()  # set whenever a pass found nothing to do (tests wait on it)
        self.stopping = False
        self.stopped = trio.Event()

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run`` (nothing new is read)."""
        self.stopping = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One task per stream, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                for stream in self.keys.streams():
                    nursery.start_soon(self.drain_forever, stream)
                task_status.started()
        finally:
            self.stopped.set()

    async def drain_forever(self, stream: str) -> None:
        backoff = 0.2
        pending_first = True  # after a (re)start: our own unacknowledged entries first
        while not self.stopping:
            try:
                await self._ensure_group(stream)
                if pending_first:
                    while await self._pass(stream, "0") and not self.stopping:
                        pass
                    await self._claim(stream)
                    pending_first = False
                if not await self._pass(stream, ">"):
                    self.idle.set()
                    self.idle = trio.Event()
                    await self._claim(stream)
                backoff = 0.2
            except StoreUnavailable as e:
                self.stats.failures += 1
                log.warning("persist: cold store unavailable (%s); retrying in %.1f s", e, backoff)
                pending_first = True
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_backoff_s)
            except REDIS_ERRORS as e:
                self.stats.failures += 1
                log.warning("persist: Redis unavailable (%s); retrying in %.1f s", e, backoff)
                pending_first = True
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, GROUP, "0", mkstream=True)
        except REDIS_ERRORS as e:
            if "BUSYGROUP" not in str(e) and "already exists" not in str(e):
                raise

    async def _pass(self, stream: str, start: str) -> bool:
        """Read one batch (``0``: our pending entries; ``>``: new ones) and write it.
        True if there was something. Raises ``StoreUnavailable`` if part of it failed."""
        block = self.block_ms if start == ">" else None
        got = await self.redis.xreadgroup(GROUP, self.consumer, {stream: start}, count=self.batch, block=block)
        entries: list[Entry] = []
        for key, items in (got or {}).items():
            if _s(key) == stream:
                entries.extend(parse(e.identifier, e.field_values) for e in items)
        if not entries:
            return False
        await self.write(stream, entries)
        return True

    async def _claim(self, stream: str) -> None:
        """Take over entries that another (dead) consumer left pending for too long."""
        start = "0-0"
        for _ in range(100):
            res = await self.redis.xautoclaim(stream, GROUP, self.consumer, self.claim_idle_ms, start, count=self.batch)
            start, claimed = _s(res[0]), res[1]
            if claimed:
                log.info("persist: claimed %d idle entries on %s", len(claimed), stream)
                await self.write(stream, [parse(e.identifier, e.field_values) for e in claimed])
            if start in ("0-0", "0"):
                return

    async def write(self, stream: str, entries: Sequence[Entry]) -> None:
        """Write a batch to the cold store; ack what it accepted (see the module doc)."""
        comments = [e for e in entries if e.kind == "c"]
        ok: set[str] = {e.entry_id for e in entries if e.kind == "?"}
        self.stats.skipped += len(ok)
        failed: list[BaseException] = []

        async def one(e: Entry) -> None:
            assert e.comment is not None
            try:
                await self.cold.append(e.comment)
            except StoreUnavailable as exc:
                failed.append(exc)
                return
            ok.add(e.entry_id)

        # Concurrent appends: the SQLite store commits them in one transaction, the CQL
        # store sends them in parallel.
        async with trio.open_nursery() as nursery:
            for e in comments:
                nursery.start_soon(one, e)
        self.stats.written += sum(1 for e in comments if e.entry_id in ok)
        blocked = False
        for e in entries:
            if e.kind == "c" and e.entry_id not in ok:
                blocked = True  # removals after a failed comment wait for the retry
            elif e.kind == "r" and not blocked:
                try:
                    await self.cold.remove(e.video_id, e.comment_id)
                except StoreUnavailable as exc:
                    failed.append(exc)
                    blocked = True
                    continue
                ok.add(e.entry_id)
                self.stats.removed += 1
        if ok:
            ids = [e.entry_id for e in entries if e.entry_id in ok]
            await self.redis.xack(stream, GROUP, ids)
            await self.redis.xdel(stream, ids)
        self.stats.batches += 1
        if failed:
            raise StoreUnavailable(f"{len(failed)} write(s) failed: {failed[0]}")
