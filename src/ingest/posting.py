"""Posting a comment from the parts of an HTTP request, whichever server parsed it.

The front door's lean path (h11 on the plain socket) and the Quart route both call
``post_from_request``, so the checks, their order and the errors are the same on both.
"""

from __future__ import annotations

import json
from typing import Any

from domain.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from domain.identity import TokenIssuer
from domain.model import Comment
from domain.params import check_video
from ingest.service import CommentService


def mimetype(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_json_object(content_type: str | None, data: bytes, limit: int) -> dict[str, Any]:
    """The body as a JSON object: 415 unless JSON, 413 over ``limit``, 400 if malformed."""
    if mimetype(content_type) != "application/json":
        raise UnsupportedMediaType("send Content-Type: application/json")
    if len(data) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON", code="malformed_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return body


async def post_from_request(
    comments: CommentService,
    issuer: TokenIssuer,
    video_id: str,
    authorization: str | None,
    content_type: str | None,
    data: bytes,
    limit: int,
) -> Comment:
    """404 bad video, 401 token, 415/413/400 body, then the service's own checks."""
    check_video(video_id)
    who = issuer.from_header(authorization)
    body = parse_json_object(content_type, data, limit)
    with comments.metrics.post_seconds.time():
        return await comments.post(video_id, who, body.get("text"), body.get("client_id"))
