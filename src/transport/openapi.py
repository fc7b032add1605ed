"""The OpenAPI 3.1 description served at ``/openapi.json``.

The request bodies' schemas are generated from ``domain.contract`` (the classes the
routes parse bodies with), and every limit comes from where it is enforced (settings,
``domain.contract``); the paths and the responses are written here, beside the routes
they describe (tests/e2e/test_ops.py compares them with the app's routes, both ways, and
tests/e2e/test_openapi_exact.py holds the patterns to the checks and posts bodies generated
from the served document)."""

from __future__ import annotations

from typing import Any

from domain.contract import (
    BODIES,
    LOG_PAGE_MAX,
    SLOW_MODE_MAX_S,
    VIDEO_ID_PATTERN,
    BanRequest,
    GuestSignIn,
    PostComment,
    SettingsRequest,
    cursor_schema,
    decimal_at_most,
    user_id_schema,
)
from domain.ids import MAX_ID
from domain.settings import Settings

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
        426: "WebSocket version other than 13 (Sec-WebSocket-Version: 13 says which one)",
        429: "Rate limited (Retry-After header)",
        503: "Temporarily unavailable, or too many rooms on this node (Retry-After header)",
    }
    return {str(c): _resp(names[c], _ERR) for c in codes}


VIDEO = {"name": "video_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": VIDEO_ID_PATTERN}}
ID = {"type": "string", "pattern": f"^{decimal_at_most(MAX_ID)}$", "description": "a 63-bit id, decimal digits"}


