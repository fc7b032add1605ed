"""The one post pipeline: every transport that takes a comment calls ``PostPipeline``.

The lean front door (h11 on the plain socket, in every role that takes posts) and the
Quart route both go through it, so the checks, their order and the errors are the same
on both, and each runs once per request:

1. ``authenticate``: 404 for a bad video id, then 401 for the token (before the body is
   read), and 413 for a declared body over the limit;
2. ``submit``: 415 / 413 / 400 for the body, then ``CommentService.post``: bans (403),
   the text and client id (422), slow mode and the rate limit (429), the Snowflake id,
   and the broker's publish (store and fan-out).
"""

from __future__ import annotations

import json
from typing import Any

from domain.contract import PostComment
from domain.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from domain.identity import Identity, TokenIssuer
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


class PostPipeline:
    def __init__(self, comments: CommentService, issuer: TokenIssuer, max_body: int) -> None:
        self.comments = comments
        self.issuer = issuer
        self.max_body = max_body

    def authenticate(self, video_id: str, authorization: str | None, content_length: str | int | None) -> Identity:
        """What can be answered from the request head alone: 404, 401, then 413 for a
        declared length over the limit. The identity goes on to ``submit``."""
        check_video(video_id)
        who = self.issuer.from_header(authorization)
        declared = str(content_length) if content_length is not None else ""
        if declared.isdigit() and int(declared) > self.max_body:
            raise PayloadTooLarge(f"the body is larger than {self.max_body} bytes")
        return who

    async def submit(self, video_id: str, who: Identity, content_type: str | None, data: bytes) -> Comment:
        """The body (415, 413, 400), then the comment service's checks and the publish."""
        post = PostComment.parse(parse_json_object(content_type, data, self.max_body))
        with self.comments.metrics.post_seconds.time():
            return await self.comments.post(video_id, who, post.text, post.client_id)
