"""The ``Broker`` of a cluster: the hot store's append script, which adds the comment
to the video's recent set and its persist stream (and its moderation stream) and
publishes it on the video's channel, atomically, on the one Redis slot the video's keys
hash to.

``publish_within`` (``domain.ports.LimitedBroker``) is the post's rate limits and that
append as one step. On one Redis server (or a Sentinel-managed primary) it is one call,
``lua/post.lua``; in a Redis Cluster the limiter's keys (the user's slot) and the
video's keys (the video's slot) cannot be in one script, so it is the limiter's script,
then the append: two round trips, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from adapters.redis.client import REDIS_ERRORS
from adapters.redis.hotstore import HotStore
from adapters.redis.ratelimit import RedisRateLimiter, refusal
from domain.model import Comment
from domain.ports import StoreUnavailable
from policy.rate import Rate
from policy.ratelimit import Decision


class RedisBroker:
    def __init__(
        self,
        hot: HotStore,
        limiter: RedisRateLimiter | None = None,
        *,
        one_call: bool = True,
        moderation_queued: Callable[[], object] | None = None,
    ) -> None:
        self.hot = hot
        self.limiter = limiter
        self.one_call = one_call and limiter is not None  # False in a Redis Cluster
        self.moderation_queued = moderation_queued  # called per comment the append queued

    def _queued(self, comment: Comment) -> None:
        if self.moderation_queued is not None and self.hot.moderation_max > 0 and not comment.shadow:
            self.moderation_queued()

    async def publish(self, comment: Comment) -> int:
        """Raises ``StoreUnavailable`` when Redis is unreachable or refuses the id
        (``LateComment``: outside the reorder window); idempotent for a retried id."""
        try:
            if await self.hot.append(comment):
                self._queued(comment)
        except StoreUnavailable:
            raise
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        return comment.id

    async def publish_within(self, comment: Comment, limits: Sequence[tuple[str, Rate]]) -> Decision:
        """The limits, then ``publish``: one call when ``one_call`` (see the module doc)."""
        if self.limiter is None:
            raise RuntimeError("publish_within needs the rate limiter")
        if not self.one_call or not limits:
            decision = await self.limiter.acquire_many(limits, 0.0)
            if decision.allowed:
                await self.publish(comment)
            return decision
        keys, args = self.limiter.script_call(limits)
        try:
            allowed, added, retry_ms = await self.hot.append_within(comment, keys, args)
        except StoreUnavailable:
            raise
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        if not allowed:
            return refusal(retry_ms)
        if added:
            self._queued(comment)
        return Decision(True)
