"""Comment velocity: an exponentially decaying rate, in events per second."""

from __future__ import annotations

import math

import attrs


@attrs.define
class Velocity:
    """``observe(now, n)`` counts events; ``rate(now)`` is the decayed events/second.

    With half-life h, a steady stream of r events/s reads r once it has run for a few h,
    and an idle stream halves every h seconds.
    """

    half_life: float = 5.0
    _value: float = attrs.field(default=0.0, init=False)  # decayed count
    _at: float = attrs.field(default=0.0, init=False)

    def _decay(self, now: float) -> None:
        if now > self._at:
            self._value *= math.exp2(-(now - self._at) / self.half_life)
            self._at = now

    def observe(self, now: float, n: int = 1) -> None:
        self._decay(now)
        self._value += n

    def rate(self, now: float) -> float:
        self._decay(now)
        return self._value * math.log(2) / self.half_life
