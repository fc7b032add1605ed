"""The ``Broker`` of a cluster: the hot store's append script, which adds the comment
to the video's recent set and its persist stream and publishes it on the video's
channel, atomically, on the one Redis slot the video's keys hash to."""

from __future__ import annotations

from adapters.redis.client import REDIS_ERRORS
from adapters.redis.hotstore import HotStore
from domain.model import Comment
from domain.ports import StoreUnavailable


class RedisBroker:
    def __init__(self, hot: HotStore) -> None:
        self.hot = hot

    async def publish(self, comment: Comment) -> int:
        """Raises ``StoreUnavailable`` when Redis is unreachable or refuses the id
        (``LateComment``: outside the reorder window); idempotent for a retried id."""
        try:
            await self.hot.append(comment)
        except StoreUnavailable:
            raise
        except REDIS_ERRORS as e:
            raise StoreUnavailable(f"Redis: {e}") from None
        return comment.id
