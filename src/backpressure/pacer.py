"""When may a room flush its pending comments to its viewers?

Each flush costs one write per viewer, whatever it carries, so a busy room should write
fewer, larger batches while a quiet room should write at once. The pacer is a GCRA over
flushes: up to ``burst`` flushes back to back, then at most ``rate`` per second. A stream
with 10 comments/s gets each comment flushed immediately; one with 500/s gets 20 flushes
a second of ~25 comments each. A flush that took ``cost`` seconds of fan-out also holds
the next one back by ``cost * cost_factor`` so that fan-out never takes the whole loop.
"""

from __future__ import annotations

import attrs


@attrs.define
class FlushPacer:
    rate: float = 20.0  # flushes per second when busy
    burst: int = 4
    cost_factor: float = 1.0
    _tat: float = attrs.field(default=float("-inf"), init=False)
    _not_before: float = attrs.field(default=float("-inf"), init=False)

    def ready_at(self, now: float) -> float:
        """The earliest time the next flush may run (<= now: flush at once)."""
        interval = 1.0 / self.rate
        gcra_at = max(self._tat, now) + interval - self.burst * interval
        at = max(gcra_at, self._not_before)
        return now if at - now < 1e-9 else at  # a rounding error is not a reason to wait

    def flushed(self, now: float, cost: float = 0.0) -> None:
        """Record a flush that started at ``now`` and took ``cost`` seconds."""
        interval = 1.0 / self.rate
        self._tat = max(self._tat, now) + interval
        self._not_before = now + cost + cost * self.cost_factor
