"""The comment and the events that travel between ingest, the bus, rms and viewers."""

from __future__ import annotations

import re
from typing import Any

import attrs

VIDEO_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_video_id(video_id: str) -> bool:
    """The contract: 1 to 64 characters of ``[A-Za-z0-9_-]``; anything else is a 404."""
    return VIDEO_ID_RE.fullmatch(video_id) is not None


@attrs.frozen
class Author:
    id: str
    name: str
    verified: bool = False


def shown_to(shadow: bool, author_id: str, viewer_id: str | None, *, every_author: bool = False) -> bool:
    """The visibility rule, once: a shadowed comment is shown to its author only
    (``viewer_id`` None is an anonymous viewer). ``every_author``: a read that keeps
    every author's shadowed comments, to be filtered per viewer later (a room's ring).
    Stores that filter in their query language (SQLite's ``_VISIBLE``) say the same
    thing in SQL."""
    return not shadow or every_author or (viewer_id is not None and author_id == viewer_id)


@attrs.frozen
class Comment:
    """A stored comment. ``id`` is a Snowflake, so ids sort by time within a video.

    ``shadow`` marks a comment by a shadow-banned author: it is stored and shown to that
    author only. It never appears in the public JSON.
    ``streamer`` marks the streamer's own comments (never sampled out).
    """

    id: int
    video_id: str
    author: Author
    text: str
    created_at: int  # ms since the Unix epoch
    client_id: str | None = None
    shadow: bool = False
    streamer: bool = False

    def visible_to(self, viewer_id: str | None, *, every_author: bool = False) -> bool:
        """Who may see this comment: everyone, or only its author when shadowed."""
        return shown_to(self.shadow, self.author.id, viewer_id, every_author=every_author)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "video_id": self.video_id,
            "author": {
                "id": self.author.id,
                "name": self.author.name,
                "verified": self.author.verified,
            },
            "text": self.text,
            "created_at": self.created_at,
            "client_id": self.client_id,
            "pending": False,
        }

    def to_record(self) -> dict[str, Any]:
        """Everything, internal flags included: the bus and the stores carry this."""
        d = self.to_json()
        d["shadow"] = self.shadow
        d["streamer"] = self.streamer
        del d["pending"]
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Comment:
        a = d["author"]
        return cls(
            id=int(d["id"]),
            video_id=d["video_id"],
            author=Author(id=a["id"], name=a["name"], verified=bool(a.get("verified", False))),
            text=d["text"],
            created_at=int(d["created_at"]),
            client_id=d.get("client_id"),
            shadow=bool(d.get("shadow", False)),
            streamer=bool(d.get("streamer", False)),
        )


@attrs.frozen
class Removal:
    """A comment taken off every screen (deleted by a person or by moderation)."""

    video_id: str
    comment_id: int
    # A shadowed comment's removal goes to its author only: nobody else knew it existed.
    author_id: str | None = None
    shadow: bool = False


@attrs.frozen
class Reaction:
    """Someone reacted to a comment (sampling prefers comments with reactions)."""

    video_id: str
    comment_id: int


@attrs.frozen
class BusGap:
    """The bus came back after an outage but could not bring every comment through
    live: ``missed`` comments before ``first_id`` will only be in the store."""

    video_id: str
    first_id: int
    missed: int


@attrs.frozen
class ModeChange:
    """A video's fan-out mode, decided once for the whole cluster."""

    video_id: str
    mode: str
