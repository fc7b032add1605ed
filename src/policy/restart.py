"""When to restart a supervised process that exited: the decision of ``cluster up``.

``RestartPolicy.after_exit(attempt, uptime_s, u)``: ``attempt`` counts the quick deaths in
a row so far (0 for a process that had been running fine), ``uptime_s`` is how long the
process that just exited ran, ``u`` a uniform random number in [0, 1) drawn by the caller.
It answers the delay before the restart and the attempt count to keep for next time.

- A process that ran at least ``stable_s`` was healthy: its death starts over at the
  first delay (``backoff.initial_s``, jittered).
- A process that died sooner is in a crash loop: each restart waits ``backoff.factor``
  times longer than the one before, up to ``backoff.max_s``.
- There is no give-up limit. Every node of a local cluster is needed (the edge routes to
  each rms and ingest port; persist and moderate have no stand-in), a crash loop stays
  visible (one log line per death, the restart count in ``cluster status``), and at the
  cap it costs one start per ``max_s``: the number of restarts is bounded by time, not by
  a count after which the cluster would stay degraded until someone noticed.
"""

from __future__ import annotations

import attrs

from policy.backoff import Backoff

RESTART_BACKOFF = Backoff(initial_s=0.5, max_s=30.0, factor=2.0, jitter=0.2)


@attrs.frozen
class RestartPolicy:
    backoff: Backoff = RESTART_BACKOFF
    stable_s: float = 30.0  # a run at least this long resets the back-off

    def __attrs_post_init__(self) -> None:
        if self.stable_s <= 0:
            raise ValueError("stable_s must be > 0")

    def after_exit(self, attempt: int, uptime_s: float, u: float) -> tuple[float, int]:
        """``(delay before the restart, attempt count for the next exit)``."""
        if uptime_s >= self.stable_s or attempt < 0:
            attempt = 0
        return self.backoff.delay(attempt, u), attempt + 1
