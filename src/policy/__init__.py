"""Sans-IO policies of the adapters: retry back-off, in-order release of comments,
the hot-video sharding switch and publish ordering.

Nothing here does I/O, reads a clock or draws random numbers: callers pass ``now`` (and,
for the back-off, a uniform random number), so every policy is a pure state machine
with property tests in ``tests/unit``. Nothing here imports ``trio`` or ``livecomments``;
the Trio shells live in the adapters (``livecomments.retry``, ``livecomments.redis.bus``,
``livecomments.store.scylla``, ``ingest.service``).
"""

from policy.backoff import Backoff
from policy.ordering import PublishOrder
from policy.reorder import ReorderBuffer
from policy.shards import HotVideos, ShardingThresholds

__all__ = ["Backoff", "HotVideos", "PublishOrder", "ReorderBuffer", "ShardingThresholds"]
