"""Rooms under ``max_rooms``, in process: the idle room used least recently goes first,
rooms with viewers are never taken, a full house refuses, a viewer that joins a room
closed meanwhile is ended (it reconnects to the new room)."""

from __future__ import annotations

import pytest
import trio

from adapters.memory import InProcessBus
from domain.errors import TooManyRooms
from domain.metrics import Metrics
from domain.model import Comment
from domain.settings import Settings
from rms.frames import Encoding
from rms.room import Rooms
from rms.viewer import QueueViewer


class EmptyStore:
    async def latest(self, video_id: str, limit: int, viewer_id: str | None = None, *, every_author: bool = False) -> list[Comment]:
        return []


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def viewer(metrics: Metrics) -> QueueViewer:
    return QueueViewer(None, Encoding.SSE_PLAIN, 65536, 30.0, metrics)


async def test_idle_rooms_go_least_recently_used_first_and_busy_rooms_stay() -> None:
    metrics = Metrics()
    rooms = Rooms(Settings(max_rooms=3, room_linger_s=600.0), EmptyStore(), InProcessBus(), metrics)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(rooms.run)
        a, b, c = [await rooms.get(v) for v in "abc"]
        await rooms.get("a")  # used again: b is now the idle room used least recently
        d = await rooms.get("d")
        assert set(rooms.rooms) == {"a", "c", "d"} and b.closed and not a.closed
        assert sample(metrics, "livecomments_rooms_evicted_total") == 1

        # With viewers in a and c, only d is idle: e takes d's place.
        va, vc = viewer(metrics), viewer(metrics)
        a.join(va)
        c.join(vc)
        e = await rooms.get("e")
        assert set(rooms.rooms) == {"a", "c", "e"} and d.closed

        # Every room busy: refused, and nothing is taken.
        e.join(viewer(metrics))
        with pytest.raises(TooManyRooms) as refused:
            await rooms.get("f")
        assert refused.value.status == 503 and refused.value.code == "too_many_rooms"
        assert refused.value.headers()["Retry-After"]
        assert set(rooms.rooms) == {"a", "c", "e"} and sample(metrics, "livecomments_rooms_refused_total") == 1

        # The last viewer of a leaves: a is idle again, and the next new room takes it.
        a.leave(va)
        await rooms.get("f")
        assert set(rooms.rooms) == {"c", "e", "f"} and a.closed
        assert sample(metrics, "livecomments_rooms") == 3

        # A viewer joining a room closed between ``get`` and ``join`` is ended at once.
        late = viewer(metrics)
        a.join(late)
        assert late.closed and late not in a.viewers
        nursery.cancel_scope.cancel()
