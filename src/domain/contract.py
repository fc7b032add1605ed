"""The public contract's request bodies, defined once: the rules the server enforces and
the JSON Schema that describes them come from the same place.

Each request body is a frozen attrs class. Its fields carry their JSON Schema (``prop``:
a function of ``Settings``, for limits that are settings), and its ``parse`` applies the
same rules with the contract's error codes. The lean path and the Quart routes parse
bodies with these classes; ``transport.openapi`` generates the request schemas from
them (``body_schema``), so a limit such as a name's 40 characters is written once.

Character rules ("printable", "no control or unassigned characters") are Python's
``unicodedata`` categories; the schema says the same thing as a character class built
from this interpreter's Unicode tables (``comment_text_pattern``, ``printable_pattern``),
so what a schema-driven client generates is what the server accepts
(tests/e2e/test_openapi_exact.py holds them to the checks, code point by code point).
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import attrs

from domain.errors import Unprocessable
from domain.ids import MAX_ID
from domain.model import VIDEO_ID_RE
from domain.moderation import BAN_MODES, BanMode
from domain.settings import Settings

Schema = dict[str, Any]

CLIENT_ID_MAX = 128
NAME_MAX = 40
USER_ID_MAX = 128
REASON_MAX = 500
SLOW_MODE_MAX_S = 3600
LOG_PAGE_MAX = 200  # moderation-log entries per page
VIDEO_ID_PATTERN = f"^{VIDEO_ID_RE.pattern}$"

# Format characters a comment may carry: joiners (emoji sequences, Indic scripts) and
# the plain direction marks. Overrides and isolates (U+202A-202E, U+2066-2069), which can
# make a comment display as something else, are refused with the other format characters.
ALLOWED_FORMAT = frozenset("\u200c\u200d\u200e\u200f")


def _text_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return not ((cat in ("Cc", "Cs", "Co", "Cn") and ch not in "\n\t") or (cat == "Cf" and ch not in ALLOWED_FORMAT))


# -- the rules ------------------------------------------------------------------------------


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True



def clean_text(text: object, max_chars: int) -> str:
    """The comment text as stored: line ends as ``\\n``, NFC, trimmed; no control,
    private-use, unassigned or format characters (but joiners and direction marks)."""
    if not isinstance(text, str):
        raise Unprocessable("text must be a string", code="invalid_text")
    if not _encodable(text):
        raise Unprocessable("text is not valid Unicode text", code="invalid_text")
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text or not any(ch not in ALLOWED_FORMAT and not ch.isspace() for ch in text):
        raise Unprocessable("text is empty", code="empty_text")
    if len(text) > max_chars:
        raise Unprocessable(f"text is longer than {max_chars} characters", code="text_too_long")
    if not all(_text_char(ch) for ch in text):
        raise Unprocessable("text contains control, format or unassigned characters", code="invalid_text")
    return text


def clean_client_id(client_id: object) -> str | None:
    if client_id is None:
        return None
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= CLIENT_ID_MAX or not client_id.isprintable():
        raise Unprocessable(f"client_id must be a printable string of 1-{CLIENT_ID_MAX} characters", code="invalid_client_id")
    return client_id


def clean_name(name: object) -> str:
    stripped = name.strip() if isinstance(name, str) else ""
    if not 1 <= len(stripped) <= NAME_MAX or not stripped.isprintable():
        raise Unprocessable(f"name must be 1-{NAME_MAX} printable characters", code="invalid_name")
    return stripped


def check_user_id(value: object, what: str = "user_id") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= USER_ID_MAX or not value.isprintable():
        raise Unprocessable(f"{what} must be a printable string of 1-{USER_ID_MAX} characters", code="invalid_user_id")
    return value


# -- their schemas --------------------------------------------------------------------------
#
# Patterns are written in the subset of regular expressions that ECMA-262 (with the ``u``
# flag, as JSON Schema 2020-12 reads them) and Python's ``re`` read alike: character
# classes of ``\uXXXX`` escapes (code points above U+FFFF literally), ``{m,n}`` and
# lookahead; ``$`` never meets a trailing newline that a pattern does not consume.
# Building the classes walks Unicode once (about a second): ``transport.openapi`` builds
# its document once, off the event loop.


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
    """A character a comment may contain (``clean_text``'s rule) that NFC leaves one
    character (the few it expands, never found in NFC text, are left out, so that the
    length the pattern counts is the one checked)."""
    if not _text_char(ch):
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
    ``n`` (leading zeros allowed, as ``domain.params.parse_id`` takes them)."""
    digits = str(n)
    width = len(digits)
    alternatives = [f"[0-9]{{1,{width - 1}}}"] if width > 1 else []
    for i, d in enumerate(digits):
        if d != "0":
            rest = width - i - 1
            alternatives.append(digits[:i] + (f"[0-{int(d) - 1}]" if d != "1" else "0") + (f"[0-9]{{{rest}}}" if rest else ""))
    alternatives.append(digits)
    return "(?:" + "|".join(alternatives) + ")"


def cursor_schema(*, blank_is_absent: bool) -> Schema:
    """A cursor as ``parse_id`` reads it: surrounding spaces are trimmed."""
    space = space_class()
    core = f"{space}*{decimal_at_most(MAX_ID)}{space}*"
    return {"type": "string", "pattern": f"^(?:{core})?$" if blank_is_absent else f"^{core}$"}


def text_schema(s: Settings) -> Schema:
    return {
        "type": "string",
        "pattern": comment_text_pattern(s.max_text),
        "description": (
            f"at most {s.max_text} characters once trimmed (a line end counts one); more than white space; "
            "no control (but newline and tab), private-use, unassigned or format characters (but U+200C-200F)"
        ),
    }


def client_id_schema(_s: Settings) -> Schema:
    return {
        "type": ["string", "null"],
        "pattern": printable_pattern(CLIENT_ID_MAX),
        "description": f"1-{CLIENT_ID_MAX} printable characters, echoed in the comment",
    }


def name_schema(_s: Settings) -> Schema:
    return {
        "type": "string",
        "pattern": printable_pattern(NAME_MAX, trimmed=True),
        "description": f"1-{NAME_MAX} printable characters once surrounding spaces are trimmed",
    }


def user_id_schema(_s: Settings) -> Schema:
    return {"type": "string", "pattern": printable_pattern(USER_ID_MAX), "description": f"1-{USER_ID_MAX} printable characters"}


# -- request bodies -------------------------------------------------------------------------


def prop(schema: Callable[[Settings], Schema]) -> Any:
    """A body field and its JSON Schema (required unless the field has a default)."""
    return {"schema": schema}



class Body:
    """A JSON request body: ``parse`` (the rules, with the contract's errors) and
    ``body_schema`` (the same rules as JSON Schema)."""

    NAME: ClassVar[str]

    @classmethod
    def body_schema(cls, s: Settings) -> Schema:
        props: Schema = {}
        required: list[str] = []
        for f in attrs.fields(cast(Any, cls)):
            props[f.name] = f.metadata["schema"](s)
            if f.default is attrs.NOTHING:
                required.append(f.name)
        return {"type": "object", "required": required, "properties": props}


@attrs.frozen
class PostComment(Body):
    """``POST /v1/videos/{video_id}/comments``. The text and client id are checked by
    ``CommentService.post`` after the bans (403 comes before 422), with the rules above."""

    NAME: ClassVar[str] = "PostComment"
    text: object = attrs.field(metadata=prop(text_schema))
    client_id: object = attrs.field(default=None, metadata=prop(client_id_schema))

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> PostComment:
        return cls(body.get("text"), body.get("client_id"))


@attrs.frozen
class GuestSignIn(Body):
    """``POST /v1/auth/guest``."""

    NAME: ClassVar[str] = "GuestSignIn"
    name: str = attrs.field(metadata=prop(name_schema))

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> GuestSignIn:
        return cls(clean_name(body.get("name")))


@attrs.frozen
class BanRequest(Body):
    """``POST /v1/videos/{video_id}/bans`` and ``POST /v1/bans``."""

    NAME: ClassVar[str] = "BanRequest"
    user_id: str = attrs.field(metadata=prop(user_id_schema))
    mode: BanMode = attrs.field(metadata=prop(lambda _s: {"enum": list(BAN_MODES)}))
    reason: str | None = attrs.field(
        default=None,
        metadata=prop(
            lambda _s: {
                "type": ["string", "null"],
                "maxLength": REASON_MAX,
                "pattern": "^[^\\ud800-\\udfff]*$",
                "description": f"at most {REASON_MAX} characters (no lone surrogate)",
            }
        ),
    )

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> BanRequest:
        user_id = check_user_id(body.get("user_id"))
        mode = body.get("mode")
        if mode not in BAN_MODES:
            raise Unprocessable('mode must be "shadow" or "overt"', code="invalid_mode")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX):
            raise Unprocessable(f"reason must be a string of at most {REASON_MAX} characters", code="invalid_reason")
        if isinstance(reason, str) and not _encodable(reason):
            # A lone surrogate (JSON "\ud800") cannot be stored (the store would fail).
            raise Unprocessable("reason is not valid Unicode text", code="invalid_reason")
        return cls(user_id, cast(BanMode, mode), (reason.strip() or None) if isinstance(reason, str) else None)


@attrs.frozen
class SettingsRequest(Body):
    """``PUT /v1/videos/{video_id}/settings``."""

    NAME: ClassVar[str] = "SettingsRequest"
    slow_mode_s: int = attrs.field(
        metadata=prop(lambda _s: {"type": "integer", "minimum": 0, "maximum": SLOW_MODE_MAX_S})
    )

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> SettingsRequest:
        value = body.get("slow_mode_s")
        if isinstance(value, float) and value.is_integer():
            # 60.0 is the JSON number 60 (JSON Schema's "integer" says so too).
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SLOW_MODE_MAX_S:
            raise Unprocessable(
                f"slow_mode_s must be a whole number of seconds from 0 to {SLOW_MODE_MAX_S}", code="invalid_settings"
            )
        return cls(value)


BODIES: tuple[type[Body], ...] = (PostComment, GuestSignIn, BanRequest, SettingsRequest)
