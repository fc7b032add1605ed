"""Comment text and client_id as ingest accepts them: trimmed, NFC, bounded, no control characters."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.contract import ALLOWED_FORMAT, CLIENT_ID_MAX, clean_client_id, clean_text
from domain.errors import Unprocessable


def refused(code: str) -> pytest.RaisesExc[Unprocessable]:
    return pytest.raises(Unprocessable, check=lambda e: e.code == code and e.status == 422)


@pytest.mark.parametrize("text", ["", " ", "   ", "\n", "\t", " \n\t \r\n ", "\u3000", "\u00a0\u2003"])
def test_empty_after_trimming_is_empty_text(text: str) -> None:
    with refused("empty_text"):
        clean_text(text, 500)


def test_trimmed_on_both_sides() -> None:
    assert clean_text("  hello world \n", 500) == "hello world"


def test_exactly_max_is_accepted_and_one_more_is_text_too_long() -> None:
    assert clean_text("x" * 500, 500) == "x" * 500
    with refused("text_too_long"):
        clean_text("x" * 501, 500)


def test_length_is_counted_after_trimming() -> None:
    assert clean_text("   " + "x" * 10 + "   ", 10) == "x" * 10


def test_length_is_counted_in_characters_after_nfc() -> None:
    decomposed = "e\u0301" * 5  # five é, ten code points
    assert clean_text(decomposed, 5) == "\u00e9" * 5
    assert clean_text("😀" * 5, 5) == "😀" * 5  # characters, not UTF-8 or UTF-16 units


def test_nfc_is_applied() -> None:
    assert clean_text("Cafe\u0301", 500) == "Caf\u00e9"
    assert clean_text("\u212b", 500) == "\u00c5"  # ANGSTROM SIGN -> A WITH RING


@pytest.mark.parametrize("text", ["line one\nline two", "a\tb", "a\n\nb"])
def test_newline_and_tab_are_allowed_inside(text: str) -> None:
    assert clean_text(text, 500) == text


@pytest.mark.parametrize(
    "ch",
    [
        "\x00",
        "\x07",
        "\x08",
        "\x0b",
        "\x0c",
        "\x1b",
        "\x7f",
        "\x85",
        "\x9f",
        "\ue000",
        "\U000f0000",
        "\U000e0080",
        "\u0378",
    ],
)
def test_control_private_and_unassigned_characters_are_refused(ch: str) -> None:
    with refused("invalid_text"):
        clean_text("a" + ch + "b", 500)


def test_lone_surrogates_are_refused() -> None:
    with refused("invalid_text"):
        clean_text("a\ud800b", 500)


@pytest.mark.parametrize("value", [None, 5, b"bytes", ["a"], {"t": "x"}])
def test_text_must_be_a_string(value: object) -> None:
    with refused("invalid_text"):
        clean_text(value, 500)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.integers(1, 30))
def test_accepted_text_is_nfc_trimmed_bounded_and_clean(text: str, max_chars: int) -> None:
    norm = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()

    def refused(ch: str) -> bool:
        cat = unicodedata.category(ch)
        return (cat in ("Cc", "Cs", "Co", "Cn") and ch not in "\n\t") or (cat == "Cf" and ch not in ALLOWED_FORMAT)

    try:
        out = clean_text(text, max_chars)
    except Unprocessable as e:
        assert e.code in ("empty_text", "text_too_long", "invalid_text")
        if e.code == "empty_text":
            assert all(ch in ALLOWED_FORMAT or ch.isspace() for ch in norm)
        elif e.code == "text_too_long":
            assert len(norm) > max_chars
        else:
            assert any(refused(ch) for ch in norm)
        return
    assert out == norm
    assert out == unicodedata.normalize("NFC", out) == out.strip()
    assert 1 <= len(out) <= max_chars
    assert "\r" not in out
    assert not any(refused(ch) for ch in out)


@settings(max_examples=75, deadline=None)
@given(st.text(st.characters(categories=["L", "M", "N", "P", "S", "Zs"]), min_size=1, max_size=40))
def test_ordinary_text_is_accepted_as_its_trimmed_nfc(text: str) -> None:
    norm = unicodedata.normalize("NFC", text).strip()
    if not norm or any(unicodedata.category(ch) == "Cn" for ch in norm):
        return
    assert clean_text(text, 1000) == norm


def test_client_id_none_is_none() -> None:
    assert clean_client_id(None) is None


@pytest.mark.parametrize("value", ["a", "c-123", "x" * CLIENT_ID_MAX, "ünïcödé", "with space"])
def test_client_id_printable_up_to_the_max_is_kept(value: str) -> None:
    assert clean_client_id(value) == value


@pytest.mark.parametrize("value", ["", "x" * (CLIENT_ID_MAX + 1), "a\nb", "\t", "a\x00", 5, ["a"], b"abc"])
def test_client_id_otherwise_is_invalid(value: object) -> None:
    with refused("invalid_client_id"):
        clean_client_id(value)
