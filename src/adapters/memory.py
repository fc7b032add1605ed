"""The in-process adapters of the all-in-one server: the bus and the broker.

``InProcessBus`` is the ``domain.ports.Bus`` as a dict of handlers (the Redis adapter
implements the same port over Redis pub/sub). Handlers are plain functions that must not
block: a room's handler only appends to its ring and wakes its flush task.
"""

from __future__ import annotations

import logging

import attrs
import trio

from domain.model import Comment
from domain.ports import Bus, BusEvent, Handler, Store, StoreUnavailable
from policy.ordering import PublishOrder

log = logging.getLogger("livecomments.broker")


@attrs.define
class InProcessBus:
    _handlers: dict[str, list[Handler]] = attrs.field(factory=dict)

    async def publish(self, video_id: str, event: BusEvent) -> None:
        for handler in list(self._handlers.get(video_id, ())):
            handler(event)

    async def subscribe(self, video_id: str, handler: Handler) -> None:
        self._handlers.setdefault(video_id, []).append(handler)

    async def unsubscribe(self, video_id: str, handler: Handler) -> None:
        handlers = self._handlers.get(video_id)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[video_id]

    def channels(self) -> int:
        return len(self._handlers)


class LocalBroker:
    """The ``Broker`` of one process: the store's durable append, then the bus.

    Each process publishes in id order (``PublishOrder``): a comment whose append
    finished first waits for an older id still being written. A bus failure after the
    store accepted is not the poster's error: the comment is kept and reaches viewers
    through backlog and replay."""

    def __init__(self, store: Store, bus: Bus, *, append_timeout_s: float = 30.0) -> None:
        self.store = store
        self.bus = bus
        self.append_timeout_s = append_timeout_s
        self.order: PublishOrder[Comment] = PublishOrder()
        self._publish_lock = trio.Lock()

    async def publish(self, comment: Comment) -> int:
        self.order.begin(comment.id)
        stored: Comment | None = None
        try:
            try:
                with trio.fail_after(self.append_timeout_s):
                    await self.store.append(comment)
            except trio.TooSlowError:
                raise StoreUnavailable(f"the store took over {self.append_timeout_s:g} s") from None
            stored = comment
        finally:
            await self._publish_ready(self.order.finish(comment.id, stored))
        return comment.id

    async def _publish_ready(self, ready: list[Comment]) -> None:
        """Publish released comments in id order (the lock is FIFO and taken without a
        wait when free, so batches go out in the order the releases happened)."""
        if not ready:
            return
        async with self._publish_lock:
            for c in ready:
                try:
                    await self.bus.publish(c.video_id, c)
                except Exception as e:  # stored: viewers get it by replay; the poster gets 201
                    log.warning("publish failed for %s/%s: %s", c.video_id, c.id, e)
