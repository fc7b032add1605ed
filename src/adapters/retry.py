"""The Trio shell of ``policy.backoff.Backoff``: count failures, sleep the jittered delay.

One ``Retry`` per retrying loop (the bus's subscriber connection, a stream consumer,
the moderation forwarder, the CQL connect loop): ``await retry.sleep()`` after a
failure, ``retry.reset()`` after a success. The random source is injected (tests pass a
constant); the policy itself is pure.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio

from policy.backoff import Backoff


class Retry:
    def __init__(self, policy: Backoff, *, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.rand = rand
        self.attempt = 0  # failures since the last success

    def next_delay(self) -> float:
        """The delay before the next retry (and count the failure)."""
        delay = self.policy.delay(self.attempt, self.rand())
        self.attempt += 1
        return delay

    async def sleep(self, delay: float | None = None) -> float:
        """Sleep ``delay`` (from ``next_delay``, when the caller logged it first) or the
        next delay; returns the time slept."""
        if delay is None:
            delay = self.next_delay()
        await trio.sleep(delay)
        return delay

    def reset(self) -> None:
        self.attempt = 0
