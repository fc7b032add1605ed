"""Tokens: issue/verify round trip, every broken token is 401 with its code, the signing key file."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Unauthorized
from domain.identity import KEY_FILE, ROLES, Identity, TokenIssuer, new_guest_id, signing_key

KEY = "k" * 64
ISSUER = TokenIssuer(KEY)


def unauthorized(code: str) -> pytest.RaisesExc[Unauthorized]:
    return pytest.raises(Unauthorized, check=lambda e: e.code == code and e.status == 401)


@settings(max_examples=40, deadline=None)
@given(
    st.text(min_size=1, max_size=40),
    st.text(max_size=40),
    st.sets(st.sampled_from(ROLES)),
    st.sets(st.text(min_size=1, max_size=20), max_size=4),
)
def test_issue_verify_round_trip(user_id: str, name: str, roles: set[str], streams: set[str]) -> None:
    who = ISSUER.verify(ISSUER.issue(user_id, name, roles, streams))
    assert who == Identity(user_id, name or user_id, frozenset(roles | {"viewer"}), frozenset(streams))


def test_identity_flags() -> None:
    who = ISSUER.verify(ISSUER.issue("u1", "Ann", ("verified",), ("v1",)))
    assert who.verified and not who.moderator
    assert who.is_streamer("v1") and not who.is_streamer("v2")
    assert ISSUER.verify(ISSUER.issue("m", "Mo", ("moderator",))).moderator
    assert ISSUER.verify(ISSUER.issue("a", "Ad", ("admin",))).moderator


def test_unknown_roles_are_refused_when_issuing() -> None:
    with pytest.raises(ValueError, match="god"):
        ISSUER.issue("u", "n", ("viewer", "god"))


def test_a_token_is_valid_until_it_expires() -> None:
    now = time.time()
    assert ISSUER.verify(ISSUER.issue("u", "n", ttl_s=3600, now=now)).user_id == "u"
    with unauthorized("token_expired"):
        ISSUER.verify(ISSUER.issue("u", "n", ttl_s=60, now=now - 3600))


def test_a_forged_signature_is_invalid() -> None:
    token = ISSUER.issue("u", "n")
    head, body, sig = token.split(".")
    forged_sig = sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB")
    with unauthorized("invalid_token"):
        ISSUER.verify(f"{head}.{body}.{forged_sig}")


def test_changed_claims_break_the_signature() -> None:
    token = ISSUER.issue("u", "n")
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["roles"] = ["admin", "viewer"]
    body2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with unauthorized("invalid_token"):
        ISSUER.verify(f"{head}.{body2}.{sig}")


def test_a_token_signed_with_another_key_is_invalid() -> None:
    with unauthorized("invalid_token"):
        ISSUER.verify(TokenIssuer("x" * 64).issue("u", "n"))


def test_alg_none_is_invalid() -> None:
    claims = {"sub": "u", "name": "n", "roles": ["admin"], "streams": [], "exp": int(time.time()) + 3600}
    token = jwt.encode(claims, key=None, algorithm="none")
    with unauthorized("invalid_token"):
        ISSUER.verify(token)


def test_another_hmac_algorithm_is_invalid() -> None:
    claims = {"sub": "u", "name": "n", "exp": int(time.time()) + 3600}
    with unauthorized("invalid_token"):
        ISSUER.verify(jwt.encode(claims, KEY, algorithm="HS512"))


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "a.b", "....", "eyJ.eyJ.sig", "\x00\xff"])
def test_garbage_is_invalid(token: str) -> None:
    with unauthorized("invalid_token"):
        ISSUER.verify(token)


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=100))
def test_arbitrary_text_is_an_invalid_token(token: str) -> None:
    with unauthorized("invalid_token"):
        ISSUER.verify(token)


@pytest.mark.parametrize(
    "claims",
    [
        {"name": "n"},  # no sub
        {"sub": "", "name": "n"},
        {"sub": 5, "name": "n"},
        {"sub": "u", "name": 5},
        {"sub": "u", "roles": "admin"},
        {"sub": "u", "roles": [1]},
        {"sub": "u", "streams": {"v": 1}},
        {"sub": "u", "streams": [None]},
    ],
)
def test_well_signed_but_malformed_claims_are_invalid(claims: dict[str, object]) -> None:
    token = jwt.encode({**claims, "exp": int(time.time()) + 3600}, KEY, algorithm="HS256")
    with unauthorized("invalid_token"):
        ISSUER.verify(token)


def test_a_token_without_exp_is_invalid() -> None:
    with unauthorized("invalid_token"):
        ISSUER.verify(jwt.encode({"sub": "u"}, KEY, algorithm="HS256"))


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    ", "Basic dTpw", "Token abc", "bearer"])
def test_from_header_missing_or_malformed(header: str | None) -> None:
    with unauthorized("missing_token"):
        ISSUER.from_header(header)


@pytest.mark.parametrize("template", ["Bearer {}", "bearer {}", "BEARER {}", "Bearer   {}  "])
def test_from_header_accepts_bearer_in_any_case_and_spacing(template: str) -> None:
    assert ISSUER.from_header(template.format(ISSUER.issue("u", "n"))).user_id == "u"


def test_from_header_with_a_bad_token_is_invalid_token() -> None:
    with unauthorized("invalid_token"):
        ISSUER.from_header("Bearer nope")


def test_unauthorized_asks_for_a_bearer_token() -> None:
    try:
        ISSUER.from_header(None)
    except Unauthorized as e:
        assert e.headers()["WWW-Authenticate"].startswith("Bearer")
        assert e.body() == {"error": "missing_token", "detail": e.detail}


def test_a_configured_secret_is_used_as_is_and_no_file_is_written(tmp_path: Path) -> None:
    assert signing_key("s3cret", str(tmp_path / "data")) == "s3cret"
    assert not (tmp_path / "data").exists()


def test_the_key_file_is_created_once_and_read_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    first = signing_key("", str(data_dir))
    second = signing_key("", str(data_dir))
    assert first == second
    assert len(first) >= 32
    path = data_dir / KEY_FILE
    assert path.read_text() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # a token issued under the first process's key verifies under the second's
    assert TokenIssuer(second).verify(TokenIssuer(first).issue("u", "n")).user_id == "u"


def test_two_data_dirs_get_different_keys(tmp_path: Path) -> None:
    assert signing_key("", str(tmp_path / "a")) != signing_key("", str(tmp_path / "b"))


def test_an_existing_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("  the-key\n")
    assert signing_key("", str(tmp_path)) == "the-key"


def test_an_empty_key_file_never_gives_an_empty_key(tmp_path: Path) -> None:
    fd = os.open(tmp_path / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # created, not written
    os.close(fd)
    assert signing_key("", str(tmp_path)) != ""


def test_guest_ids_are_distinct_and_prefixed() -> None:
    ids = {new_guest_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("g_") and len(i) == 18 for i in ids)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_remembered_token_still_expires() -> None:
    clock = Clock(1_000_000.0)
    issuer = TokenIssuer(KEY, clock=clock)
    token = issuer.issue("u", "n", ttl_s=60, now=clock.t)
    assert issuer.verify(token).user_id == "u"
    clock.t += 59
    assert issuer.verify(token).user_id == "u"  # answered from memory
    clock.t += 1
    with unauthorized("token_expired"):
        issuer.verify(token)
    with unauthorized("token_expired"):
        issuer.verify(token)  # and forgotten: the signature path says the same


def test_remembered_tokens_are_bounded() -> None:
    from domain import identity as auth

    issuer = TokenIssuer(KEY)
    tokens = [issuer.issue(f"u{i}", "n") for i in range(auth.VERIFIED_MAX + 10)]
    for t in tokens:
        issuer.verify(t)
    assert len(issuer._verified) == auth.VERIFIED_MAX
    # The oldest were forgotten, and still verify (through the signature again).
    assert issuer.verify(tokens[0]).user_id == "u0"


def test_a_forgery_of_a_remembered_token_is_still_invalid() -> None:
    token = ISSUER.issue("u", "n")
    ISSUER.verify(token)
    head, body, sig = token.split(".")
    with unauthorized("invalid_token"):
        ISSUER.verify(f"{head}.{body}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}")


def test_a_remembered_token_skips_the_signature_check(monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = TokenIssuer(KEY)
    token = issuer.issue("u", "n")
    who = issuer.verify(token)

    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(jwt, "decode", no_decode)
    assert issuer.verify(token) == who
