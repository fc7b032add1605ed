"""The public contract's request bodies, defined once: the rules the server enforces and
the JSON Schema that describes them come from the same place.

Each request body is a frozen attrs class. Its fields carry their JSON Schema (``prop``:
a function of ``Settings``, for limits that are settings), and its ``parse`` applies the
same rules with the contract's error codes. The lean path and the Quart routes parse
bodies with these classes; ``transport.openapi`` generates the request schemas from
them (``body_schema``), so a limit such as a name's 40 characters is written once.

Character rules ("printable", "no control or unassigned characters") are Python's
``unicodedata`` categories; the schema says the same thing as a character class built
from this interpreter's Unicode tables (``_char_classes``), so what a schema-driven client
generates is what the server accepts.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

import attrs

from domain.errors import Unprocessable
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
ID_PATTERN = "^[0-9]{1,19}$"

# Format characters a comment may carry: joiners (emoji sequences, Indic scripts) and
# the plain direction marks. Overrides and isolates (U+202A-202E, U+2066-2069), which can
# make a comment display as something else, are refused with the other format characters.
ALLOWED_FORMAT = frozenset("\u200c\u200d\u200e\u200f")


def _text_char(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return not ((cat in ("Cc", "Cs", "Co", "Cn") and ch not in "\n\t") or (cat == "Cf" and ch not in ALLOWED_FORMAT))


# -- the rules ------------------------------------------------------------------------------


def clean_text(text: object, max_chars: int) -> str:
    """The comment text as stored: line ends as ``\\n``, NFC, trimmed; no control,
    private-use, unassigned or format characters (but joiners and direction marks)."""
    if not isinstance(text, str):
        raise Unprocessable("text must be a string", code="invalid_text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Unprocessable("text is not valid Unicode text", code="invalid_text") from None
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


@functools.cache
def _char_classes() -> tuple[str, str, str, str]:
    """Regex character classes of every code point that (text, visible text, printable,
    visible printable) accept, as literal characters (the escapes for astral code points
    differ between Python and ECMA-262; literal characters read the same in both). One
    pass over Unicode, under a second: ``transport.openapi`` builds its document once,
    off the event loop."""
    parts: tuple[list[str], ...] = ([], [], [], [])
    start: list[int | None] = [None, None, None, None]

    def lit(cp: int) -> str:
        ch = chr(cp)
        return "\\" + ch if ch in "\\]^-[" else ch

    category, control = unicodedata.category, ("Cc", "Cs", "Co", "Cn")
    for cp in range(0x110001):
        if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
            flags: tuple[bool, ...] = (False, False, False, False)
        else:
            ch = chr(cp)
            cat = category(ch)
            text = not ((cat in control and ch not in "\n\t") or (cat == "Cf" and ch not in ALLOWED_FORMAT))
            space = ch.isspace()
            printable = ch.isprintable()
            flags = (text, text and not space and ch not in ALLOWED_FORMAT, printable, printable and not space)
        for i, ok in enumerate(flags):
            s = start[i]
            if ok and s is None:
                start[i] = cp
            elif not ok and s is not None:
                parts[i].append(lit(s) if s == cp - 1 else f"{lit(s)}-{lit(cp - 1)}")
                start[i] = None
    text_c, visible_text_c, printable_c, visible_printable_c = ("[" + "".join(p) + "]" for p in parts)
    return text_c, visible_text_c, printable_c, visible_printable_c


def text_schema(s: Settings) -> Schema:
    t, v, _, _ = _char_classes()
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": s.max_text,
        "pattern": f"^{t}*{v}{t}*$",
        "description": (
            f"at most {s.max_text} characters after trimming and NFC normalisation; at least one that is not "
            "white space; no control (but newline and tab), private-use, unassigned or format characters "
            "(but U+200C-200F)"
        ),
    }


def client_id_schema(_s: Settings) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": CLIENT_ID_MAX, "pattern": f"^{_char_classes()[2]}+$"}


def name_schema(_s: Settings) -> Schema:
    _, _, p, v = _char_classes()
    return {
        "type": "string",
        "pattern": f"^\\s*{v}({p}{{0,{NAME_MAX - 2}}}{v})?\\s*$",
        "description": f"1-{NAME_MAX} printable characters once trimmed",
    }


def user_id_schema(_s: Settings) -> Schema:
    return {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX, "pattern": f"^{_char_classes()[2]}+$"}


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
        default=None, metadata=prop(lambda _s: {"type": "string", "maxLength": REASON_MAX})
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
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SLOW_MODE_MAX_S:
            raise Unprocessable(
                f"slow_mode_s must be a whole number of seconds from 0 to {SLOW_MODE_MAX_S}", code="invalid_settings"
            )
        return cls(value)


BODIES: tuple[type[Body], ...] = (PostComment, GuestSignIn, BanRequest, SettingsRequest)
