"""HTTP helpers shared by the ingest and rms blueprints."""

from __future__ import annotations

import json
from typing import Any

from quart import Response, request

from domain.errors import LivecommentsError, PayloadTooLarge, UnsupportedMediaType
from domain.identity import Identity
from transport.services import node


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(data, status=status, headers=headers or {}, content_type="application/json")


def error_response(err: LivecommentsError) -> Response:
    return json_response(err.body(), err.status, err.headers())


async def json_body() -> dict[str, Any]:
    """The request's JSON object; 415 unless JSON, 413 over the body limit, 400 if malformed."""
    from ingest.posting import parse_json_object

    limit = node().settings.max_body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("send Content-Type: application/json")
    return parse_json_object(request.headers.get("Content-Type"), await body_bytes(), limit)


async def body_bytes() -> bytes:
    data = await request.get_data(as_text=False)
    return data if isinstance(data, bytes) else data.encode()


def bearer() -> Identity:
    return node().issuer.from_header(request.headers.get("Authorization"))


def optional_identity() -> Identity | None:
    """The viewer's identity from ``Authorization`` or ``?token=`` (watching needs none)."""
    issuer = node().issuer
    if request.headers.get("Authorization"):
        return issuer.from_header(request.headers.get("Authorization"))
    token = request.args.get("token")
    return issuer.verify(token) if token else None
