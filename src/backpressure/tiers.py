"""The tier controller: which fan-out mode a video is in, from its viewer count.

``push`` below the sampling threshold, ``sampled`` between, ``cdn`` above. Each switch
up happens at ``*_at`` and back down only below ``*_below`` (hysteresis), and no two
changes happen within ``min_dwell_s`` (so a count oscillating around a threshold cannot
make the mode flap). Velocity does not choose the mode; it sets how thin the sample is
(see ``sampler``). Deterministic: every node that feeds the same counts at the same
times reaches the same mode.
"""

from __future__ import annotations

from typing import Literal

import attrs

Mode = Literal["push", "sampled", "cdn"]
MODES: tuple[Mode, ...] = ("push", "sampled", "cdn")


@attrs.frozen
class Thresholds:
    sampled_at: int = 50_000
    sampled_below: int = 40_000
    cdn_at: int = 100_000
    cdn_below: int = 80_000
    min_dwell_s: float = 10.0

    def __attrs_post_init__(self) -> None:
        if not (0 < self.sampled_below <= self.sampled_at and 0 < self.cdn_below <= self.cdn_at):
            raise ValueError("each *_below must be positive and at most its *_at")
        if self.cdn_at < self.sampled_at or self.cdn_below < self.sampled_below:
            raise ValueError("cdn thresholds must not be below the sampled ones")
        if self.min_dwell_s < 0:
            raise ValueError("min_dwell_s must not be negative")


def target(mode: Mode, viewers: int, t: Thresholds) -> Mode:
    """The mode hysteresis alone would choose (ignoring dwell time)."""
    if viewers >= t.cdn_at:
        return "cdn"
    if mode == "cdn" and viewers >= t.cdn_below:
        return "cdn"
    if viewers >= t.sampled_at:
        return "sampled"
    if mode in ("sampled", "cdn") and viewers >= t.sampled_below:
        return "sampled"
    return "push"


@attrs.define
class TierController:
    thresholds: Thresholds = attrs.field(factory=Thresholds)
    mode: Mode = "push"
    changed_at: float = float("-inf")
    changes: int = 0

    def observe(self, viewers: int, now: float) -> Mode | None:
        """Feed the video's total viewers at ``now``; returns the new mode on a change."""
        want = target(self.mode, viewers, self.thresholds)
        if want == self.mode or now - self.changed_at < self.thresholds.min_dwell_s:
            return None
        self.mode, self.changed_at = want, now
        self.changes += 1
        return want
