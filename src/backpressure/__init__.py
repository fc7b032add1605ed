"""Sans-IO fan-out pressure: per-viewer outbound queues, flush pacing, the tier
controller, the sampler, comment velocity and a hot video's spread over shards.

Nothing here does I/O or reads a clock; callers pass ``now`` (seconds, any monotonic
origin). The Trio shells in ``rms`` wire them to sockets and timers.
"""

from backpressure.outbound import OutboundQueue
from backpressure.pacer import FlushPacer
from backpressure.velocity import Velocity

__all__ = ["FlushPacer", "OutboundQueue", "Velocity"]
