"""Settings: flag beats environment beats default; values parsed and checked with their name."""

from __future__ import annotations

import argparse

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.settings import Settings
from livecomments.config import add_flags, env_name, load

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


def test_the_environment_is_read_only_when_given() -> None:
    assert load(None, {}) == Settings()


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_setting_has_an_env_name_and_a_flag(name: str) -> None:
    assert env_name(name) == "LIVECOMMENTS_" + name.upper()
    assert "--" + name.replace("_", "-") in parse_help()


def parse_help() -> str:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.format_help()


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
    st.sampled_from(["port", "max_text", "backlog", "ring_size", "retry_ms"]),
    st.one_of(st.none(), st.integers(1, 60000)),
    st.one_of(st.none(), st.integers(1, 60000)),
)
def test_precedence_for_any_source_combination(name: str, env_value: int | None, flag_value: int | None) -> None:
    env = {} if env_value is None else {env_name(name): str(env_value)}
    argv = [] if flag_value is None else ["--" + name.replace("_", "-"), str(flag_value)]
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
    ("name", "text"),
    [("port", "eighty"), ("port", "80.5"), ("heartbeat_s", "soon"), ("max_text", ""), ("worker_id", "0x10")],
)
def test_bad_numbers_raise_with_the_env_name(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=env_name(name)):
        load(parse(), {env_name(name): text})


@pytest.mark.parametrize(("flag", "text"), [("--port", "eighty"), ("--stuck-s", "x"), ("--flush-burst", "1.5")])
def test_bad_flags_raise_with_the_flag_name(flag: str, text: str) -> None:
    with pytest.raises(ValueError, match=flag):
        load(parse(flag, text), {})


@pytest.mark.parametrize("name", ["rate_limit", "guest_rate_limit", "guest_post_rate_limit", "reaction_rate_limit", "ws_resume_rate"])
@pytest.mark.parametrize("text", ["fast", "0/s", "5/0s", "5/10x"])
def test_bad_rates_raise_with_the_setting_s_name(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=name):
        load(parse(), {env_name(name): text})


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"LIVECOMMENTS_WORKER_ID": "1024"}, "worker_id"),
        ({"LIVECOMMENTS_WORKER_ID": "-1"}, "worker_id"),
        ({"LIVECOMMENTS_STORE": "postgres"}, "store"),
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
    ("name", "text"),
    [
        ("flush_rate", "0"),
        ("flush_rate", "-1"),
        ("port", "70000"),
        ("port", "-1"),
        ("heartbeat_s", "0"),
        ("heartbeat_s", "nan"),
        ("stuck_s", "-1"),
    ],
)
def test_nonsense_numbers_are_refused_at_load(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=name):
        load(parse(), {env_name(name): text})
