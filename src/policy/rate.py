"""Rate limits as a sliding window: at most ``count`` events in any ``period`` seconds.

"5 comments per 10 s" means exactly that: a sixth inside any 10-second window is
refused, and ``retry_after`` is when the oldest of the five leaves the window. The state
of a key is its recent event times (at most ``count`` of them); a key whose newest event
left the window is the same as a key never seen, so stores may forget it. The Redis
limiter runs the same rule in a Lua script over a sorted set per key.

Slow mode is the special case ``Rate(1, N)``: one post per N seconds, counted from the
last accepted one.
"""

from __future__ import annotations

import math
import re

import attrs

_RATE_RE = re.compile(r"^\s*([0-9]+)\s*/\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)?\s*(ms|s|m|h)?\s*$", re.ASCII)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# Times are float seconds; an event this close to leaving the window has left it, so
# that a retry exactly at ``now + retry_after`` is never refused by a rounding error.
EPS = 1e-9


def parse_rate(text: str) -> tuple[int, float]:
    """``"5/10s"`` -> (5, 10.0); ``"20/m"`` -> (20, 60.0). Raises ValueError."""
    m = _RATE_RE.match(text)
    if not m or (m.group(2) is None and m.group(3) is None):
        raise ValueError(f"rate must look like 5/10s, got {text!r}")
    count = int(m.group(1))
    amount = float(m.group(2)) if m.group(2) else 1.0
    period = amount * _UNITS[m.group(3)]
    if count < 1 or not 0 < period < math.inf:
        raise ValueError(f"rate must be positive, got {text!r}")
    return count, period


Events = tuple[float, ...]


@attrs.frozen
class Rate:
    count: int
    period: float

    @classmethod
    def from_text(cls, text: str) -> Rate:
        return cls(*parse_rate(text))

    def recent(self, events: Events | None, now: float) -> Events:
        """The events still inside the window ending at ``now``."""
        if not events:
            return ()
        return tuple(t for t in events if t + self.period - now > EPS)

    def check(self, events: Events | None, now: float) -> tuple[bool, Events, float]:
        """-> (allowed, the key's new events, retry_after_s). A refusal counts nothing."""
        recent = self.recent(events, now)
        if len(recent) >= self.count:
            oldest_in_the_way = recent[len(recent) - self.count]
            return False, recent, max(oldest_in_the_way + self.period - now, EPS)
        return True, (*recent, now)[-self.count :], 0.0

    @staticmethod
    def retry_after_header(seconds: float) -> int:
        """Whole seconds for a Retry-After header, never 0 for a refusal."""
        return max(1, math.ceil(seconds - EPS))


@attrs.define
class RateGate:
    """One owner's own sliding window (a connection's resumes, say): ``rule`` applied to
    the events of a single key that lives and dies with its owner, so no store and no
    key bound are needed. At most ``rule.count`` event times are kept."""

    rule: Rate
    _events: Events = attrs.field(default=(), init=False)

    def take(self, now: float) -> float:
        """Count one event if the rule allows it (-> 0.0); otherwise count nothing and
        return the seconds until one would be allowed (> 0)."""
        allowed, self._events, retry = self.rule.check(self._events, now)
        return 0.0 if allowed else retry
