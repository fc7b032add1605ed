"""The RESP2 encoder and parser of the lean script pipe (adapters/redis/lean.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.redis.lean import ReplyError, Target, encode, parse, target_of


def wire(value: Any) -> bytes:
    """What Redis sends for ``value`` (RESP2)."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, ReplyError):
        return b"-" + str(value).encode() + b"\r\n"
    return b"*%d\r\n" % len(value) + b"".join(wire(v) for v in value)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, ReplyError):
        return isinstance(b, ReplyError) and str(a) == str(b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


errors = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30).map(ReplyError)
values = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=40) | errors,
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@given(st.lists(values, max_size=8), st.integers(0, 200))
def test_replies_parse_whole_and_leave_a_partial_one_for_later(replies: list[Any], cut: int) -> None:
    data = b"".join(wire(v) for v in replies)
    got, used = parse(data)
    assert used == len(data) and len(got) == len(replies)
    assert all(same(a, b) for a, b in zip(got, replies, strict=True))
    # Bytes arriving in two reads: the first read gives the whole replies in it and keeps
    # the rest; together they give everything.
    cut = min(cut, len(data))
    first, used = parse(data[:cut])
    rest, used2 = parse(data[used:])
    assert used + used2 == len(data)
    assert all(same(a, b) for a, b in zip([*first, *rest], replies, strict=True))


def test_simple_strings_and_null_arrays() -> None:
    assert parse(b"+OK\r\n*-1\r\n:7\r\n") == ([b"OK", None, 7], 14)
    assert parse(b"$5\r\nhel") == ([], 0)
    with pytest.raises(ValueError):
        parse(b"?what\r\n")


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode("EVALSHA", "ab", 1, "k", 2.5, b"\xff") == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$3\r\n2.5\r\n$1\r\n\xff\r\n"
    )
    got, _ = parse(encode("x", "yz"))  # a command is a valid reply too
    assert got == [[b"x", b"yz"]]


def test_only_one_server_urls_get_a_pipe() -> None:
    assert target_of("redis://127.0.0.1:6380") == Target(host="127.0.0.1", port=6380)
    assert target_of("redis://:s%40cret@db.local/3") == Target(host="db.local", password="s@cret", db=3)
    assert target_of("redis://user:pw@h:1/0") == Target(host="h", port=1, username="user", password="pw")
    assert target_of("unix:///run/redis.sock") == Target(path="/run/redis.sock")
    for url in ("rediss://h:6379", "redis+cluster://h:1,h:2", "redis+sentinel://h:26379/main", "http://h"):
        assert target_of(url) is None
