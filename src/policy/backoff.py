"""Exponential back-off with jitter, as a pure function of the attempt number.

``Backoff.delay(attempt, u)``: attempt 0 is the first retry after a failure; ``u`` is a
uniform random number in [0, 1) drawn by the caller (``random.random()`` in production,
anything in tests). The un-jittered delay grows by ``factor`` per attempt from
``initial_s`` and is capped at ``max_s``; jitter then spreads it uniformly over
``[(1 - jitter), (1 + jitter))`` times that, so processes that failed together do not
retry together. A success resets the caller's attempt count to 0.

The Trio shell that sleeps on it is ``adapters.retry.Retry``.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Backoff:
    initial_s: float = 0.1
    max_s: float = 2.0
    factor: float = 2.0
    jitter: float = 0.5  # 0: no jitter; at most 1 (a delay can then be anywhere down to 0)

    def __attrs_post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("need 0 < initial_s <= max_s")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def base(self, attempt: int) -> float:
        """The un-jittered delay of ``attempt`` (0, 1, ...): non-decreasing, at most ``max_s``."""
        if attempt <= 0:
            return self.initial_s
        try:
            grown = self.initial_s * self.factor**attempt
        except OverflowError:  # a very long outage: the cap was reached long ago
            return self.max_s
        return min(grown, self.max_s)

    def delay(self, attempt: int, u: float) -> float:
        """The delay before retry ``attempt``, with ``u`` uniform in [0, 1) as the jitter."""
        u = min(max(u, 0.0), 1.0)
        return self.base(attempt) * (1.0 - self.jitter + 2.0 * self.jitter * u)
