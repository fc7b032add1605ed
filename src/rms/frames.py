"""Wire encodings of stream events, computed once per comment or per batch, never per viewer.

Three encodings share one event model:
- ``SSE``: ``text/event-stream`` frames, wrapped in one HTTP/1.1 chunk per write (the lean
  path writes the chunk itself, so the chunk header is computed once per batch too);
- ``SSE_PLAIN``: the same frames without chunking (the ASGI fallback path, where the
  server does the chunking);
- ``WS``: one unmasked WebSocket text frame per event, made by wsproto. Server frames
  are unmasked and we negotiate no extensions, so the bytes are the same for every
  connection and can be shared.
"""

from __future__ import annotations

import enum
import functools
import json
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from domain.model import Comment


class Encoding(enum.IntEnum):
    SSE = 0
    SSE_PLAIN = 1
    WS = 2


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# A server-side wsproto connection in the OPEN state, used only to encode frames.
_WS_ENCODER = Connection(ConnectionType.SERVER)


def ws_frame(obj: dict[str, Any]) -> bytes:
    return _WS_ENCODER.send(TextMessage(data=dumps(obj).decode()))


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (empty data would end the body, so it is never chunked)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def sse_event(event: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n"
    if event_id is not None:
        head += b"id: " + event_id.encode() + b"\n"
    return head + b"data: " + dumps(data) + b"\n\n"


class Entry:
    """A comment with its encodings, made once when it enters a room's ring."""

    __slots__ = ("_ws", "comment", "id", "reactions", "sse")

    def __init__(self, comment: Comment) -> None:
        self.comment = comment
        self.id = comment.id
        self.reactions = 0
        self.sse = sse_event("comment", comment.to_json(), str(comment.id))
        self._ws: bytes | None = None

    @property
    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = ws_frame({"type": "comment", **self.comment.to_json()})
        return self._ws

    def frame(self, encoding: Encoding) -> bytes:
        return self.ws if encoding is Encoding.WS else self.sse


def control(event: str, data: dict[str, Any], encoding: Encoding) -> bytes:
    """A control event (remove, mode, gap, goaway, reset) in one encoding, ready to write."""
    if encoding is Encoding.WS:
        return ws_frame({"type": event, **data})
    frame = sse_event(event, data)
    return chunk(frame) if encoding is Encoding.SSE else frame


def wrap(encoding: Encoding, frames: bytes) -> bytes:
    """Frames of one encoding joined, made ready to write (chunked for the lean SSE path)."""
    return chunk(frames) if encoding is Encoding.SSE else frames


def join(entries: list[Entry], encoding: Encoding) -> bytes:
    if encoding is Encoding.WS:
        return b"".join([e.ws for e in entries])
    return b"".join([e.sse for e in entries])


HEARTBEAT_SSE = b":\n\n"


def heartbeat(encoding: Encoding) -> bytes:
    if encoding is Encoding.WS:
        return b""  # WebSocket keeps itself alive with pings from the client side
    return chunk(HEARTBEAT_SSE) if encoding is Encoding.SSE else HEARTBEAT_SSE


@functools.cache
def gap_encoder(encoding: Encoding) -> Any:
    def encode(missed: int) -> bytes:
        return control("gap", {"missed": missed}, encoding)

    return encode
