"""Wire encodings: WebSocket frames decode as a client sees them, chunks parse as HTTP/1.1, SSE per spec."""

from __future__ import annotations

import json
import re
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from domain.model import Author, Comment
from rms.frames import (
    HEARTBEAT_SSE,
    Encoding,
    Entry,
    chunk,
    control,
    dumps,
    gap_encoder,
    heartbeat,
    join,
    sse_event,
    wrap,
    ws_frame,
)

# --- decoders, written from the specs rather than from the code under test ---


def ws_decode(data: bytes) -> list[Any]:
    """Messages a WebSocket client reads from ``data`` (wsproto on the client side)."""
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    messages: list[Any] = []
    buf = ""
    for event in client.events():
        assert isinstance(event, TextMessage), event
        buf += event.data
        if event.message_finished:
            messages.append(json.loads(buf))
            buf = ""
    assert buf == "", "a message was left unfinished"
    return messages


def http_body(chunked: bytes) -> bytes:
    """The body an HTTP/1.1 client reads from chunked transfer coding (h11 on the client side)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n")
    body = b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return body
        elif event is h11.NEED_DATA:
            raise AssertionError("the chunked body is incomplete")


def sse_parse(stream: bytes) -> list[dict[str, str]]:
    """The WHATWG event-stream interpretation: dispatched events as {type, data, id}."""
    text = stream.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    events: list[dict[str, str]] = []
    data, etype, last_id = "", "", ""
    for line in re.split(r"\r\n|\r|\n", text)[:-1]:  # a trailing incomplete line is not processed
        if line == "":
            if data:
                events.append({"type": etype or "message", "data": data.removesuffix("\n"), "id": last_id})
            data, etype = "", ""
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data += value + "\n"
        elif field == "event":
            etype = value
        elif field == "id" and "\0" not in value:
            last_id = value
    return events


# --- strategies ---

json_text = st.text(max_size=60)  # any Unicode but surrogates, including newlines and U+2028
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | json_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4),
    max_leaves=8,
)
payloads = st.dictionaries(json_text, json_values, max_size=6)
comments = st.builds(
    Comment,
    id=st.integers(0, 2**63 - 1),
    video_id=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    author=st.builds(Author, id=st.text(min_size=1, max_size=20), name=st.text(max_size=20), verified=st.booleans()),
    text=st.text(min_size=1, max_size=300),
    created_at=st.integers(0, 2**45),
    client_id=st.none() | st.text(min_size=1, max_size=20),
)


# --- WebSocket ---


@settings(max_examples=30, deadline=None)
@given(payloads)
def test_ws_frame_decodes_as_a_client_to_the_same_json(obj: dict[str, Any]) -> None:
    frame = ws_frame(obj)
    assert ws_decode(frame) == [obj]
    assert frame[0] == 0x81  # FIN + text
    assert not frame[1] & 0x80  # server frames are unmasked


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_ws_frame_length_encodings(size: int) -> None:
    obj = {"text": "x" * size}
    assert ws_decode(ws_frame(obj)) == [obj]


def test_ws_frames_concatenate_into_consecutive_messages() -> None:
    objs = [{"n": i, "t": "é" * i} for i in range(5)]
    assert ws_decode(b"".join(ws_frame(o) for o in objs)) == objs


def test_ws_frames_are_the_same_bytes_every_time() -> None:
    assert ws_frame({"a": 1}) == ws_frame({"a": 1})


# --- chunks ---


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_chunks_parse_as_http_chunked_transfer_coding(parts: list[bytes]) -> None:
    assert http_body(b"".join(chunk(p) for p in parts)) == b"".join(parts)


def test_chunk_of_nothing_is_nothing() -> None:
    assert chunk(b"") == b""  # b"0\r\n\r\n" would end the response


def test_chunk_layout() -> None:
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


# --- SSE ---


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["comment", "remove", "gap", "mode", "goaway", "reset"]),
    payloads,
    st.none() | st.integers(0, 2**63).map(str),
)
def test_sse_event_parses_per_the_spec(event: str, data: dict[str, Any], event_id: str | None) -> None:
    [parsed] = sse_parse(sse_event(event, data, event_id))
    assert parsed["type"] == event
    assert json.loads(parsed["data"]) == data
    assert parsed["id"] == (event_id or "")


def test_sse_event_layout() -> None:
    assert sse_event("gap", {"missed": 3}, "42") == b'event: gap\nid: 42\ndata: {"missed":3}\n\n'
    assert sse_event("gap", {"missed": 3}) == b'event: gap\ndata: {"missed":3}\n\n'


def test_sse_data_is_one_line_whatever_the_text() -> None:
    frame = sse_event("comment", {"text": "a\nb\rc\r\nd\u2028e\x85f"})
    assert frame.count(b"\n") == 3  # ends the event line, the data line, and the blank line
    assert b"\r" not in frame


def test_heartbeats_dispatch_no_event() -> None:
    assert sse_parse(HEARTBEAT_SSE) == []
    assert sse_parse(heartbeat(Encoding.SSE_PLAIN)) == []
    assert sse_parse(http_body(heartbeat(Encoding.SSE))) == []
    assert heartbeat(Encoding.WS) == b""


# --- entries and control events ---


@settings(max_examples=30, deadline=None)
@given(comments)
def test_an_entry_s_encodings_carry_the_comment(comment: Comment) -> None:
    e = Entry(comment)
    assert e.id == comment.id
    assert e.reactions == 0
    [ev] = sse_parse(e.sse)
    assert (ev["type"], ev["id"]) == ("comment", str(comment.id))
    assert json.loads(ev["data"]) == comment.to_json()
    assert ws_decode(e.ws) == [{"type": "comment", **comment.to_json()}]
    assert e.ws is e.ws  # made once
    assert e.frame(Encoding.WS) == e.ws
    assert e.frame(Encoding.SSE) == e.frame(Encoding.SSE_PLAIN) == e.sse


@settings(max_examples=15, deadline=None)
@given(st.lists(comments, max_size=5))
def test_join_and_wrap_give_one_write_per_batch(batch: list[Comment]) -> None:
    entries = [Entry(c) for c in batch]
    want = [c.to_json() for c in batch]
    plain = join(entries, Encoding.SSE_PLAIN)
    assert [json.loads(e["data"]) for e in sse_parse(wrap(Encoding.SSE_PLAIN, plain))] == want
    sse = wrap(Encoding.SSE, join(entries, Encoding.SSE))
    assert [json.loads(e["data"]) for e in sse_parse(http_body(sse))] == want
    ws = wrap(Encoding.WS, join(entries, Encoding.WS))
    assert ws_decode(ws) == [{"type": "comment", **j} for j in want]


@pytest.mark.parametrize("event", ["remove", "gap", "mode", "goaway", "reset"])
def test_control_events_in_every_encoding(event: str) -> None:
    data = {"id": "17", "missed": 2}
    assert ws_decode(control(event, data, Encoding.WS)) == [{"type": event, **data}]
    for enc, body in (
        (Encoding.SSE_PLAIN, control(event, data, Encoding.SSE_PLAIN)),
        (Encoding.SSE, http_body(control(event, data, Encoding.SSE))),
    ):
        [ev] = sse_parse(body)
        assert (ev["type"], json.loads(ev["data"])) == (event, data), enc


@pytest.mark.parametrize("encoding", list(Encoding))
def test_gap_encoder_says_how_many_were_missed(encoding: Encoding) -> None:
    encode = gap_encoder(encoding)
    assert gap_encoder(encoding) is encode  # one per encoding
    raw = encode(12)
    if encoding is Encoding.WS:
        assert ws_decode(raw) == [{"type": "gap", "missed": 12}]
    else:
        [ev] = sse_parse(http_body(raw) if encoding is Encoding.SSE else raw)
        assert (ev["type"], json.loads(ev["data"])) == ("gap", {"missed": 12})


def test_dumps_is_compact_utf8() -> None:
    assert dumps({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()
