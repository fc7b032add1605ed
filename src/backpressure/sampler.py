"""What a sampled room sends: a readable flow out of a flood.

Per flush the sampler gets the batch's candidates and the time, and returns which to
send to everyone. The streamer's comments always go (and do not use the budget); then
verified authors' comments and comments with reactions; then a random share of the rest.
The budget is a token bucket of ``target_per_s`` comments per second (at most one
second's worth saved up), so the flow everyone sees stays near the target whatever the
velocity: at 500 comments/s and a target of 20, about 4% of ordinary comments get
through. What is sampled out still reaches its own author (the room sends it to the
author's connections only). The random source is passed in, so tests are repeatable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs


@attrs.frozen
class Candidate:
    id: int
    streamer: bool = False
    verified: bool = False
    reactions: int = 0


@attrs.define
class Sampler:
    target_per_s: float = 20.0
    rng: random.Random = attrs.field(factory=lambda: random.Random(0))
    _tokens: float = attrs.field(default=0.0, init=False)
    _at: float | None = attrs.field(default=None, init=False)
    kept: int = attrs.field(default=0, init=False)
    sampled_out: int = attrs.field(default=0, init=False)

    def choose(self, candidates: Sequence[Candidate], now: float) -> set[int]:
        """Ids to send to everyone."""
        if self._at is None:
            self._tokens = self.target_per_s  # start with a second's worth
        else:
            self._tokens = min(self.target_per_s, self._tokens + (now - self._at) * self.target_per_s)
        self._at = now
        keep = {c.id for c in candidates if c.streamer}
        preferred = [c for c in candidates if not c.streamer and (c.verified or c.reactions > 0)]
        preferred.sort(key=lambda c: (-c.reactions, not c.verified, c.id))
        rest = [c for c in candidates if not c.streamer and not (c.verified or c.reactions > 0)]
        for c in preferred:
            if self._tokens < 1:
                break
            keep.add(c.id)
            self._tokens -= 1
        if self._tokens >= 1 and rest:
            n = min(len(rest), int(self._tokens))
            for c in self.rng.sample(rest, n):
                keep.add(c.id)
            self._tokens -= n
        self.kept += len(keep)
        self.sampled_out += len(candidates) - len(keep)
        return keep
