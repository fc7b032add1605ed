"""Sans-IO flow-control policies: per-viewer outbound queues, rate limits, flush pacing.

Nothing here does I/O or reads a clock; callers pass ``now`` (seconds, any monotonic
origin). The Trio shells in ``rms`` and ``ingest`` wire them to sockets and timers.
"""

from backpressure.outbound import OutboundQueue
from backpressure.pacer import FlushPacer
from backpressure.rate import Rate, RateGate, parse_rate
from backpressure.ratelimit import Decision, InMemoryRateLimiter, RateLimiter
from backpressure.velocity import Velocity

__all__ = [
    "Decision",
    "FlushPacer",
    "InMemoryRateLimiter",
    "OutboundQueue",
    "Rate",
    "RateGate",
    "RateLimiter",
    "Velocity",
    "parse_rate",
]
