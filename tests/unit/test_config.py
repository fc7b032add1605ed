"""Settings: flag beats environment beats default; values parsed and checked with their name.

The names are the outside contract's (its "Command line and configuration" section),
written out here, never computed with the code's own ``env_name``: a renamed variable or
flag must fail these tests."""

from __future__ import annotations

import argparse
from typing import Any, cast

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.settings import Settings
from livecomments.config import add_flags, load

FIELDS = {f.name: f for f in attrs.fields(Settings)}


def parse(*argv: str, only: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, only)
    return parser.parse_args(list(argv))


def test_defaults_with_nothing_set() -> None:
    s = load(parse(), {})
    assert s == Settings()
    assert (s.port, s.rate_limit, s.guest_signin, s.store) == (8000, "5/10s", True, "sqlite")


def test_the_websocket_resume_rate_is_a_setting() -> None:
    assert Settings().ws_resume_rate == "5/10s"
    assert load(parse("--ws-resume-rate", "2/60s"), {}).ws_resume_rate == "2/60s"
    assert load(parse(), {"LIVECOMMENTS_WS_RESUME_RATE": "1/s"}).ws_resume_rate == "1/s"


def test_waiting_for_redis_replicas_is_off_by_default_and_bounded() -> None:
    assert (Settings().redis_wait_replicas, Settings().redis_wait_timeout_ms) == (0, 100)
    s = load(parse(), {"LIVECOMMENTS_REDIS_WAIT_REPLICAS": "1", "LIVECOMMENTS_REDIS_WAIT_TIMEOUT_MS": "250"})
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms) == (1, 250)
    with pytest.raises(ValueError, match="redis_wait"):
        load(parse(), {"LIVECOMMENTS_REDIS_WAIT_REPLICAS": "-1"})
    with pytest.raises(ValueError, match="redis_wait"):
        load(parse(), {"LIVECOMMENTS_REDIS_WAIT_TIMEOUT_MS": "0"})




def test_the_process_environment_is_read_only_when_no_environment_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVECOMMENTS_PORT", "8123")
    assert load(None, {}).port == 8000  # the mapping given, not os.environ
    assert load(None).port == 8123


