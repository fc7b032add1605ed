"""Bans, per-video settings and the moderation log, independent of HTTP.

``ModerationService`` keeps every active ban and every video's slow mode in memory
(loaded from the ``ModerationStore`` at start, updated by each write after the store has
taken it), so that ``policy`` -- called on every post -- never touches the disk.
In the all-in-one server this process is the only writer, so the cache is exact. Several
ingest processes sharing one store (cluster mode) must also hear each other's changes:
``apply_ban``/``apply_unban``/``apply_settings`` are the hooks for a change feed (or call
``load`` periodically).

Who may do what:
- a video's bans and settings: the streamer of that video, moderators, admins;
- global bans: admins only;
- a video's moderation log: the streamer of that video, moderators, admins; the global
  log: moderators and admins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from domain.errors import Forbidden, NotFound, Unavailable
from domain.identity import Identity
from domain.ids import SnowflakeGenerator
from domain.moderation import (
    GLOBAL,
    Ban,
    BanMode,
    LogEntry,
    ModerationStore,
    VideoSettings,
)
from domain.ports import StoreUnavailable


@attrs.frozen
class Policy:
    """What applies to one post: hidden from others (shadow) and the slow mode, if any."""

    shadow: bool = False
    slow_mode_s: int = 0


OPEN = Policy()


class ModerationService:
    def __init__(
        self,
        store: ModerationStore,
        *,
        worker_id: int = 0,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.store = store
        self.wall_ms = wall_ms
        self.ids = SnowflakeGenerator(worker_id)
        self._bans: dict[tuple[str, str], Ban] = {}
        self._slow: dict[str, int] = {}

    async def load(self) -> None:
        """(Re)load the cache from the store."""
        try:
            bans = await self.store.bans()
            settings = await self.store.all_settings()
        except StoreUnavailable as e:
            raise Unavailable(f"moderation state cannot be read: {e}") from None
        self._bans = {(b.scope, b.user_id): b for b in bans}
        self._slow = {s.video_id: s.slow_mode_s for s in settings if s.slow_mode_s > 0}

    # -- the posting path (memory only) ---------------------------------------------------

    def ban_of(self, video_id: str, user_id: str) -> Ban | None:
        """The ban that applies to ``user_id`` in ``video_id``: an overt one first."""
        found = [b for b in (self._bans.get((video_id, user_id)), self._bans.get((GLOBAL, user_id))) if b is not None]
        for b in found:
            if b.mode == "overt":
                return b
        return found[0] if found else None

    def policy(self, video_id: str, who: Identity) -> Policy:
        """Raise 403 ``banned`` for an overt ban; otherwise what applies to the post."""
        ban = self.ban_of(video_id, who.user_id)
        if ban is not None and ban.mode == "overt":
            where = "anywhere" if ban.scope == GLOBAL else "on this video"
            raise Forbidden(f"you are banned from commenting {where}", code="banned")
        slow = 0 if (who.moderator or who.is_streamer(video_id)) else self._slow.get(video_id, 0)
        shadow = ban is not None
        if not slow and not shadow:
            return OPEN
        return Policy(shadow=shadow, slow_mode_s=slow)

    def slow_mode(self, video_id: str) -> int:
        return self._slow.get(video_id, 0)

    # -- cache hooks (also for a cluster's change feed) ------------------------------------

    def apply_ban(self, ban: Ban) -> None:
        self._bans[(ban.scope, ban.user_id)] = ban

    def apply_unban(self, scope: str, user_id: str) -> None:
        self._bans.pop((scope, user_id), None)

    def apply_settings(self, settings: VideoSettings) -> None:
        if settings.slow_mode_s > 0:
            self._slow[settings.video_id] = settings.slow_mode_s
        else:
            self._slow.pop(settings.video_id, None)

    # -- authorisation ----------------------------------------------------------------------

    @staticmethod
    def require_video_moderator(video_id: str, who: Identity) -> None:
        if not (who.moderator or who.is_streamer(video_id)):
            raise Forbidden("only the streamer of this video or a moderator may do this")

    @staticmethod
    def require_admin(who: Identity) -> None:
        if "admin" not in who.roles:
            raise Forbidden("only an admin may manage global bans")

    @staticmethod
    def require_moderator(who: Identity) -> None:
        if not who.moderator:
            raise Forbidden("only moderators may read the global moderation log")

    # -- writes -------------------------------------------------------------------------------

    def entry(
        self,
        scope: str,
        actor: str,
        action: str,
        *,
        target_user: str | None = None,
        comment_id: int | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> LogEntry:
        now = self.wall_ms()
        return LogEntry(
            self.ids.next_id(now), scope, now, actor, action, target_user, comment_id, reason, details or {}
        )

    async def ban(self, scope: str, who: Identity, user_id: str, mode: BanMode, reason: str | None) -> Ban:
        ban = Ban(scope, user_id, mode, reason, who.user_id, self.wall_ms())
        entry = self.entry(scope, who.user_id, "ban", target_user=user_id, reason=reason, details={"mode": mode})
        try:
            await self.store.put_ban(ban, entry)
        except StoreUnavailable as e:
            raise Unavailable(f"the ban cannot be stored right now: {e}") from None
        self.apply_ban(ban)
        return ban

    async def unban(self, scope: str, who: Identity, user_id: str) -> None:
        entry = self.entry(scope, who.user_id, "unban", target_user=user_id)
        try:
            existed = await self.store.delete_ban(scope, user_id, entry)
        except StoreUnavailable as e:
            raise Unavailable(f"the ban cannot be lifted right now: {e}") from None
        self.apply_unban(scope, user_id)
        if not existed:
            raise NotFound("this user is not banned here", code="no_such_ban")

    async def bans(self, scope: str) -> list[Ban]:
        return sorted((b for (s, _), b in self._bans.items() if s == scope), key=lambda b: (b.created_at, b.user_id))

    async def set_settings(self, video_id: str, who: Identity, slow_mode_s: int) -> VideoSettings:
        settings = VideoSettings(video_id, slow_mode_s)
        entry = self.entry(video_id, who.user_id, "settings", details={"slow_mode_s": slow_mode_s})
        try:
            await self.store.put_settings(settings, entry)
        except StoreUnavailable as e:
            raise Unavailable(f"the settings cannot be stored right now: {e}") from None
        self.apply_settings(settings)
        return settings

    async def record(self, entry: LogEntry) -> None:
        """Log a decision that changes no moderation state (a comment removal)."""
        try:
            await self.store.append_log(entry)
        except StoreUnavailable as e:
            raise Unavailable(f"the moderation log cannot be written right now: {e}") from None

    async def log_page(self, scope: str, before: int | None, limit: int) -> list[LogEntry]:
        try:
            return await self.store.log_page(scope, before, limit)
        except StoreUnavailable as e:
            raise Unavailable(f"the moderation log cannot be read right now: {e}") from None
