"""The OpenAPI 3.1 description served at ``/openapi.json`` (written by hand, kept beside
the routes it describes; tests compare it with the app's routes).

What a request may carry is said exactly: the limits are the constants the checks use
(imported, never repeated), and the character rules are patterns computed from the same
predicates on this interpreter's Unicode database (see "what the checks accept" below;
tests/e2e/test_openapi_exact.py holds them to the checks and to the running server).
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from collections.abc import Callable
from typing import Any

from ingest.moderation import REASON_MAX, SLOW_MODE_MAX_S, USER_ID_MAX
from ingest.moderation_web import LOG_LIMIT_MAX
from ingest.service import ALLOWED_FORMAT, CLIENT_ID_MAX
from ingest.web import NAME_MAX
from livecomments.config import Settings
from livecomments.ids import MAX_ID
from livecomments.model import VIDEO_ID_RE
from livecomments.store.moderation import BAN_MODES

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


# -- what the checks accept --------------------------------------------------------------------
#
# Patterns are written in the subset of regular expressions that ECMA-262 (with the ``u``
# flag, as JSON Schema 2020-12 reads them) and Python's ``re`` read alike: character
# classes of ``\uXXXX`` escapes (code points above U+FFFF literally), ``{m,n}`` and
# lookahead; ``$`` never meets a trailing newline that a pattern does not consume.


def _esc(cp: int) -> str:
    return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)


def _char_class(members: Callable[[str], bool], lo: int = 0, hi: int = sys.maxunicode) -> str:
    """A character class of the code points (``lo``-``hi``) for which ``members`` holds."""
    parts: list[str] = []
    start = -1
    for cp in range(lo, hi + 2):
        inside = cp <= hi and members(chr(cp))
        if inside and start < 0:
            start = cp
        elif not inside and start >= 0:
            parts.append(_esc(start) if cp - 1 == start else f"{_esc(start)}-{_esc(cp - 1)}")
            start = -1
    return "[" + "".join(parts) + "]"


def text_char_allowed(ch: str) -> bool:
    """A character a comment may contain (``ingest.service.clean_text``'s rule: no control,
    surrogate, private-use, unassigned or format character but tab, newline and
    ``ALLOWED_FORMAT``), that NFC leaves one character (the few it expands, never found in
    NFC text, are left out, so that the length the pattern counts is the one checked)."""
    cat = unicodedata.category(ch)
    if (cat in ("Cc", "Cs", "Co", "Cn") and ch not in "\n\t") or (cat == "Cf" and ch not in ALLOWED_FORMAT):
        return False
    return unicodedata.is_normalized("NFC", ch) or len(unicodedata.normalize("NFC", ch)) == 1


@functools.cache
def space_class() -> str:
    """What ``str.strip()`` removes (``str.isspace``)."""
    return _char_class(str.isspace, 0, 0x3000)


@functools.cache
def _blank_class() -> str:
    """Spaces and the format characters a comment may carry: what an empty comment is."""
    return _char_class(lambda ch: ch.isspace() or ch in ALLOWED_FORMAT, 0, 0x3000)


@functools.cache
def _text_class() -> str:
    """What may stand between the ends of a comment (``\\r`` is a line end: see below)."""
    return _char_class(lambda ch: ch != "\r" and text_char_allowed(ch))


@functools.cache
def _printable_class() -> str:
    return _char_class(str.isprintable)


@functools.cache
def comment_text_pattern(max_text: int) -> str:
    """``clean_text``: trimmed of spaces (``str.strip``), not empty (more than spaces and
    format characters), at most ``max_text`` characters where a line end (CR LF, CR or
    LF) counts one, none of them refused."""
    space = space_class()
    units = f"(?:\\r\\n|\\r(?!\\n)|{_text_class()})"
    return f"^{space}*(?!{_blank_class()}*$){units}{{1,{max_text}}}{space}*$"


@functools.cache
def printable_pattern(max_len: int, *, trimmed: bool = False) -> str:
    """1 to ``max_len`` printable characters (``str.isprintable``); ``trimmed``: counted
    after ``str.strip()``, as guest names are."""
    if not trimmed:
        return f"^{_printable_class()}{{1,{max_len}}}$"
    space = space_class()
    return f"^{space}*(?!{space}*$){_printable_class()}{{1,{max_len}}}{space}*$"


def decimal_at_most(n: int) -> str:
    """A regex (no anchors) for 1 to len(str(n)) decimal digits whose value is at most
    ``n`` (leading zeros allowed, as ``rms.params.parse_id`` takes them)."""
    digits = str(n)
    width = len(digits)
    alternatives = [f"[0-9]{{1,{width - 1}}}"] if width > 1 else []
    for i, d in enumerate(digits):
        if d != "0":
            rest = width - i - 1
            alternatives.append(digits[:i] + (f"[0-{int(d) - 1}]" if d != "1" else "0") + (f"[0-9]{{{rest}}}" if rest else ""))
    alternatives.append(digits)
    return "(?:" + "|".join(alternatives) + ")"


VIDEO = {
    "name": "video_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": f"^{VIDEO_ID_RE.pattern}$", "minLength": 1, "maxLength": 64},
}
ID = {"type": "string", "pattern": f"^{decimal_at_most(MAX_ID)}$", "description": "a 63-bit id, decimal digits"}


def _cursor(*, blank_is_absent: bool) -> dict[str, Any]:
    """A cursor parameter as ``parse_id`` reads it: surrounding spaces are trimmed."""
    space = space_class()
    core = f"{space}*{decimal_at_most(MAX_ID)}{space}*"
    return {"type": "string", "pattern": f"^(?:{core})?$" if blank_is_absent else f"^{core}$"}


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
                "UserId": {"type": "string", "pattern": printable_pattern(USER_ID_MAX), "description": f"1-{USER_ID_MAX} printable characters"},
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
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {
                                        "name": {
                                            "type": "string",
                                            "pattern": printable_pattern(NAME_MAX, trimmed=True),
                                            "description": f"1-{NAME_MAX} printable characters once surrounding spaces are trimmed",
                                        }
                                    },
                                }
                            }
                        },
                    },
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
                        "description": f"At most {s.max_body} bytes (LIVECOMMENTS_MAX_BODY), else 413.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["text"],
                                    "properties": {
                                        "text": {
                                            "type": "string",
                                            "pattern": comment_text_pattern(s.max_text),
                                            "description": (
                                                f"1-{s.max_text} characters (LIVECOMMENTS_MAX_TEXT) once surrounding spaces "
                                                "are trimmed, a line end (CR LF, CR, LF) counting one, and more than spaces "
                                                "and format characters; no control (but tab and line ends), surrogate, "
                                                "private-use, unassigned or format character (but U+200C-U+200F), in Unicode "
                                                f"{unicodedata.unidata_version}. The server stores the text NFC-normalized "
                                                "and counts it so; the pattern counts the text as sent, so it is exact for "
                                                "NFC text (and leaves out the few characters NFC expands)."
                                            ),
                                        },
                                        "client_id": {
                                            "type": ["string", "null"],
                                            "pattern": printable_pattern(CLIENT_ID_MAX),
                                            "description": f"1-{CLIENT_ID_MAX} printable characters, echoed in the comment",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"201": _resp("The stored comment", {"$ref": "#/components/schemas/Comment"}), **_errors(400, 401, 403, 404, 413, 415, 422, 429, 503)},
                },
                "get": {
                    "summary": "History (newest first, ?before=&limit=) or long-poll (?after=&wait=)",
                    "parameters": [
                        _q("before", _cursor(blank_is_absent=True), "history: comments older than this id"),
                        _q("limit", {"type": "integer", "minimum": 1, "maximum": s.history_max}, "history page size"),
                        _q("after", _cursor(blank_is_absent=False), "long-poll: comments newer than this id"),
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
                "parameters": [VIDEO, {"name": "comment_id", "in": "path", "required": True, "schema": _cursor(blank_is_absent=False)}],
                "delete": {"summary": "Delete (author, streamer, moderator)", "security": bearer, "responses": {"204": _resp("Removed everywhere"), **_errors(400, 401, 403, 404, 503)}},
            },
            "/v1/videos/{video_id}/comments/{comment_id}/reactions": {
                "parameters": [VIDEO, {"name": "comment_id", "in": "path", "required": True, "schema": _cursor(blank_is_absent=False)}],
                "post": {"summary": "React to a comment (sampling prefers comments with reactions)", "security": bearer, "responses": {"202": _resp("Counted", {"type": "object"}), **_errors(400, 401, 403, 404, 429, 503)}},
            },
            "/v1/videos/{video_id}/events": {
                "parameters": [VIDEO],
                "get": {
                    "summary": "Server-Sent Events: comment, remove, mode, gap, goaway, reset",
                    "parameters": [
                        _q("backlog", {"type": "integer", "minimum": 0, "maximum": s.backlog_max}, "recent comments on connect"),
                        _q("last_event_id", _cursor(blank_is_absent=True), "replay after this id (or the Last-Event-ID header)"),
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
            **moderation_paths(s),
            "/healthz": {"get": {"summary": "Alive", "responses": {"200": _resp("ok")}}},
            "/readyz": {"get": {"summary": "Dependencies reachable", "responses": {"200": _resp("ready"), "503": _resp("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": _resp("text format", {"type": "string"}, "text/plain")}}},
            "/watch/{video_id}": {"parameters": [VIDEO], "get": {"summary": "The browser page", "responses": {"200": _resp("HTML", {"type": "string"}, "text/html"), **_errors(404)}}},
        },
    }


# -- moderation ---------------------------------------------------------------------------

USER = {"name": "user_id", "in": "path", "required": True, "schema": {"$ref": "#/components/schemas/UserId"}}

MODERATION_SCHEMAS: dict[str, Any] = {
    "Ban": {
        "type": "object",
        "required": ["video_id", "user_id", "mode", "actor", "created_at"],
        "properties": {
            "video_id": {"type": ["string", "null"], "description": "null for a global ban"},
            "user_id": {"type": "string"},
            "mode": {"enum": list(BAN_MODES)},
            "reason": {"type": ["string", "null"]},
            "actor": {"type": "string", "description": "who banned"},
            "created_at": {"type": "integer"},
        },
    },
    "BanRequest": {
        "type": "object",
        "required": ["user_id", "mode"],
        "properties": {
            "user_id": {"$ref": "#/components/schemas/UserId"},
            "mode": {"enum": list(BAN_MODES)},
            "reason": {
                "type": ["string", "null"],
                "maxLength": REASON_MAX,
                "pattern": "^[^\\ud800-\\udfff]*$",
                "description": f"at most {REASON_MAX} characters (no lone surrogate)",
            },
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
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    ban = {"$ref": "#/components/schemas/Ban"}
    ban_body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BanRequest"}}}}
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
        _q("before", _cursor(blank_is_absent=True), "entries older than this entry id"),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": LOG_LIMIT_MAX}, "page size (default 50)"),
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
            "parameters": [VIDEO, USER],
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
            "parameters": [USER],
            "delete": {"summary": "Lift a global ban (admin)", "security": bearer, "responses": {"204": _resp("Lifted"), **_errors(401, 403, 404, 503)}},
        },
        "/v1/videos/{video_id}/settings": {
            "parameters": [VIDEO],
            "get": {"summary": "This video's settings (slow mode)", "responses": {"200": _resp("Settings", settings), **_errors(404)}},
            "put": {
                "summary": "Set slow mode (streamer, moderator): one comment per N seconds per user, 0 turns it off; the streamer and moderators are exempt",
                "security": bearer,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object", "required": ["slow_mode_s"], "properties": {"slow_mode_s": {"type": "integer", "minimum": 0, "maximum": SLOW_MODE_MAX_S}}}}},
                },
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
