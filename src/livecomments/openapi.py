"""The OpenAPI 3.1 description served at ``/openapi.json`` (written by hand, kept beside
the routes it describes; tests compare it with the app's routes)."""

from __future__ import annotations

from typing import Any

from livecomments.config import Settings

_ERR = {"$ref": "#/components/schemas/Error"}


def _resp(desc: str, schema: dict[str, Any] | None = None, ctype: str = "application/json") -> dict[str, Any]:
    r: dict[str, Any] = {"description": desc}
    if schema is not None:
        r["content"] = {ctype: {"schema": schema}}
    return r


def _errors(*codes: int) -> dict[str, Any]:
    names = {
        400: "Malformed request",
        401: "Missing, invalid or expired token",
        403: "Not allowed",
        404: "No such video, comment or endpoint",
        413: "Body too large",
        415: "Not JSON",
        422: "Invalid comment",
        429: "Rate limited (Retry-After header)",
        503: "Temporarily unavailable (Retry-After header)",
    }
    return {str(c): _resp(names[c], _ERR) for c in codes}


VIDEO = {"name": "video_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
ID = {"type": "string", "pattern": "^[0-9]{1,19}$"}


def _q(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


def openapi(s: Settings) -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    comment_list = {"type": "array", "items": {"$ref": "#/components/schemas/Comment"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "livecomments", "version": "1", "description": "Live-stream comments: post over HTTP, watch over SSE, WebSocket or long-poll."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}, "retry_after": {"type": "integer"}},
                },
                "Comment": {
                    "type": "object",
                    "required": ["id", "video_id", "author", "text", "created_at", "pending"],
                    "properties": {
                        "id": ID,
                        "video_id": {"type": "string"},
                        "author": {
                            "type": "object",
                            "required": ["id", "name", "verified"],
                            "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "verified": {"type": "boolean"}},
                        },
                        "text": {"type": "string"},
                        "created_at": {"type": "integer", "description": "ms since the Unix epoch"},
                        "client_id": {"type": ["string", "null"]},
                        "pending": {"type": "boolean"},
                    },
                },
            },
        },
        "paths": {
            "/v1/auth/guest": {
                "post": {
                    "summary": "Sign in as a guest (limited per client address)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 40}}}}}},
                    "responses": {
                        "201": _resp("A token", {"type": "object", "required": ["token", "user_id"], "properties": {"token": {"type": "string"}, "user_id": {"type": "string"}, "name": {"type": "string"}}}),
                        **_errors(400, 404, 413, 415, 422, 429),
                    },
                }
            },
            "/v1/videos/{video_id}/comments": {
                "parameters": [VIDEO],
                "post": {
                    "summary": "Post a comment",
                    "security": bearer,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "maxLength": s.max_text}, "client_id": {"type": "string", "maxLength": 128}}}}},
                    },
                    "responses": {"201": _resp("The stored comment", {"$ref": "#/components/schemas/Comment"}), **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503)},
                },
                "get": {
                    "summary": "History (newest first, ?before=&limit=) or long-poll (?after=&wait=)",
                    "parameters": [
                        _q("before", ID, "history: comments older than this id"),
                        _q("limit", {"type": "integer", "minimum": 1, "maximum": s.history_max}, "history page size"),
                        _q("after", ID, "long-poll: comments newer than this id"),
                        _q("wait", {"type": "number", "minimum": 0, "maximum": s.longpoll_max_s}, "long-poll: seconds to hold"),
                        _q("token", {"type": "string"}, "see your own shadowed comments"),
                    ],
                    "responses": {
                        "200": _resp("A page (history) or what came after the cursor (long-poll)", {"type": "object", "required": ["comments"], "properties": {"comments": comment_list, "removed": {"type": "array", "items": ID}, "next": {"type": ["string", "null"]}}}),
                        **_errors(400, 401, 404),
                    },
                },
            },
            "/v1/videos/{video_id}/comments/{comment_id}": {
                "parameters": [VIDEO, {"name": "comment_id", "in": "path", "required": True, "schema": ID}],
                "delete": {"summary": "Delete (author, streamer, moderator)", "security": bearer, "responses": {"204": _resp("Removed everywhere"), **_errors(400, 401, 403, 404, 503)}},
            },
            "/v1/videos/{video_id}/comments/{comment_id}/reactions": {
                "parameters": [VIDEO, {"name": "comment_id", "in": "path", "required": True, "schema": ID}],
                "post": {"summary": "React to a comment (sampling prefers comments with reactions)", "security": bearer, "responses": {"202": _resp("Counted", {"type": "object"}), **_errors(400, 401, 404, 429, 503)}},
            },
            "/v1/videos/{video_id}/events": {
                "parameters": [VIDEO],
                "get": {
                    "summary": "Server-Sent Events: comment, remove, mode, gap, goaway, reset",
                    "parameters": [
                        _q("backlog", {"type": "integer", "minimum": 0, "maximum": s.backlog_max}, "recent comments on connect"),
                        _q("last_event_id", ID, "replay after this id (or the Last-Event-ID header)"),
                        _q("token", {"type": "string"}, "identify the watcher"),
                    ],
                    "responses": {"200": _resp("An endless event stream", {"type": "string"}, "text/event-stream"), **_errors(400, 401, 404)},
                },
            },
            "/v1/videos/{video_id}/ws": {
                "parameters": [VIDEO],
                "get": {"summary": "WebSocket carrying the same events as JSON text frames", "responses": {"101": _resp("Switching protocols"), **_errors(400, 401, 404)}},
            },
            "/v1/videos/{video_id}/snapshot.json": {
                "parameters": [VIDEO],
                "get": {"summary": "The CDN tier's snapshot (Cache-Control max-age=1, ETag, 304)", "responses": {"200": _resp("Latest comments and removals", {"type": "object"}), "304": _resp("Not modified"), **_errors(404)}},
            },
            "/v1/videos/{video_id}/stats": {
                "parameters": [VIDEO],
                "get": {"summary": "Viewers, velocity and mode", "responses": {"200": _resp("Stats", {"type": "object", "properties": {"viewers": {"type": "integer"}, "comments_per_s": {"type": "number"}, "mode": {"type": "string"}}}), **_errors(404)}},
            },
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": _resp("ok")}}},
            "/readyz": {"get": {"summary": "Dependencies reachable", "responses": {"200": _resp("ready"), "503": _resp("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": _resp("text format", {"type": "string"}, "text/plain")}}},
            "/watch/{video_id}": {"parameters": [VIDEO], "get": {"summary": "The browser page", "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"), **_errors(404)}}},
        },
    }