def _body(cls: type[Any], s: Settings) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"At most {s.max_body} bytes (LIVECOMMENTS_MAX_BODY), else 413.",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{cls.NAME}"}}},
    }


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
                **MODERATION_SCHEMAS,
                **{cls.NAME: cls.body_schema(s) for cls in BODIES},
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
                    "requestBody": _body(GuestSignIn, s),
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
                    "requestBody": _body(PostComment, s),
                    "responses": {"201": _resp("The stored comment", {"$ref": "#/components/schemas/Comment"}), **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503)},
                },
                "get": {
                    "summary": "History (newest first, ?before=&limit=) or long-poll (?after=&wait=)",
                    "parameters": [
                        _q("before", cursor_schema(blank_is_absent=True), "history: comments older than this id"),
                        _q("limit", {"type": "integer", "minimum": 1, "maximum": s.history_max}, "history page size"),
                        _q("after", cursor_schema(blank_is_absent=False), "long-poll: comments newer than this id"),
                        _q("wait", {"type": "number", "minimum": 0, "maximum": s.longpoll_max_s}, "long-poll: seconds to hold"),
                        _q("token", {"type": "string"}, "see your own shadowed comments"),
                    ],
                    "responses": {
                        "200": _resp("A page (history) or what came after the cursor (long-poll)", {"type": "object", "required": ["comments"], "properties": {"comments": comment_list, "removed": {"type": "array", "items": ID}, "next": {"type": ["string", "null"]}}}),
                        **_errors(400, 401, 404, 503),
                    },
                },
            },
            "/v1/videos/{video_id}/comments/{comment_id}": {
                "parameters": [VIDEO, {"name": "comment_id", "in": "path", "required": True, "schema": cursor_schema(blank_is_absent=False)}],
                "delete": {"summary": "Delete (author, streamer, moderator)", "security": bearer, "responses": {"204": _resp("Removed everywhere"), **_errors(400, 401, 403, 404, 503)}},
            },
            "/v1/videos/{video_id}/comments/{comment_id}/reactions": {
                "parameters": [VIDEO, {"name": "comment_id", "in": "path", "required": True, "schema": cursor_schema(blank_is_absent=False)}],
                "post": {"summary": "React to a comment (sampling prefers comments with reactions)", "security": bearer, "responses": {"202": _resp("Counted", {"type": "object"}), **_errors(400, 401, 403, 404, 429, 503)}},
            },
            "/v1/videos/{video_id}/events": {
                "parameters": [VIDEO],
                "get": {
                    "summary": "Server-Sent Events: comment, remove, mode, gap, goaway, reset",
                    "parameters": [
                        _q("backlog", {"type": "integer", "minimum": 0, "maximum": s.backlog_max}, "recent comments on connect"),
                        _q("last_event_id", cursor_schema(blank_is_absent=True), "replay after this id (or the Last-Event-ID header)"),
                        _q("token", {"type": "string"}, "identify the watcher"),
                        _q("shard", {"type": "integer", "minimum": 0, "maximum": s.spread_max_shards - 1}, "the shard of a spread video to watch through (see /spread; default 0)"),
                    ],
                    "responses": {"200": _resp("An endless event stream", {"type": "string"}, "text/event-stream"), **_errors(400, 401, 404, 503)},
                },
            },
            "/v1/videos/{video_id}/ws": {
                "parameters": [VIDEO],
                "get": {"summary": "WebSocket carrying the same events as JSON text frames", "responses": {"101": _resp("Switching protocols"), **_errors(400, 401, 404, 426, 503)}},
            },
            "/v1/videos/{video_id}/snapshot.json": {
                "parameters": [VIDEO],
                "get": {"summary": "The CDN tier's snapshot (Cache-Control max-age=1, ETag, 304)", "responses": {"200": _resp("Latest comments and removals", {"type": "object"}), "304": _resp("Not modified"), **_errors(404, 503)}},
            },
            "/v1/videos/{video_id}/spread": {
                "parameters": [VIDEO],
                "get": {"summary": "Over how many shards the video's viewers spread (Cache-Control max-age=1): watch with ?shard= one of 0..shards-1", "responses": {"200": _resp("The shard count", {"type": "object", "required": ["video_id", "shards"], "properties": {"video_id": {"type": "string"}, "shards": {"type": "integer", "minimum": 1}, "viewers": {"type": "array", "items": {"type": "integer"}, "description": "each shard's viewers (when more than one shard): pick emptier shards more often"}}}), **_errors(404)}},
            },
            "/v1/videos/{video_id}/stats": {
                "parameters": [VIDEO],
                "get": {"summary": "Viewers, velocity and mode", "responses": {"200": _resp("Stats", {"type": "object", "properties": {"viewers": {"type": "integer"}, "comments_per_s": {"type": "number"}, "mode": {"type": "string"}}}), **_errors(404)}},
            },
            **moderation_paths(s),
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": _resp("ok")}}},
            "/readyz": {"get": {"summary": "Dependencies reachable", "responses": {"200": _resp("ready"), "503": _resp("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": _resp("text format", {"type": "string"}, "text/plain")}}},
            "/watch/{video_id}": {"parameters": [VIDEO], "get": {"summary": "The browser page", "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"), **_errors(404)}}},
        },
    }


# -- moderation ---------------------------------------------------------------------------


MODERATION_SCHEMAS: dict[str, Any] = {
    "Ban": {
        "type": "object",
        "required": ["video_id", "user_id", "mode", "actor", "created_at"],
        "properties": {
            "video_id": {"type": ["string", "null"], "description": "null for a global ban"},
            "user_id": {"type": "string"},
            "mode": {"enum": ["shadow", "overt"]},
            "reason": {"type": ["string", "null"]},
            "actor": {"type": "string", "description": "who banned"},
            "created_at": {"type": "integer"},
        },
    },
    "VideoSettings": {
        "type": "object",
        "required": ["video_id", "slow_mode_s"],
        "properties": {"video_id": {"type": "string"}, "slow_mode_s": {"type": "integer", "minimum": 0, "maximum": SLOW_MODE_MAX_S}},
    },
    "LogEntry": {
        "type": "object",
        "required": ["id", "video_id", "created_at", "actor", "action"],
        "properties": {
            "id": ID,
            "video_id": {"type": ["string", "null"]},
            "created_at": {"type": "integer"},
            "actor": {"type": "string", "description": "a user id, or automod"},
            "action": {"enum": ["ban", "unban", "delete", "automod_remove", "settings"]},
            "target_user": {"type": ["string", "null"]},
            "comment_id": {"type": ["string", "null"]},
            "reason": {"type": ["string", "null"], "description": "the ban reason, or automod's rule"},
            "details": {"type": "object"},
        },
    },
}


