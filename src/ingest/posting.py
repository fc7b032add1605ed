"""Posting a comment from the parts of an HTTP request, whichever server parsed it.

The front door's lean path (h11 on the plain socket) and the Quart route both call
``post_from_request``, so the checks, their order and the errors are the same on both.
Every JSON a client sends is read by ``parse_json``: one answer (400 ``malformed_json``)
for anything that is not JSON we take, deep nesting included.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ingest.service import CommentService
from livecomments.auth import TokenIssuer
from livecomments.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from livecomments.model import Comment
from rms.params import check_video


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
