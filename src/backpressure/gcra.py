"""The generic cell rate algorithm: a token bucket kept as one number per key.

``count`` events per ``period`` seconds, all of them allowed at once (burst = count),
then one every ``period / count`` seconds. The state of a key is its theoretical
arrival time (TAT); a key whose TAT is in the past is the same as a key never seen, so
stores may forget it. The Redis rate limiter runs the same arithmetic in a Lua script.
"""

from __future__ import annotations

import math
import re

import attrs

_RATE_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_rate(text: str) -> tuple[int, float]:
    """``"5/10s"`` -> (5, 10.0); ``"20/m"`` -> (20, 60.0). Raises ValueError."""
    m = _RATE_RE.match(text)
    if not m:
        raise ValueError(f"rate must look like 5/10s, got {text!r}")
    count = int(m.group(1))
    amount = float(m.group(2)) if m.group(2) else 1.0
    period = amount * _UNITS[m.group(3)]
    if count < 1 or period <= 0:
        raise ValueError(f"rate must be positive, got {text!r}")
    return count, period


@attrs.frozen
class GcraState:
    tat: float


@attrs.frozen
class Gcra:
    count: int
    period: float

    @classmethod
    def from_text(cls, text: str) -> Gcra:
        return cls(*parse_rate(text))

    @property
    def interval(self) -> float:
        return self.period / self.count

    def check(self, tat: float | None, now: float) -> tuple[bool, float, float]:
        """-> (allowed, new_tat, retry_after_s). On refusal new_tat == the old TAT."""
        base = now if tat is None or tat < now else tat
        new_tat = base + self.interval
        allow_at = new_tat - self.period
        if now < allow_at:
            return False, (tat if tat is not None else now), allow_at - now
        return True, new_tat, 0.0

    @staticmethod
    def retry_after_header(seconds: float) -> int:
        """Whole seconds for a Retry-After header, never 0 for a refusal."""
        return max(1, math.ceil(seconds - 1e-9))
