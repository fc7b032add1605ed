"""The comment store interface. Adapters: SQLite (embedded default), Scylla (cluster).

Every method is async and must not block the Trio loop. ``viewer_id`` is the id of the
user reading (None for an anonymous viewer): shadow comments are returned only when
``viewer_id`` is their author, or when ``every_author`` is true: then every author's
shadowed comments are returned (with ``shadow`` set), for a reader that decides per viewer
itself (a room's ring). Removed comments are never returned.
"""

from __future__ import annotations

from typing import Protocol

from livecomments.model import Comment


class StoreUnavailable(Exception):
    """The store cannot take or give comments right now (maps to 503)."""


class Store(Protocol):
    async def append(self, comment: Comment) -> None:
        """Persist one comment durably; returns once it is safe to acknowledge (201).

        Idempotent: appending the same comment id twice stores it once.
        """

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
