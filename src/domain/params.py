"""Parsing and checking what a viewer asks for; shared by the lean path and the ASGI app."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from domain.errors import BadRequest, NotFound
from domain.identity import Identity, TokenIssuer
from domain.ids import MAX_ID
from domain.model import valid_video_id
from domain.settings import Settings

# Client input never reaches ``int()`` unchecked: it refuses strings of more than 4,300
# digits with a ValueError (CPython's guard against quadratic conversion), which would
# be a 500 or a dropped connection instead of the 400 the parameter deserves.


def _decimal(v: str, max_digits: int) -> int | None:
    """``v`` as a non-negative integer if it is ASCII decimal digits with at most
    ``max_digits`` significant ones (leading zeros are free); None otherwise."""
    if not (v.isascii() and v.isdigit()):
        return None
    significant = v.lstrip("0") or "0"
    return int(significant) if len(significant) <= max_digits else None


def parse_id(value: str, name: str) -> int:
    """A cursor: the decimal digits of any 63-bit id, existing or not."""
    v = value.strip()
    n = _decimal(v, len(str(MAX_ID))) if len(v) <= 19 else None
    if n is None or n > MAX_ID:
        raise BadRequest(f"{name} must be a comment id (decimal digits)", code="invalid_cursor")
    return n


def parse_int(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    n = _decimal(value.strip(), len(str(hi)))
    if n is None or not lo <= n <= hi:
        raise BadRequest(f"{name} must be a whole number from {lo} to {hi}", code="invalid_parameter")
    return n


def parse_float(value: str | None, name: str, default: float, lo: float, hi: float) -> float:
    if value is None or value == "":
        return default
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if not lo <= v <= hi:  # also refuses nan
        raise BadRequest(f"{name} must be a number from {lo:g} to {hi:g}", code="invalid_parameter")
    return v


def check_video(video_id: str) -> str:
    if not valid_video_id(video_id):
        raise NotFound("no such video: ids are 1-64 characters of A-Z a-z 0-9 _ -", code="no_such_video")
    return video_id


@attrs.frozen
class StreamParams:
    video_id: str
    after: int | None  # Last-Event-ID / last_event_id: replay what came after
    backlog: int
    identity: Identity | None
    # Which slice of a spread video's audience the edge routed this stream by (0: the
    # video's own key). Checked for range only: any node serves any shard.
    shard: int = 0


def stream_params(
    settings: Settings,
    issuer: TokenIssuer,
    video_id: str,
    query: Mapping[str, str],
    last_event_id: str | None,
) -> StreamParams:
    """Everything a stream connection needs; raises the contract's errors."""
    check_video(video_id)
    backlog = parse_int(query.get("backlog"), "backlog", settings.backlog, 0, settings.backlog_max)
    cursor = last_event_id if last_event_id not in (None, "") else query.get("last_event_id")
    after = parse_id(cursor, "Last-Event-ID") if cursor not in (None, "") else None
    shard = parse_shard(settings, query.get("shard"))
    token = query.get("token")
    identity = issuer.verify(token) if token else None
    return StreamParams(video_id, after, backlog, identity, shard)


def parse_shard(settings: Settings, value: str | None) -> int:
    """``?shard=N``: 0 to ``spread_max_shards - 1`` (absent: 0)."""
    return parse_int(value, "shard", 0, 0, settings.spread_max_shards - 1)


def content_length(value: str | None) -> int | None:
    """A declared body length (h11 has checked it is decimal digits); None if absent.
    A length of more digits than any limit is held as too large without ``int()``,
    which refuses strings of more than 4,300 digits."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18
