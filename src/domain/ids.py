"""Snowflake comment ids: 41 bits of milliseconds, 10 bits of worker, 12 bits of sequence.

Sans-IO: the generator is given the time; it never reads a clock. Ids are strictly
increasing per generator even when the clock steps back (the generator keeps using the
last millisecond it issued and borrows from the sequence, then from the next millisecond).
One generator per process makes ids monotonic per video in that process; ids from
different processes still sort by time to the millisecond.
"""

from __future__ import annotations

import attrs

EPOCH_MS = 1735689600000  # 2025-01-01T00:00:00Z
WORKER_BITS = 10
SEQUENCE_BITS = 12
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
TIME_SHIFT = WORKER_BITS + SEQUENCE_BITS
MAX_ID = (1 << 63) - 1


def snowflake_ms(comment_id: int) -> int:
    """The Unix time in ms that an id carries."""
    return (comment_id >> TIME_SHIFT) + EPOCH_MS


def lowest_id_at(ms: int) -> int:
    """The smallest id any generator can issue at Unix time ``ms`` (a time cursor)."""
    return max(0, ms - EPOCH_MS) << TIME_SHIFT


@attrs.define
class SnowflakeGenerator:
    worker: int = attrs.field(default=0)
    _last_ms: int = attrs.field(default=0, init=False)  # ms since EPOCH_MS
    _seq: int = attrs.field(default=0, init=False)

    @worker.validator
    def _check_worker(self, _attr: object, value: int) -> None:
        if not 0 <= value <= MAX_WORKER:
            raise ValueError(f"worker must be in 0..{MAX_WORKER}")

    def next_id(self, now_ms: int) -> int:
        """A new id, strictly greater than every id this generator issued before."""
        t = max(now_ms - EPOCH_MS, 0)
        if t > self._last_ms:
            self._last_ms, self._seq = t, 0
        else:
            # Same millisecond, or the clock stepped back: stay on the last millisecond.
            self._seq += 1
            if self._seq > MAX_SEQUENCE:
                # 4096 ids in one millisecond: borrow the next one; the clock catches up.
                self._last_ms, self._seq = self._last_ms + 1, 0
        return (self._last_ms << TIME_SHIFT) | (self.worker << SEQUENCE_BITS) | self._seq
