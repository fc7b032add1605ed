"""Draining Redis Streams through a consumer group, the same way for every worker.

``GroupConsumer.drain_forever(stream)`` reads batches for this consumer and hands them to
``handle``, which acknowledges what it finished. After a (re)start or an error it first
re-reads its own unacknowledged entries (``0``), then claims entries that a dead
consumer left idle for ``claim_idle_s``, then reads new ones (``>``), blocking up to
``block_ms``. A Redis or store outage backs off with jitter (up to ``max_backoff_s``) and
starts over with the pending entries, so nothing read is lost. The persist worker and the
``moderate`` workers are the two subclasses.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.retry import Retry
from domain.ports import StoreUnavailable
from policy.backoff import Backoff

log = logging.getLogger("livecomments.streams")

CLAIM_ROUNDS = 100  # XAUTOCLAIM pages per claim pass, at most
RETRIED: tuple[type[BaseException], ...] = (StoreUnavailable, *REDIS_ERRORS)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GroupConsumer:
    name = "consumer"  # for log lines
    store_name = "the store"  # what ``handle`` writes to, for log lines

    def __init__(
        self,
        redis: Redis,
        group: str,
        consumer: str,
        *,
        batch: int,
        block_ms: int = 1000,
        claim_idle_s: float = 30.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.backoff = Backoff(initial_s=min(0.2, max_backoff_s), max_s=max_backoff_s)
        self.failures = 0
        self.stopping = False
        self.idle = trio.Event()  # set (and replaced) whenever a read found nothing new

    async def handle(self, stream: str, entries: list[Any]) -> None:
        """Process entries (coredis stream entries) and acknowledge the finished ones."""
        raise NotImplementedError

    async def drain_forever(self, stream: str) -> None:
        retry = Retry(self.backoff)
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
                retry.reset()
            except RETRIED as e:
                self.failures += 1
                what = self.store_name if isinstance(e, StoreUnavailable) else "Redis"
                delay = retry.next_delay()
                log.warning("%s: %s unavailable (%s); retrying in %.1f s", self.name, what, e, delay)
                pending_first = True
                await retry.sleep(delay)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, self.group, "0", mkstream=True)
        except REDIS_ERRORS as e:
            if "BUSYGROUP" not in str(e) and "already exists" not in str(e):
                raise

    async def _pass(self, stream: str, start: str) -> bool:
        """One batch (``0``: our pending entries; ``>``: new ones); True if there was one."""
        block = self.block_ms if start == ">" else None
        got = await self.redis.xreadgroup(self.group, self.consumer, {stream: start}, count=self.batch, block=block)
        entries = [e for key, items in (got or {}).items() if text(key) == stream for e in items]
        if not entries:
            return False
        await self.handle(stream, entries)
        return True

    async def _claim(self, stream: str) -> None:
        """Take over entries that another (dead) consumer left pending for too long."""
        start = "0-0"
        for _ in range(CLAIM_ROUNDS):
            res = await self.redis.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms, start, count=self.batch)
            start, claimed = text(res[0]), res[1]
            if claimed:
                log.info("%s: claimed %d idle entries on %s", self.name, len(claimed), stream)
                await self.handle(stream, list(claimed))
            if start in ("0-0", "0"):
                return
