"""Moderation state as the domain sees it: bans, per-video settings, the log, and the
``ModerationStore`` port that keeps them.

An adapter (``adapters.sqlite.moderation``, ``adapters.redis.moderation``) writes each
state change together with the log entry that records it, atomically, so a ban without
its audit entry never exists. Reads of bans and settings are rare: ingest loads them once
into ``ingest.moderation.bans.ModerationService``'s in-memory cache, so a post never
waits for the store; writes go through the store first, then the cache.

The global scope (bans and log entries for the whole platform) is the empty string,
which no video id can be.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import attrs

GLOBAL = ""
BanMode = Literal["shadow", "overt"]
BAN_MODES: tuple[BanMode, ...] = ("shadow", "overt")


@attrs.frozen
class Ban:
    scope: str  # a video id, or GLOBAL
    user_id: str
    mode: BanMode
    reason: str | None
    actor: str
    created_at: int  # ms since the Unix epoch

    def to_json(self) -> dict[str, Any]:
        return {
            "video_id": self.scope or None,
            "user_id": self.user_id,
            "mode": self.mode,
            "reason": self.reason,
            "actor": self.actor,
            "created_at": self.created_at,
        }


@attrs.frozen
class VideoSettings:
    video_id: str
    slow_mode_s: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "slow_mode_s": self.slow_mode_s}


@attrs.frozen
class LogEntry:
    """One moderation decision: who (``actor``: a user id, or ``automod``) did what
    (``action``) to whom (``target_user``, ``comment_id``), when and why."""

    id: int  # a Snowflake: entries sort by time
    scope: str  # a video id, or GLOBAL
    created_at: int  # ms since the Unix epoch
    actor: str
    action: str  # ban | unban | delete | automod_remove | settings
    target_user: str | None = None
    comment_id: int | None = None
    reason: str | None = None
    details: dict[str, Any] = attrs.field(factory=dict, eq=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "video_id": self.scope or None,
            "created_at": self.created_at,
            "actor": self.actor,
            "action": self.action,
            "target_user": self.target_user,
            "comment_id": str(self.comment_id) if self.comment_id is not None else None,
            "reason": self.reason,
            "details": self.details,
        }


class ModerationStore(Protocol):
    async def put_ban(self, ban: Ban, entry: LogEntry) -> None:
        """Create or replace the ban of ``ban.user_id`` in ``ban.scope``, and log it."""

    async def delete_ban(self, scope: str, user_id: str, entry: LogEntry) -> bool:
        """Lift a ban and log it; False (and nothing logged) when there was none."""

    async def bans(self, scope: str | None = None) -> list[Ban]:
        """The bans in ``scope`` (every ban when None), oldest first."""

    async def put_settings(self, settings: VideoSettings, entry: LogEntry) -> None:
        """Store a video's settings and log the change."""

    async def all_settings(self) -> list[VideoSettings]:
        """Every video whose settings differ from the defaults."""

    async def append_log(self, entry: LogEntry) -> None:
        """Record a decision that changes no state here (a comment removal)."""

    async def log_page(self, scope: str, before: int | None, limit: int) -> list[LogEntry]:
        """Entries of ``scope`` with id < ``before`` (all when None), newest first."""

    async def aclose(self) -> None: ...
