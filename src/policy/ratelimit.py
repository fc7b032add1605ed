"""Rate limiting behind one interface: in-process here, Redis in cluster mode."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import attrs

from policy.rate import Events, Rate


@attrs.frozen
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until a retry would be allowed


class RateLimiter(Protocol):
    async def acquire(self, key: str, rule: Rate, now: float) -> Decision:
        """Count one event for ``key`` under ``rule`` if allowed (atomically)."""

    async def acquire_many(self, items: Sequence[tuple[str, Rate]], now: float) -> Decision:
        """All or nothing: allowed only if every (key, rule) allows; then each is counted,
        otherwise none is. ``retry_after`` is the longest wait among the refusals.
        (A post checks the per-user limit and the video's slow mode this way, so that
        only accepted posts count.)"""


@attrs.define
class InMemoryRateLimiter:
    """Per-process rate-limit state for up to ``max_keys`` keys.

    Keys are kept in least-recently-counted order. When a new key would pass the bound,
    the least recently counted key is forgotten: usually its events have left the
    window anyway; at worst that user gets a fresh window. O(1) per event, and memory
    stays fixed under a flood of new user ids.
    """

    max_keys: int = 100_000
    _events: OrderedDict[str, Events] = attrs.field(factory=OrderedDict, init=False)

    def check(self, key: str, rule: Rate, now: float) -> Decision:
        return self.check_many([(key, rule)], now)

    async def acquire(self, key: str, rule: Rate, now: float) -> Decision:
        return self.check(key, rule, now)

    def check_many(self, items: Sequence[tuple[str, Rate]], now: float) -> Decision:
        pending: dict[str, Events] = {}  # a key named twice sees its first count
        retry = 0.0
        allowed_all = True
        for key, rule in items:
            allowed, events, wait = rule.check(pending.get(key, self._events.get(key)), now)
            if allowed:
                pending[key] = events
            else:
                allowed_all = False
                retry = max(retry, wait)
        if not allowed_all:
            return Decision(False, retry)
        for key, events in pending.items():
            self._events[key] = events
            self._events.move_to_end(key)
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)
        return Decision(True, 0.0)

    async def acquire_many(self, items: Sequence[tuple[str, Rate]], now: float) -> Decision:
        return self.check_many(items, now)

    def __len__(self) -> int:
        return len(self._events)
