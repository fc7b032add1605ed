"""What each role's Quart app is built from: typed parts, every field present.

The app factories (``transport.app``) take a ``Node`` (what every role has) and the
parts of the roles the process runs: ``IngestParts`` where it takes posts and
moderation, ``RmsParts`` where it serves rooms. A blueprint is registered only where
its parts exist, and reads them with ``node()``, ``ingest()`` or ``rms()`` (Quart's
``current_app``): nothing is optional inside a route, nothing is set after the app is
built except the ``draining`` flag a graceful stop raises.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import attrs
from quart import current_app

from domain.identity import TokenIssuer
from domain.metrics import Metrics
from domain.ports import Store
from domain.settings import Settings
from ingest.moderation.bans import ModerationService
from ingest.posting import PostPipeline
from ingest.service import CommentService
from policy.ratelimit import RateLimiter
from rms.room import Rooms

ReadyCheck = Callable[[], Awaitable[None]]  # raises when a dependency is not reachable
VideoStats = Callable[[str], Awaitable[dict[str, Any]]]  # GET /v1/videos/{id}/stats
VideoSpread = Callable[[str], Awaitable[dict[str, Any]]]  # GET /v1/videos/{id}/spread: shards, viewers


@attrs.define
class Node:
    settings: Settings
    issuer: TokenIssuer
    metrics: Metrics
    ready_checks: tuple[ReadyCheck, ...] = ()
    draining: bool = False


@attrs.frozen
class IngestParts:
    pipeline: PostPipeline
    comments: CommentService
    moderation: ModerationService
    limiter: RateLimiter  # guest sign-ins


@attrs.frozen
class RmsParts:
    rooms: Rooms
    store: Store
    stats: VideoStats  # this node's numbers, or the cluster's
    spread: VideoSpread  # 1 in one process; the cluster's agreed count


T = TypeVar("T")


def _part(kind: type[T]) -> T:
    return cast(T, current_app.config[kind.__name__])


def node() -> Node:
    return _part(Node)


def ingest() -> IngestParts:
    return _part(IngestParts)


def rms() -> RmsParts:
    return _part(RmsParts)
