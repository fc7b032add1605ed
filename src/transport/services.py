"""What a process runs, gathered in one object the web layer reads from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from domain.identity import TokenIssuer
from domain.metrics import Metrics
from domain.ports import Store
from domain.settings import Settings
from policy.ratelimit import RateLimiter

if TYPE_CHECKING:
    from ingest.moderation.bans import ModerationService
    from ingest.posting import PostPipeline
    from ingest.service import CommentService
    from rms.room import Rooms


@attrs.define
class Services:
    settings: Settings
    issuer: TokenIssuer
    metrics: Metrics
    store: Store
    limiter: RateLimiter
    comments: CommentService | None = None  # present where ingest runs
    pipeline: PostPipeline | None = None  # present where ingest runs
    moderation: ModerationService | None = None  # bans, settings, the log (where ingest runs)
    rooms: Rooms | None = None  # present where rms runs
    ready_checks: list[Any] = attrs.field(factory=list)  # async callables raising when not ready
    draining: bool = False
