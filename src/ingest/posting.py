"""The one post pipeline: every transport that takes a comment calls ``PostPipeline``.

The lean front door (h11 on the plain socket, in every role that takes posts) and the
Quart route both go through it, so the checks, their order and the errors are the same
on both, and each runs once per request:

1. ``authenticate``: 404 for a bad video id, then 401 for the token (before the body is
   read), and 413 for a declared body over the limit;
2. ``submit``: 415 / 413 / 400 for the body, then ``CommentService.post``: bans (403),
   the text and client id (422), slow mode and the rate limit (429), the Snowflake id,
   and the broker's publish (store and fan-out).

Every JSON a client sends is read by ``parse_json``: one answer (400 ``malformed_json``)
for anything that is not JSON we take, deep nesting included.
"""

from __future__ import annotations

import json
import re
from typing import Any

from domain.contract import PostComment
from domain.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from domain.identity import Identity, TokenIssuer
from domain.model import Comment
from domain.params import check_video
from ingest.service import CommentService


def mimetype(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


# No body or message we take nests at all; a nesting limit well below the interpreter's
# recursion limit makes deep JSON an answer (400) rather than a RecursionError, wherever
# the parser happens to be called from (and whatever stack depth that is).
JSON_DEPTH_MAX = 32
_JSON_TOKENS = re.compile(r'\\.|["\[\]{}]', re.DOTALL)  # an escape, a quote, a bracket


def json_depth_exceeds(text: str, limit: int = JSON_DEPTH_MAX) -> bool:
    """Whether ``text`` opens more than ``limit`` arrays or objects at once (brackets in
    strings do not count). Cheap when the text has few brackets, as ours have."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth, in_string = 0, False
    for m in _JSON_TOKENS.finditer(text):
        ch = m.group()[0]
        if ch == '"':
            in_string = not in_string
        elif in_string or ch == "\\":
            continue  # a bracket in a string, or an escape
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_json(data: bytes | str, what: str = "the body") -> Any:
    """Parse JSON a client sent: 400 ``malformed_json`` (``BadRequest``) for text that is
    not JSON, not in a JSON encoding, has a number Python will not convert (over 4,300
    digits), or nests deeper than ``JSON_DEPTH_MAX``."""
    try:
        # Decoded as ``json.loads`` decodes bytes, so that the depth check reads the same text.
        text = data if isinstance(data, str) else data.decode(json.detect_encoding(data), "surrogatepass")
        if json_depth_exceeds(text):
            raise BadRequest(f"{what} nests deeper than {JSON_DEPTH_MAX} levels", code="malformed_json")
        return json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadRequest(f"{what} is not valid JSON", code="malformed_json") from None


def parse_json_object(content_type: str | None, data: bytes, limit: int) -> dict[str, Any]:
    """The body as a JSON object: 415 unless JSON, 413 over ``limit``, 400 if malformed."""
    if mimetype(content_type) != "application/json":
        raise UnsupportedMediaType("send Content-Type: application/json")
    if len(data) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    body = parse_json(data)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return body


class PostPipeline:
    def __init__(self, comments: CommentService, issuer: TokenIssuer, max_body: int) -> None:
        self.comments = comments
        self.issuer = issuer
        self.max_body = max_body

    def authenticate(self, video_id: str, authorization: str | None, content_length: int | None) -> Identity:
        """What can be answered from the request head alone: 404, 401, then 413 for a
        declared length over the limit. The identity goes on to ``submit``."""
        check_video(video_id)
        who = self.issuer.from_header(authorization)
        if content_length is not None and content_length > self.max_body:
            raise PayloadTooLarge(f"the body is larger than {self.max_body} bytes")
        return who

    async def submit(self, video_id: str, who: Identity, content_type: str | None, data: bytes) -> Comment:
        """The body (415, 413, 400), then the comment service's checks and the publish."""
        post = PostComment.parse(parse_json_object(content_type, data, self.max_body))
        with self.comments.metrics.post_seconds.time():
            return await self.comments.post(video_id, who, post.text, post.client_id)
