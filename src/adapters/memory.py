"""The in-process adapters of the all-in-one server.

``InProcessBus`` is the ``domain.ports.Bus`` as a dict of handlers (the Redis adapter
implements the same port over Redis pub/sub). Handlers are plain functions that must not
block: a room's handler only appends to its ring and wakes its flush task.
"""

from __future__ import annotations

import attrs

from domain.ports import BusEvent, Handler


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
