"""Posting and deleting comments, independent of HTTP.

The order of a post is the contract's: the text is checked first (so refused posts do
not count against the rate limit), then the rate limit, then the comment gets its
Snowflake id, is stored (durably: 201 means it is on disk), and only then published to
the bus. A bus failure after the store accepted is not the poster's error: the comment
is kept and reaches viewers through backlog and replay.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from backpressure.rate import Rate
from backpressure.ratelimit import RateLimiter
from livecomments.auth import Identity
from livecomments.bus import Bus
from livecomments.config import Settings
from livecomments.errors import Forbidden, NotFound, RateLimited, Unavailable, Unprocessable
from livecomments.ids import SnowflakeGenerator
from livecomments.model import Author, Comment, Reaction, Removal
from livecomments.store.base import Store, StoreUnavailable
from policy.ordering import PublishOrder

if TYPE_CHECKING:
    from ingest.moderation import ModerationService
    from livecomments.moderation.pipeline import ModerationQueue

log = logging.getLogger("livecomments.ingest")

CLIENT_ID_MAX = 128
STORE_TIMEOUT_S = 30.0  # a post waits this long for the store before 503


# Format characters a comment may carry: joiners (emoji sequences, Indic scripts) and
# the plain direction marks. Overrides and isolates (U+202A-202E, U+2066-2069), which can
# make a comment display as something else, are refused with the other format characters.
ALLOWED_FORMAT = frozenset("\u200c\u200d\u200e\u200f")


def clean_text(text: object, max_chars: int) -> str:
    """The comment text as stored: line ends as ``\n``, NFC, trimmed; no control,
    private-use, unassigned or format characters (but joiners and direction marks)."""
    if not isinstance(text, str):
        raise Unprocessable("text must be a string", code="invalid_text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Unprocessable("text is not valid Unicode text", code="invalid_text") from None
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text or not any(ch not in ALLOWED_FORMAT and not ch.isspace() for ch in text):
        raise Unprocessable("text is empty", code="empty_text")
    if len(text) > max_chars:
        raise Unprocessable(f"text is longer than {max_chars} characters", code="text_too_long")
    for ch in text:
        cat = unicodedata.category(ch)
        if (cat in ("Cc", "Cs", "Co", "Cn") and ch not in "\n\t") or (cat == "Cf" and ch not in ALLOWED_FORMAT):
            raise Unprocessable("text contains control, format or unassigned characters", code="invalid_text")
    return text


def clean_client_id(client_id: object) -> str | None:
    if client_id is None:
        return None
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= CLIENT_ID_MAX or not client_id.isprintable():
        raise Unprocessable(f"client_id must be a printable string of 1-{CLIENT_ID_MAX} characters", code="invalid_client_id")
    return client_id


class CommentService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        bus: Bus,
        limiter: RateLimiter,
        metrics: Any,
        *,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        moderation: ModerationService | None = None,
        queue: ModerationQueue | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.limiter = limiter
        self.metrics = metrics
        self.moderation = moderation  # bans and slow mode (in-memory cache), the log
        self.queue = queue  # automod's queue: accepted comments are offered, never awaited
        self.rule = Rate.from_text(settings.rate_limit)
        self.reaction_rule = Rate.from_text(settings.reaction_rate_limit)
        self.ids = SnowflakeGenerator(settings.worker_id)
        self.order: PublishOrder[Comment] = PublishOrder()
        self._publish_lock = trio.Lock()
        self.wall_ms = wall_ms

    async def post(self, video_id: str, who: Identity, text: object, client_id: object = None) -> Comment:
        # Bans first (403 whatever the text), then the text, then the limits: the
        # per-user limit and the video's slow mode are counted together or not at all.
        policy = self.moderation.policy(video_id, who) if self.moderation is not None else None
        clean = clean_text(text, self.settings.max_text)
        cid = clean_client_id(client_id)
        limits = [("user:" + who.user_id, self.rule)]
        slow = policy.slow_mode_s if policy is not None else 0
        if slow:
            # The interval is part of the key: changing it starts everyone's count afresh.
            limits.append((f"slow:{video_id}:{slow}:{who.user_id}", Rate(1, float(slow))))
        decision = await self.limiter.acquire_many(limits, trio.current_time())
        if not decision.allowed:
            detail = f"at most {self.rule.count} comments per {self.rule.period:g} s"
            if slow:
                detail += f", and slow mode allows one comment per {slow} s on this video"
            raise RateLimited(detail, Rate.retry_after_header(decision.retry_after))
        now = self.wall_ms()
        comment = Comment(
            id=self.ids.next_id(now),
            video_id=video_id,
            author=Author(who.user_id, who.name, who.verified),
            text=clean,
            created_at=now,
            client_id=cid,
            shadow=policy is not None and policy.shadow,
            streamer=who.is_streamer(video_id),
        )
        self.order.begin(comment.id)
        stored: Comment | None = None
        # Shielded: a poster who hangs up mid-commit does not leave a comment stored but
        # never published (and never released from the publish order). Bounded instead.
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(STORE_TIMEOUT_S):
                    await self.store.append(comment)
                stored = comment
            except (StoreUnavailable, trio.TooSlowError) as e:
                raise Unavailable(f"comments cannot be stored right now: {e}") from None
            finally:
                await self._publish_ready(self.order.finish(comment.id, stored))
        if self.queue is not None and not comment.shadow:
            # Never waits: a full queue means this comment skips automod (counted).
            # Shadowed comments reach nobody else, so there is nothing to protect.
            self.queue.offer(comment)
        return comment

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

    async def delete(self, video_id: str, comment_id: int, who: Identity) -> None:
        try:
            comment = await self.store.get(video_id, comment_id)
        except StoreUnavailable as e:
            raise Unavailable(str(e)) from None
        if comment is None or (comment.shadow and comment.author.id != who.user_id and not who.moderator):
            raise NotFound("no such comment", code="no_such_comment")
        if not (comment.author.id == who.user_id or who.is_streamer(video_id) or who.moderator):
            raise Forbidden("only the author, the streamer or a moderator may delete a comment")
        await self.remove(comment, actor=who.user_id)

    async def remove(
        self,
        comment: Comment,
        *,
        actor: str,
        action: str = "delete",
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        on_removed: Callable[[], None] | None = None,
    ) -> bool:
        """Take a comment off every screen and read path: a tombstone in the store, then a
        ``Removal`` on the bus (``on_removed`` is called right then). Manual deletes and
        automod both come here. The decision is logged (except an author deleting their
        own shadowed comment, which nobody else ever saw). False when the comment was
        already removed."""
        video_id, comment_id = comment.video_id, comment.id
        try:
            removed = await self.store.remove(video_id, comment_id)
        except StoreUnavailable as e:
            raise Unavailable(str(e)) from None
        self.metrics.removals.inc()
        await self.bus.publish(video_id, Removal(video_id, comment_id, comment.author.id, comment.shadow))
        if removed and on_removed is not None:
            on_removed()
        if removed and self.moderation is not None and not (comment.shadow and actor == comment.author.id):
            entry = self.moderation.entry(
                video_id, actor, action, target_user=comment.author.id, comment_id=comment_id,
                reason=reason, details=details,
            )
            try:
                await self.moderation.record(entry)
            except Unavailable as e:  # the removal stands; the log misses one line
                log.error("moderation log: could not record %s of %s/%s: %s", action, video_id, comment_id, e)
        return removed

    async def react(self, video_id: str, comment_id: int, who: Identity) -> None:
        """Count a reaction: sampled rooms prefer comments that have some. An overtly
        banned user gets 403; a shadow-banned user's reactions are accepted and ignored."""
        policy = self.moderation.policy(video_id, who) if self.moderation is not None else None
        try:
            comment = await self.store.get(video_id, comment_id)
        except StoreUnavailable as e:
            raise Unavailable(str(e)) from None
        if comment is None or comment.shadow:
            raise NotFound("no such comment", code="no_such_comment")
        decision = await self.limiter.acquire("react:" + who.user_id, self.reaction_rule, trio.current_time())
        if not decision.allowed:
            raise RateLimited("too many reactions", Rate.retry_after_header(decision.retry_after))
        if policy is not None and policy.shadow:
            return
        await self.bus.publish(video_id, Reaction(video_id, comment_id))
