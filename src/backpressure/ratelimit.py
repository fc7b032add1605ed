"""Rate limiting behind one interface: in-process here, Redis in cluster mode."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import attrs

from backpressure.gcra import Gcra


@attrs.frozen
class Decision:
    allowed: bool
    retry_after: float = 0.0  # seconds until a retry would be allowed


class RateLimiter(Protocol):
    async def acquire(self, key: str, rule: Gcra, now: float) -> Decision:
        """Count one event for ``key`` under ``rule`` if allowed (atomically)."""

    async def acquire_many(self, items: Sequence[tuple[str, Gcra]], now: float) -> Decision:
        """All or nothing: allowed only if every (key, rule) allows; then each is counted,
        otherwise none is. ``retry_after`` is the longest wait among the refusals.
        (A post checks the per-user limit and the video's slow mode this way, so that
        only accepted posts count.)"""


@attrs.define
class InMemoryRateLimiter:
    """Per-process GCRA state for up to ``max_keys`` keys.

    When full, keys whose TAT has passed are forgotten first (they carry no state);
    if every key is still active, the least recently used one is forgotten, which at
    worst gives that user a fresh burst. The bound keeps memory fixed under a flood of
    new user ids.
    """

    max_keys: int = 100_000
    _tats: OrderedDict[str, float] = attrs.field(factory=OrderedDict, init=False)

    def check(self, key: str, rule: Gcra, now: float) -> Decision:
        allowed, new_tat, retry = rule.check(self._tats.get(key), now)
        if allowed:
            self._tats[key] = new_tat
            self._tats.move_to_end(key)
            if len(self._tats) > self.max_keys:
                self._evict(now)
        return Decision(allowed, retry)

    async def acquire(self, key: str, rule: Gcra, now: float) -> Decision:
        return self.check(key, rule, now)

    def check_many(self, items: Sequence[tuple[str, Gcra]], now: float) -> Decision:
        tats: dict[str, float | None] = {}  # a key named twice sees its first count
        new: list[tuple[str, float]] = []
        retry = 0.0
        for key, rule in items:
            allowed, new_tat, wait = rule.check(tats.get(key, self._tats.get(key)), now)
            if allowed:
                tats[key] = new_tat
                new.append((key, new_tat))
            else:
                retry = max(retry, wait)
        if retry > 0.0 or len(new) < len(items):
            return Decision(False, retry)
        for key, tat in new:
            self._tats[key] = tat
            self._tats.move_to_end(key)
        if len(self._tats) > self.max_keys:
            self._evict(now)
        return Decision(True, 0.0)

    async def acquire_many(self, items: Sequence[tuple[str, Gcra]], now: float) -> Decision:
        return self.check_many(items, now)

    def __len__(self) -> int:
        return len(self._tats)

    def _evict(self, now: float) -> None:
        expired = [k for k, tat in self._tats.items() if tat <= now]
        for k in expired:
            del self._tats[k]
        while len(self._tats) > self.max_keys:
            self._tats.popitem(last=False)
