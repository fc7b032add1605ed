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
from typing import Any

import trio

from backpressure.gcra import Gcra
from backpressure.ratelimit import RateLimiter
from livecomments.auth import Identity
from livecomments.bus import Bus
from livecomments.config import Settings
from livecomments.errors import Forbidden, NotFound, RateLimited, Unavailable, Unprocessable
from livecomments.ids import SnowflakeGenerator
from livecomments.model import Author, Comment, Reaction, Removal
from livecomments.store.base import Store, StoreUnavailable

log = logging.getLogger("livecomments.ingest")

CLIENT_ID_MAX = 128


def clean_text(text: object, max_chars: int) -> str:
    """The comment text as stored: trimmed, NFC, no control characters but newline/tab."""
    if not isinstance(text, str):
        raise Unprocessable("text must be a string", code="invalid_text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Unprocessable("text is not valid Unicode text", code="invalid_text") from None
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise Unprocessable("text is empty", code="empty_text")
    if len(text) > max_chars:
        raise Unprocessable(f"text is longer than {max_chars} characters", code="text_too_long")
    for ch in text:
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"):
            raise Unprocessable("text contains control or unassigned characters", code="invalid_text")
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
    ) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.limiter = limiter
        self.metrics = metrics
        self.rule = Gcra.from_text(settings.rate_limit)
        self.reaction_rule = Gcra.from_text(settings.reaction_rate_limit)
        self.ids = SnowflakeGenerator(settings.worker_id)
        self.wall_ms = wall_ms

    async def post(self, video_id: str, who: Identity, text: object, client_id: object = None) -> Comment:
        clean = clean_text(text, self.settings.max_text)
        cid = clean_client_id(client_id)
        decision = await self.limiter.acquire("user:" + who.user_id, self.rule, trio.current_time())
        if not decision.allowed:
            raise RateLimited(
                f"at most {self.rule.count} comments per {self.rule.period:g} s",
                Gcra.retry_after_header(decision.retry_after),
            )
        now = self.wall_ms()
        comment = Comment(
            id=self.ids.next_id(now),
            video_id=video_id,
            author=Author(who.user_id, who.name, who.verified),
            text=clean,
            created_at=now,
            client_id=cid,
            streamer=who.is_streamer(video_id),
        )
        try:
            await self.store.append(comment)
        except StoreUnavailable as e:
            raise Unavailable(f"comments cannot be stored right now: {e}") from None
        try:
            await self.bus.publish(video_id, comment)
        except Exception as e:  # stored: viewers get it by replay; the poster gets 201
            log.warning("publish failed for %s/%s: %s", video_id, comment.id, e)
        return comment

    async def delete(self, video_id: str, comment_id: int, who: Identity) -> None:
        try:
            comment = await self.store.get(video_id, comment_id)
        except StoreUnavailable as e:
            raise Unavailable(str(e)) from None
        if comment is None or (comment.shadow and comment.author.id != who.user_id and not who.moderator):
            raise NotFound("no such comment", code="no_such_comment")
        if not (comment.author.id == who.user_id or who.is_streamer(video_id) or who.moderator):
            raise Forbidden("only the author, the streamer or a moderator may delete a comment")
        try:
            await self.store.remove(video_id, comment_id)
        except StoreUnavailable as e:
            raise Unavailable(str(e)) from None
        self.metrics.removals.inc()
        await self.bus.publish(video_id, Removal(video_id, comment_id))

    async def react(self, video_id: str, comment_id: int, who: Identity) -> None:
        """Count a reaction: sampled rooms prefer comments that have some."""
        try:
            comment = await self.store.get(video_id, comment_id)
        except StoreUnavailable as e:
            raise Unavailable(str(e)) from None
        if comment is None or comment.shadow:
            raise NotFound("no such comment", code="no_such_comment")
        decision = await self.limiter.acquire("react:" + who.user_id, self.reaction_rule, trio.current_time())
        if not decision.allowed:
            raise RateLimited("too many reactions", Gcra.retry_after_header(decision.retry_after))
        await self.bus.publish(video_id, Reaction(video_id, comment_id))
