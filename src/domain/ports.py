"""The comment store interface. Adapters: SQLite (embedded default), Scylla (cluster).

Every method is async and must not block the Trio loop. ``viewer_id`` is the id of the
user reading (None for an anonymous viewer): shadow comments are returned only when
``viewer_id`` is their author, or when ``every_author`` is true: then every author's
shadowed comments are returned (with ``shadow`` set), for a reader that decides per viewer
itself (a room's ring). Removed comments are never returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from backpressure.tiers import Mode
from domain.model import BusGap, Comment, ModeChange, Reaction, Removal
from policy.rate import Rate
from policy.ratelimit import Decision


class StoreUnavailable(Exception):
    """The store cannot take or give comments right now (maps to 503)."""


class Store(Protocol):
    async def append(self, comment: Comment) -> None:
        """Persist one comment durably; returns once it is safe to acknowledge (201).

        Idempotent: appending the same comment id twice stores it once.
        """

    async def append_many(self, comments: Sequence[Comment]) -> None:
        """Persist a batch (a worker draining a stream): returns once every one of them is
        safe to acknowledge. Idempotent like ``append``. A batch the store refuses (a
        comment it cannot encode) stores none of them; a ``StoreUnavailable`` may leave
        some stored, and the same batch again then stores each exactly once."""

    async def remove(self, video_id: str, comment_id: int) -> bool:
        """Tombstone a comment. True when it existed and was not removed before."""

    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        """One comment, removed ones excluded."""

    async def latest(
        self, video_id: str, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        """The newest ``limit`` visible comments, oldest first."""

    async def after(
        self, video_id: str, after_id: int, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        """Visible comments with id > after_id, oldest first, at most ``limit``."""

    async def before(
        self,
        video_id: str,
        before_id: int | None,
        limit: int,
        viewer_id: str | None = None,
        *,
        every_author: bool = False,
    ) -> list[Comment]:
        """History page: visible comments with id < before_id (all when None), newest first."""

    async def aclose(self) -> None:
        """Flush whatever is pending and release resources."""


# -- the bus between ingest and rms: one channel per video ------------------------------

BusEvent = Comment | Removal | Reaction | ModeChange | BusGap
Handler = Callable[[BusEvent], None]


class Bus(Protocol):
    async def publish(self, video_id: str, event: BusEvent) -> None: ...

    async def subscribe(self, video_id: str, handler: Handler) -> None: ...

    async def unsubscribe(self, video_id: str, handler: Handler) -> None: ...


class Broker(Protocol):
    """Where an accepted comment goes: ``publish`` appends it to the video's recent
    history and fans it out to the video's rooms, as one step, and returns its position
    (its id, by which the history is ordered and ``Last-Event-ID`` resumes). In the
    all-in-one server that is the store's append, then the in-process bus, in id order
    (``adapters.memory.LocalBroker``); in a cluster, one Lua script on the video's Redis
    slot (``adapters.redis.broker.RedisBroker``). Raises ``StoreUnavailable`` when the
    comment could not be kept: then it was not published either."""

    async def publish(self, comment: Comment) -> int: ...


class LimitedBroker(Protocol):
    """A ``Broker`` that counts a post against its rate limits in the same step as it
    publishes it (a cluster's ingest node: one Redis call per post). ``limits`` are what
    ``RateLimiter.acquire_many`` takes: all or nothing. Not allowed: nothing was counted
    and nothing published. Raises ``StoreUnavailable`` like ``Broker.publish`` (then the
    comment was not published; its limits may have been counted)."""

    async def publish_within(self, comment: Comment, limits: Sequence[tuple[str, Rate]]) -> Decision: ...


class Presence(Protocol):
    """A video's audience over every realtime node, and one fan-out mode and one shard
    count for all of them. The all-in-one server counts its own viewers
    (``rms.room.LocalPresence``); a cluster sums every rms node's counts in Redis and
    decides modes and shard counts with one script each (``adapters.redis.presence.Presence``)."""

    async def total_viewers(self, video_id: str, local: int) -> int:
        """The video's viewers everywhere, given ``local`` on this node."""
        ...

    async def agree_mode(self, video_id: str, current: Mode, proposed: Mode) -> Mode | None:
        """The mode every node is to use after this node proposed ``proposed``; None
        when no decision could be made now (the node proposes again later)."""
        ...

    async def agree_spread(self, video_id: str, current: int, proposed: int) -> int | None:
        """The shard count (``backpressure.spread``) every node and client is to use after
        this node proposed ``proposed``; None when no decision could be made now."""
        ...

    async def agreed(self, video_id: str) -> tuple[Mode, int] | None:
        """The mode and shard count in force for the video (what a node that opens a room
        for it starts from), or None when there is no one to ask."""
        ...


class SnapshotSource(Protocol):
    """Where ``snapshot.json`` comes from in cdn mode when not from this node's ring."""

    async def fetch(self, video_id: str) -> tuple[bytes, str] | None:
        """(body, ETag) of the video's published snapshot, or None when there is none."""
        ...
