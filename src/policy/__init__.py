"""Sans-IO policies besides fan-out pressure: rate-limit math, retry back-off, publish
order, the reorder window (in-order release of comments), the hot-video sharding switch
and when ``cluster up`` restarts a process that died (``policy.restart``).

Nothing here does I/O, reads a clock or draws random numbers: callers pass ``now`` (and,
for the back-off, a uniform random number), so every policy is a pure state machine with
property tests in ``tests/unit``. The Trio shells live in the layers above
(``adapters.retry``, ``adapters.redis.bus``, ``adapters.scylla.store``, ``adapters.memory``).
"""
