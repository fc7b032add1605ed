"""Posting, deleting and reacting to comments, independent of HTTP.

The order of a post is the contract's: bans first (403), then the text (so refused posts
do not count against the rate limit), then slow mode and the rate limit, then the
comment gets its Snowflake id and goes to the ``Broker``, which keeps it (201 means it is
kept) and fans it out. With a ``LimitedBroker`` (a cluster's ingest node) the limits and
the publish are one step, one Redis call. Transports reach ``post`` through ``ingest.posting.PostPipeline``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from domain.contract import clean_client_id, clean_text
from domain.errors import Forbidden, NotFound, RateLimited, Unavailable
from domain.identity import Identity
from domain.ids import SnowflakeGenerator
from domain.metrics import Metrics
from domain.model import Author, Comment, Reaction, Removal
from domain.ports import Broker, Bus, LimitedBroker, Store, StoreUnavailable
from domain.settings import Settings
from policy.rate import Rate
from policy.ratelimit import RateLimiter

if TYPE_CHECKING:
    from ingest.moderation.automod import ModerationQueue
    from ingest.moderation.bans import ModerationService

log = logging.getLogger("livecomments.ingest")

class CommentService:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        store: Store,
        bus: Bus,
        limiter: RateLimiter,
        metrics: Metrics,
        *,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        moderation: ModerationService | None = None,
        queue: ModerationQueue | None = None,
        limited: LimitedBroker | None = None,
    ) -> None:
        self.settings = settings
        self.broker = broker  # accepted comments: stored and fanned out
        self.store = store  # reads and tombstones
        self.bus = bus  # removals and reactions
        self.limiter = limiter
        self.metrics = metrics
        self.moderation = moderation  # bans and slow mode (in-memory cache), the log
        self.queue = queue  # automod's queue: accepted comments are offered, never awaited
        # When given, posts go through it instead of ``limiter`` then ``broker``: the limits
        # and the publish in one step (a cluster's ingest node).
        self.limited = limited
        self.rule = Rate.from_text(settings.rate_limit)
        gp = settings.guest_post_rate_limit
        self.guest_rule = None if gp.strip().lower() == "off" else Rate.from_text(gp)
        self.reaction_rule = Rate.from_text(settings.reaction_rate_limit)
        self.ids = SnowflakeGenerator(settings.worker_id)
        self.wall_ms = wall_ms

    async def post(self, video_id: str, who: Identity, text: object, client_id: object = None) -> Comment:
        # Bans first (403 whatever the text), then the text, then the limits: the
        # per-user limit and the video's slow mode are counted together or not at all.
        policy = self.moderation.policy(video_id, who) if self.moderation is not None else None
        clean = clean_text(text, self.settings.max_text)
        cid = clean_client_id(client_id)
        limits = [("user:" + who.user_id, self.rule)]
        guest = self.guest_rule if who.address is not None else None
        if guest is not None:
            # A guest's posts also count against the address it signed in from (all its
            # guests together). First in the group: the Redis limiter tags every key of a
            # group with the first one, and this key is shared by the address's guests
            # (a guest's group always starts with it: the address is in the token).
            limits.insert(0, ("guest-addr:" + str(who.address), guest))
        slow = policy.slow_mode_s if policy is not None else 0
        if slow:
            # The interval is part of the key: changing it starts everyone's count afresh.
            limits.append((f"slow:{video_id}:{slow}:{who.user_id}", Rate(1, float(slow))))
        if self.limited is not None:
            # One step: the limits are counted and the comment published together, or
            # neither (a cluster's ingest node: one Redis call per post).
            comment = self._new_comment(video_id, who, clean, cid, policy is not None and policy.shadow)
            with trio.CancelScope(shield=True):  # as below: never stored but unpublished
                try:
                    decision = await self.limited.publish_within(comment, limits)
                except StoreUnavailable as e:
                    raise Unavailable(f"comments cannot be stored right now: {e}") from None
            if not decision.allowed:
                raise self._refused(decision.retry_after, guest, slow)
        else:
            decision = await self.limiter.acquire_many(limits, trio.current_time())
            if not decision.allowed:
                raise self._refused(decision.retry_after, guest, slow)
            comment = self._new_comment(video_id, who, clean, cid, policy is not None and policy.shadow)
            # Shielded: a poster who hangs up mid-commit does not leave a comment stored but
            # never published (the broker bounds the wait itself).
            with trio.CancelScope(shield=True):
                try:
                    await self.broker.publish(comment)
                except StoreUnavailable as e:
                    raise Unavailable(f"comments cannot be stored right now: {e}") from None
        if self.queue is not None and not comment.shadow:
            # Never waits: a full queue means this comment skips automod (counted).
            # Shadowed comments reach nobody else, so there is nothing to protect.
            self.queue.offer(comment)
        return comment

    def _new_comment(self, video_id: str, who: Identity, text: str, client_id: str | None, shadow: bool) -> Comment:
        now = self.wall_ms()
        return Comment(
            id=self.ids.next_id(now),
            video_id=video_id,
            author=Author(who.user_id, who.name, who.verified),
            text=text,
            created_at=now,
            client_id=client_id,
            shadow=shadow,
            streamer=who.is_streamer(video_id),
        )

    def _refused(self, retry_after: float, guest: Rate | None, slow: int) -> RateLimited:
        detail = f"at most {self.rule.count} comments per {self.rule.period:g} s"
        if guest is not None:
            detail += f", and guests at one address {guest.count} per {guest.period:g} s together"
        if slow:
            detail += f", and slow mode allows one comment per {slow} s on this video"
        return RateLimited(detail, Rate.retry_after_header(retry_after))

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