def moderation_paths(s: Settings) -> dict[str, Any]:
    user = {"name": "user_id", "in": "path", "required": True, "schema": user_id_schema(s)}
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    ban = {"$ref": "#/components/schemas/Ban"}
    ban_body = _body(BanRequest, s)
    bans = _resp("Active bans", {"type": "object", "required": ["bans"], "properties": {"bans": {"type": "array", "items": ban}}})
    log_page = _resp(
        "Log entries, newest first",
        {
            "type": "object",
            "required": ["entries", "next"],
            "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/LogEntry"}}, "next": {"type": ["string", "null"]}},
        },
    )
    log_params = [
        _q("before", cursor_schema(blank_is_absent=True), "entries older than this entry id"),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": LOG_PAGE_MAX}, "page size (default 50)"),
    ]
    settings = {"$ref": "#/components/schemas/VideoSettings"}
    return {
        "/v1/videos/{video_id}/bans": {
            "parameters": [VIDEO],
            "post": {
                "summary": "Ban a user from this video (streamer, moderator): shadow (posts accepted, shown to them only) or overt (403)",
                "security": bearer,
                "requestBody": ban_body,
                "responses": {"201": _resp("The ban", ban), **_errors(400, 401, 403, 404, 413, 415, 422, 503)},
            },
            "get": {"summary": "This video's bans (streamer, moderator)", "security": bearer, "responses": {"200": bans, **_errors(401, 403, 404)}},
        },
        "/v1/videos/{video_id}/bans/{user_id}": {
            "parameters": [VIDEO, user],
            "delete": {"summary": "Lift a ban on this video (streamer, moderator)", "security": bearer, "responses": {"204": _resp("Lifted"), **_errors(401, 403, 404, 503)}},
        },
        "/v1/bans": {
            "post": {
                "summary": "Ban a user everywhere (admin)",
                "security": bearer,
                "requestBody": ban_body,
                "responses": {"201": _resp("The ban", ban), **_errors(400, 401, 403, 413, 415, 422, 503)},
            },
            "get": {"summary": "Global bans (admin)", "security": bearer, "responses": {"200": bans, **_errors(401, 403)}},
        },
        "/v1/bans/{user_id}": {
            "parameters": [user],
            "delete": {"summary": "Lift a global ban (admin)", "security": bearer, "responses": {"204": _resp("Lifted"), **_errors(401, 403, 404, 503)}},
        },
        "/v1/videos/{video_id}/settings": {
            "parameters": [VIDEO],
            "get": {"summary": "This video's settings (slow mode)", "responses": {"200": _resp("Settings", settings), **_errors(404)}},
            "put": {
                "summary": "Set slow mode (streamer, moderator): one comment per N seconds per user, 0 turns it off; the streamer and moderators are exempt",
                "security": bearer,
                "requestBody": _body(SettingsRequest, s),
                "responses": {"200": _resp("The new settings", settings), **_errors(400, 401, 403, 404, 413, 415, 422, 503)},
            },
        },
        "/v1/videos/{video_id}/moderation-log": {
            "parameters": [VIDEO],
            "get": {
                "summary": "Who did what, when and why on this video, newest first (streamer, moderator)",
                "security": bearer,
                "parameters": log_params,
                "responses": {"200": log_page, **_errors(400, 401, 403, 404, 503)},
            },
        },
        "/v1/moderation-log": {
            "get": {
                "summary": "Global decisions (global bans), newest first (moderator)",
                "security": bearer,
                "parameters": log_params,
                "responses": {"200": log_page, **_errors(400, 401, 403, 503)},
            },
        },
    }
