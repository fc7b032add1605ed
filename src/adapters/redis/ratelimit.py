"""The rate limiter every ingest process shares: a sliding window in one Lua script.

The rule is ``policy.rate.Rate.check``: at most ``count`` events in any ``period``;
a refusal counts nothing, and ``retry_after`` is when the event in the way leaves the
window. A key is a sorted set of its recent event times (ms, scored), trimmed to the
window and to ``count`` members, expiring with the window. The clock is Redis' (``TIME``),
not the caller's: ingest processes on different hosts have different monotonic clocks;
and the script runs atomically, so two posts of one user on two ingest processes cannot
both take the last place.

The script is ``lua/sliding_window.lua``. A Redis outage is not the poster's fault and not a reason to let floods through: the
limiter answers 503 with ``Retry-After`` (``Unavailable``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from adapters.redis import scripts
from adapters.redis.client import REDIS_ERRORS, Redis
from adapters.redis.keys import Keys
from domain.errors import Unavailable
from policy.rate import Rate
from policy.ratelimit import Decision

log = logging.getLogger("livecomments.ratelimit")

class RedisRateLimiter:
    """``policy.ratelimit.RateLimiter`` on Redis (the ``now`` argument is unused).

    The keys of one call share a hash tag (the first key), so ``acquire_many`` is one
    script on one slot of a Redis Cluster; a key is named the same way whether it is
    checked alone or first in a group (``user:U`` is always first in a post's group, or
    for a guest ``guest-addr:A``: then all of that guest's post keys carry that tag, which
    its token fixes, and the address key itself is the same for every guest of A).
    """

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = scripts.register(redis, "sliding_window")

    async def acquire(self, key: str, rule: Rate, now: float) -> Decision:
        return await self.acquire_many([(key, rule)], now)

    def script_call(self, items: Sequence[tuple[str, Rate]]) -> tuple[list[str], list[float]]:
        """KEYS and ARGV of ``lua/sliding_window.lua`` for ``items`` (also what
        ``lua/post.lua`` takes after the append's)."""
        tag = items[0][0] if items else ""
        args: list[float] = []
        for _, rule in items:
            args += [rule.count, rule.period * 1000.0]
        return [self.keys.limiter(tag, key) for key, _ in items], args

    async def acquire_many(self, items: Sequence[tuple[str, Rate]], now: float) -> Decision:
        if not items:
            return Decision(True)
        keys, args = self.script_call(items)
        try:
            allowed, retry_ms = await self._script(keys=keys, args=args)
        except REDIS_ERRORS as e:
            log.warning("rate limiter: Redis unavailable: %s", e)
            raise Unavailable("the rate limiter is unavailable; retry shortly") from None
        if int(allowed) == 1:
            return Decision(True)
        return refusal(retry_ms)


def refusal(retry_ms: object) -> Decision:
    """The script's refusal (retry after, in ms, as a string) as a ``Decision``."""
    retry = retry_ms.decode() if isinstance(retry_ms, bytes) else str(retry_ms)
    return Decision(False, float(retry) / 1000.0)