# The contract's names and defaults (api.md), and for each a value other than the default.
CONTRACT = [
    # (variable, flag, field, default, text, value)
    ("LIVECOMMENTS_RATE_LIMIT", "--rate-limit", "rate_limit", "5/10s", "7/20s", "7/20s"),
    ("LIVECOMMENTS_MAX_TEXT", "--max-text", "max_text", 500, "321", 321),
    ("LIVECOMMENTS_MAX_BODY", "--max-body", "max_body", 4096, "2048", 2048),
    ("LIVECOMMENTS_TIER_SAMPLED_AT", "--tier-sampled-at", "tier_sampled_at", 50000, "45000", 45000),
    ("LIVECOMMENTS_TIER_SAMPLED_BELOW", "--tier-sampled-below", "tier_sampled_below", 40000, "30000", 30000),
    ("LIVECOMMENTS_TIER_CDN_AT", "--tier-cdn-at", "tier_cdn_at", 100000, "120000", 120000),
    ("LIVECOMMENTS_TIER_CDN_BELOW", "--tier-cdn-below", "tier_cdn_below", 80000, "90000", 90000),
    ("LIVECOMMENTS_TIER_MIN_DWELL_S", "--tier-min-dwell-s", "tier_min_dwell_s", 10.0, "2.5", 2.5),
    ("LIVECOMMENTS_STORE", "--store", "store", "sqlite", "scylla", "scylla"),
    ("LIVECOMMENTS_SCYLLA_HOSTS", "--scylla-hosts", "scylla_hosts", "127.0.0.1:9042", "10.0.0.1:9042,10.0.0.2:9042", "10.0.0.1:9042,10.0.0.2:9042"),
    ("LIVECOMMENTS_SCYLLA_KEYSPACE", "--scylla-keyspace", "scylla_keyspace", "livecomments", "lc_test", "lc_test"),
    ("LIVECOMMENTS_REDIS_URL", "--redis-url", "redis_url", "", "redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
    ("LIVECOMMENTS_JWT_SECRET", "--jwt-secret", "jwt_secret", "", "s3cret", "s3cret"),
    ("LIVECOMMENTS_HOST", "--host", "host", "127.0.0.1", "0.0.0.0", "0.0.0.0"),
    ("LIVECOMMENTS_PORT", "--port", "port", 8000, "8081", 8081),
    ("LIVECOMMENTS_DATA_DIR", "--data-dir", "data_dir", "./data", "/var/lib/lc", "/var/lib/lc"),
]


@pytest.mark.parametrize(("var", "flag", "field", "default", "text", "value"), CONTRACT, ids=[c[0] for c in CONTRACT])
def test_the_contract_s_variables_and_flags(var: str, flag: str, field: str, default: object, text: str, value: object) -> None:
    assert getattr(load(parse(), {}), field) == default
    assert getattr(load(parse(), {var: text}), field) == value
    assert getattr(load(parse(flag, text), {}), field) == value


def test_the_contract_cases_are_distinct() -> None:
    assert len({c[0] for c in CONTRACT}) == len({c[1] for c in CONTRACT}) == len({c[2] for c in CONTRACT}) == len(CONTRACT)
    assert all(c[3] != c[5] for c in CONTRACT), "a case whose value is the default cannot fail"


# For every setting a valid value other than its default (the str settings whose values are checked).
OTHER_TEXT = {
    "rate_limit": "6/10s",
    "guest_rate_limit": "21/m",
    "guest_post_rate_limit": "off",
    "reaction_rate_limit": "31/10s",
    "ws_resume_rate": "6/10s",
    "moderation_repeat": "off",
    "moderation_flood": "4/60s",
    "classifier": "some.module:classify",
    "store": "scylla",
    "sqlite_synchronous": "full",
    "bus": "dispatcher",
}


def other_value(f: attrs.Attribute[Any]) -> tuple[str, object]:
    kind, default = f.metadata["kind"], cast(Any, f.default)
    if kind is bool:
        return ("false" if default else "true"), not default
    if kind is int:
        return str(default + 1), default + 1
    if kind is float:
        return str(default + 0.5), default + 0.5
    text = OTHER_TEXT.get(f.name, "x" + default)
    return text, text


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_setting_is_a_livecomments_variable_and_a_flag(name: str) -> None:
    """The contract's rule for every setting: ``LIVECOMMENTS_<NAME>`` and ``--<name>``, spelled
    here from the field's name by the rule, not by the code under test."""
    text, value = other_value(FIELDS[name])
    assert getattr(load(parse(), {"LIVECOMMENTS_" + name.upper(): text}), name) == value
    flag = "--" + name.replace("_", "-")
    argv = [flag] if value is True else ["--no-" + flag[2:]] if value is False else [flag, text]
    assert getattr(load(parse(*argv), {}), name) == value


def test_env_beats_default() -> None:
    s = load(parse(), {"LIVECOMMENTS_PORT": "9001", "LIVECOMMENTS_RATE_LIMIT": "3/s", "LIVECOMMENTS_HOST": "0.0.0.0"})
    assert (s.port, s.rate_limit, s.host) == (9001, "3/s", "0.0.0.0")


def test_flag_beats_env() -> None:
    env = {"LIVECOMMENTS_PORT": "9001", "LIVECOMMENTS_GUEST_SIGNIN": "true", "LIVECOMMENTS_STUCK_S": "7"}
    s = load(parse("--port", "9002", "--no-guest-signin", "--stuck-s", "2.5"), env)
    assert (s.port, s.guest_signin, s.stuck_s) == (9002, False, 2.5)


def test_env_beats_a_command_s_own_defaults_and_flags_beat_both() -> None:
    assert load(parse(), {}, port=7000).port == 7000
    assert load(parse(), {"LIVECOMMENTS_PORT": "7001"}, port=7000).port == 7001
    assert load(parse("--port", "7002"), {"LIVECOMMENTS_PORT": "7001"}, port=7000).port == 7002


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(
        [
            ("port", "LIVECOMMENTS_PORT", "--port"),
            ("max_text", "LIVECOMMENTS_MAX_TEXT", "--max-text"),
            ("backlog", "LIVECOMMENTS_BACKLOG", "--backlog"),
            ("ring_size", "LIVECOMMENTS_RING_SIZE", "--ring-size"),
            ("retry_ms", "LIVECOMMENTS_RETRY_MS", "--retry-ms"),
        ]
    ),
    st.one_of(st.none(), st.integers(1, 60000)),
    st.one_of(st.none(), st.integers(1, 60000)),
)
def test_precedence_for_any_source_combination(
    names: tuple[str, str, str], env_value: int | None, flag_value: int | None
) -> None:
    name, var, flag = names
    env = {} if env_value is None else {var: str(env_value)}
    argv = [] if flag_value is None else [flag, str(flag_value)]
    got = getattr(load(parse(*argv), env), name)
    want = flag_value if flag_value is not None else env_value if env_value is not None else FIELDS[name].default
    assert got == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        (" true ", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_bool_parsing(text: str, want: bool) -> None:
    assert load(parse(), {"LIVECOMMENTS_GUEST_SIGNIN": text}).guest_signin is want


@pytest.mark.parametrize("text", ["", "2", "maybe", "tru", "yes please", "nope"])
def test_bad_bools_raise_with_the_setting_s_name(text: str) -> None:
    with pytest.raises(ValueError, match="LIVECOMMENTS_GUEST_SIGNIN"):
        load(parse(), {"LIVECOMMENTS_GUEST_SIGNIN": text})


def test_bool_flags_both_ways() -> None:
    assert load(parse("--guest-signin"), {"LIVECOMMENTS_GUEST_SIGNIN": "false"}).guest_signin is True
    assert load(parse("--no-guest-signin"), {}).guest_signin is False


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("LIVECOMMENTS_PORT", "eighty"),
        ("LIVECOMMENTS_PORT", "80.5"),
        ("LIVECOMMENTS_HEARTBEAT_S", "soon"),
        ("LIVECOMMENTS_MAX_TEXT", ""),
        ("LIVECOMMENTS_WORKER_ID", "0x10"),
    ],
)
def test_bad_numbers_raise_with_the_env_name(var: str, text: str) -> None:
    with pytest.raises(ValueError, match=var):
        load(parse(), {var: text})


