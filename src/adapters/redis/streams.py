"""Draining Redis Streams through a consumer group, the same way for every worker.

``GroupConsumer.drain_forever(stream)`` reads batches for this consumer and hands them to
``handle``, which acknowledges what it finished (``ack``). After a (re)start or an error
it first makes sure the group exists, re-reads its own unacknowledged entries (``0``),
then claims entries that a dead consumer left idle for ``claim_idle_s``, then reads new
ones (``>``), blocking up to ``block_ms``. A Redis or store outage backs off with jitter
(up to ``max_backoff_s``) and starts over with the pending entries, so nothing read is
lost. The persist worker and the ``moderate`` workers are the two subclasses.

Batches, so that the cost per entry is the entry's own:

- one ``XREADGROUP ... COUNT batch`` per batch, and one round trip to acknowledge it:
  ``XACK`` with every finished id, and ``XDEL`` of the same ids, pipelined;
- after a read that was not full the consumer waits ``linger_s`` before the next one,
  so that under a steady trickle entries gather into batches instead of being read a
  few at a time (the first entry after a quiet spell is still read at once, by the
  blocking read). A full batch is followed by the next read at once.
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
        linger_s: float = 0.0,
    ) -> None:
        if batch < 1 or linger_s < 0:
            raise ValueError("batch must be positive and linger_s not negative")
        self.redis = redis
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.linger_s = linger_s
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
        restart = True  # after a (re)start or an error: the group, then our pending entries
        while not self.stopping:
            try:
                if restart:
                    await self._ensure_group(stream)
                    while await self._pass(stream, "0") and not self.stopping:
                        pass
                    await self._claim(stream)
                    restart = False
                got = await self._pass(stream, ">")
                if not got:
                    self.idle.set()
                    self.idle = trio.Event()
                    await self._claim(stream)
                retry.reset()
                if 0 < got < self.batch and self.linger_s > 0 and not self.stopping:
                    await trio.sleep(self.linger_s)  # let the next batch gather
            except RETRIED as e:
                self.failures += 1
                what = self.store_name if isinstance(e, StoreUnavailable) else "Redis"
                delay = retry.next_delay()
                log.warning("%s: %s unavailable (%s); retrying in %.1f s", self.name, what, e, delay)
                restart = True
                await retry.sleep(delay)

    async def ack(self, stream: str, ids: list[str]) -> None:
        """Acknowledge finished entries and delete them, in one round trip."""
        if not ids:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(stream, self.group, ids)
            pipe.xdel(stream, ids)

    async def _ensure_group(self, stream: str) -> None:
        try:
            await self.redis.xgroup_create(stream, self.group, "0", mkstream=True)
        except REDIS_ERRORS as e:
            if "BUSYGROUP" not in str(e) and "already exists" not in str(e):
                raise

    async def _pass(self, stream: str, start: str) -> int:
        """One batch (``0``: our pending entries; ``>``: new ones); how many entries it had."""
        block = self.block_ms if start == ">" else None
        got = await self.redis.xreadgroup(self.group, self.consumer, {stream: start}, count=self.batch, block=block)
        entries = [e for key, items in (got or {}).items() if text(key) == stream for e in items]
        if entries:
            await self.handle(stream, entries)
        return len(entries)

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