@pytest.mark.parametrize(("flag", "text"), [("--port", "eighty"), ("--stuck-s", "x"), ("--flush-burst", "1.5")])
def test_bad_flags_raise_with_the_flag_name(flag: str, text: str) -> None:
    with pytest.raises(ValueError, match=flag):
        load(parse(flag, text), {})


@pytest.mark.parametrize(
    ("name", "var"),
    [
        ("rate_limit", "LIVECOMMENTS_RATE_LIMIT"),
        ("guest_rate_limit", "LIVECOMMENTS_GUEST_RATE_LIMIT"),
        ("guest_post_rate_limit", "LIVECOMMENTS_GUEST_POST_RATE_LIMIT"),
        ("reaction_rate_limit", "LIVECOMMENTS_REACTION_RATE_LIMIT"),
        ("ws_resume_rate", "LIVECOMMENTS_WS_RESUME_RATE"),
    ],
)
@pytest.mark.parametrize("text", ["fast", "0/s", "5/0s", "5/10x"])
def test_bad_rates_raise_with_the_setting_s_name(name: str, var: str, text: str) -> None:
    with pytest.raises(ValueError, match=name):
        load(parse(), {var: text})


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"LIVECOMMENTS_WORKER_ID": "1024"}, "worker_id"),
        ({"LIVECOMMENTS_WORKER_ID": "-1"}, "worker_id"),
        ({"LIVECOMMENTS_STORE": "postgres"}, "store"),
        ({"LIVECOMMENTS_BUS": "kafka"}, "bus"),
        ({"LIVECOMMENTS_DISPATCH_CACHE_S": "0"}, "dispatch_cache_s"),
        ({"LIVECOMMENTS_BUS": "dispatcher", "LIVECOMMENTS_ROOM_LINGER_S": "1"}, "room_linger_s"),
        ({"LIVECOMMENTS_MAX_TEXT": "0"}, "max_text"),
        ({"LIVECOMMENTS_MAX_BODY": "-5"}, "max_body"),
        ({"LIVECOMMENTS_RING_SIZE": "0"}, "ring_size"),
        ({"LIVECOMMENTS_VIEWER_BUFFER": "0"}, "viewer_buffer"),
        ({"LIVECOMMENTS_SNAPSHOT_SIZE": "0"}, "snapshot_size"),
        ({"LIVECOMMENTS_BACKLOG_MAX": "0"}, "backlog_max"),
        ({"LIVECOMMENTS_HISTORY_MAX": "0"}, "history_max"),
        ({"LIVECOMMENTS_MAX_ROOMS": "0"}, "max_rooms"),
        ({"LIVECOMMENTS_TIER_SAMPLED_BELOW": "60000"}, "tier"),
        ({"LIVECOMMENTS_TIER_CDN_BELOW": "100001"}, "tier"),
    ],
)
def test_values_out_of_range_raise_with_the_setting_s_name(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        load(parse(), env)


def test_tier_thresholds_may_be_set_together() -> None:
    env = {
        "LIVECOMMENTS_TIER_SAMPLED_AT": "5",
        "LIVECOMMENTS_TIER_SAMPLED_BELOW": "4",
        "LIVECOMMENTS_TIER_CDN_AT": "10",
        "LIVECOMMENTS_TIER_CDN_BELOW": "8",
    }
    s = load(parse(), env)
    assert (s.tier_sampled_at, s.tier_sampled_below, s.tier_cdn_at, s.tier_cdn_below) == (5, 4, 10, 8)


def test_only_limits_the_flags_added() -> None:
    ns = parse("--port", "1", only=["port"])
    assert ns.port == "1"
    with pytest.raises(SystemExit):
        parse("--host", "x", only=["port"])


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "url"),
    [
        ({}, "http://127.0.0.1:8000"),
        ({"host": "0.0.0.0", "port": 9000}, "http://127.0.0.1:9000"),
        ({"host": "::1"}, "http://[::1]:8000"),
        ({"public_url": "https://example.test/"}, "https://example.test"),
    ],
)
def test_url(kwargs: dict[str, object], url: str) -> None:
    assert Settings(**kwargs).url() == url  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("var", "name", "text"),
    [
        ("LIVECOMMENTS_FLUSH_RATE", "flush_rate", "0"),
        ("LIVECOMMENTS_FLUSH_RATE", "flush_rate", "-1"),
        ("LIVECOMMENTS_PORT", "port", "70000"),
        ("LIVECOMMENTS_PORT", "port", "-1"),
        ("LIVECOMMENTS_HEARTBEAT_S", "heartbeat_s", "0"),
        ("LIVECOMMENTS_HEARTBEAT_S", "heartbeat_s", "nan"),
        ("LIVECOMMENTS_STUCK_S", "stuck_s", "-1"),
    ],
)
def test_nonsense_numbers_are_refused_at_load(var: str, name: str, text: str) -> None:
    with pytest.raises(ValueError, match=name):
        load(parse(), {var: text})
