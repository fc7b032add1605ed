"""The sans-IO parts: automod's rules, the rules file, the classifier loader, and the
rate limiter's all-or-nothing ``acquire_many``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.model import Author, Comment
from ingest.moderation.classifier import load_classifier
from ingest.moderation.rules import Limits, Rules, RuleSet, Verdict, has_link, normalise
from policy.rate import Rate
from policy.ratelimit import InMemoryRateLimiter

_ids = iter(range(1, 10**9))


def comment(text: str, user: str = "u1", video: str = "v1", streamer: bool = False) -> Comment:
    return Comment(next(_ids), video, Author(user, user), text, 0, streamer=streamer)


# -- the rules file ---------------------------------------------------------------------------


def test_the_rules_file_format() -> None:
    rs = RuleSet.parse(
        "# a comment\n\n  spam  \nBuy Followers\nre:free\\s+v-?bucks\n$$$\n\\re:literal\n"
    )
    assert rs.words == frozenset({"spam"})
    assert rs.phrases == ("buy followers", "re literal")
    assert rs.symbols == ("$$$",)
    assert [p.pattern for p in rs.patterns] == ["free\\s+v-?bucks"]


def test_a_bad_pattern_names_its_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        RuleSet.parse("ok\nre:([unclosed\n")
    with pytest.raises(ValueError, match="line 1"):
        RuleSet.parse("re:\n")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("SPAM!", "blocked_word"),
        ("this is spam.", "blocked_word"),
        ("\uff53\uff50\uff41\uff4d", "blocked_word"),  # full-width letters fold to the word
        ("buy   FOLLOWERS now", "blocked_word"),
        ("get free vbucks", "blocked_pattern"),
        ("$$$ fast", "blocked_word"),
        ("spammer", None),  # whole words only
        ("buy more followers", None),
        ("hello", None),
    ],
)
def test_blocked_words_and_patterns(text: str, rule: str | None) -> None:
    rs = RuleSet.parse("spam\nbuy followers\nre:free\\s+v-?bucks\n$$$\n")
    v = rs.match(text)
    assert (v.rule if v else None) == rule


@given(st.text(max_size=40), st.sampled_from(["", " ", "!", "...", "\n"]), st.sampled_from(["", " ", "?", ", "]))
def test_a_blocked_word_is_found_whatever_surrounds_it(prefix: str, before: str, after: str) -> None:
    rs = RuleSet.parse("forbidden\n")
    text = f"{prefix} {before}FoRbIdDeN{after} tail"
    assert rs.match(text) == Verdict("blocked_word", "forbidden")


@given(st.text(max_size=80))
def test_normalise_is_idempotent(text: str) -> None:
    n = normalise(text)
    assert normalise(n) == n


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=80))
def test_normalise_ignores_case_and_punctuation(text: str) -> None:
    assert normalise(text.upper()) == normalise(text.lower())
    if any(c.isalnum() for c in text):
        assert normalise(f"...{text}!!!") == normalise(text)


@pytest.mark.parametrize(
    ("text", "link"),
    [
        ("see https://x.example/a", True),
        ("www.example.org", True),
        ("join discord.gg/abc", True),
        ("bit.ly/xyz", True),
        ("e.g. this", False),
        ("lol... ok", False),
        ("3.14 is pi", False),
        ("gg wp", False),
    ],
)
def test_links(text: str, link: bool) -> None:
    assert has_link(text) is link


# -- the stateful rules -------------------------------------------------------------------------


def test_links_only_from_new_accounts() -> None:
    rules = Rules(limits=Limits(new_account_s=600))
    assert rules.evaluate(comment("hi", "old"), 0.0) is None
    v = rules.evaluate(comment("see www.example.com", "new"), 100.0)
    assert v is not None and v.rule == "new_account_link"
    assert rules.evaluate(comment("see www.example.com", "old"), 601.0) is None
    assert rules.evaluate(comment("see www.example.com", "host", streamer=True), 601.0) is None


def test_repeats_count_per_video_within_the_window() -> None:
    rules = Rules(limits=Limits(repeat_count=3, repeat_window_s=60, flood_videos=0, new_account_s=0))
    assert rules.evaluate(comment("gg"), 0) is None
    assert rules.evaluate(comment("GG!"), 1) is None
    assert rules.evaluate(comment("gg", video="v2"), 2) is None  # another video
    v = rules.evaluate(comment("g g"), 3)  # "g g" normalises differently from "gg"
    assert v is None
    v = rules.evaluate(comment(" gg "), 4)
    assert v == Verdict("repeated_text", "the same text 3 times in 60 s")
    assert rules.evaluate(comment("gg"), 200) is None  # the window moved on


def test_flooding_counts_distinct_videos() -> None:
    rules = Rules(limits=Limits(repeat_count=0, flood_videos=3, flood_window_s=60, new_account_s=0))
    assert rules.evaluate(comment("promo", video="a"), 0) is None
    assert rules.evaluate(comment("promo", video="a"), 1) is None
    assert rules.evaluate(comment("promo", video="b"), 2) is None
    v = rules.evaluate(comment("PROMO", video="c"), 3)
    assert v is not None and v.rule == "cross_video_flood"
    assert rules.evaluate(comment("promo", video="d"), 100) is None


events = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3", "u4", "u5"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["gg", "GG!", "hello", "buy now", "www.x.com"]),
        st.floats(min_value=0, max_value=30, allow_nan=False),
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(events)
def test_memory_stays_bounded(evs: list[tuple[str, str, str, float]]) -> None:
    limits = Limits(users_max=3, per_user=4, repeat_count=3, flood_videos=3)
    rules = Rules(limits=limits)
    now = 0.0
    for user, video, text, dt in evs:
        now += dt
        rules.evaluate(comment(text, user, video), now)
        assert len(rules) <= 3
        assert all(rules.remembered(u) <= 4 for u in ("u1", "u2", "u3", "u4", "u5"))


@settings(max_examples=200)
@given(events)
def test_spaced_out_distinct_comments_are_never_flagged(evs: list[tuple[str, str, str, float]]) -> None:
    """Without blocked words or links, a user who never repeats a text inside the windows
    is never flagged."""
    rules = Rules(limits=Limits(new_account_s=0, repeat_window_s=10, flood_window_s=10))
    now = 0.0
    for i, (user, video, _text, _dt) in enumerate(evs):
        now += 11  # outside every window
        assert rules.evaluate(comment(f"message {i}", user, video), now) is None
        assert rules.evaluate(comment("same old", user, video), now + 0.5) is None


@settings(max_examples=100)
@given(st.integers(min_value=2, max_value=8), st.floats(min_value=1, max_value=100, allow_nan=False))
def test_the_kth_repeat_inside_the_window_is_flagged(k: int, window: float) -> None:
    rules = Rules(limits=Limits(repeat_count=k, repeat_window_s=window, flood_videos=0, new_account_s=0, per_user=k + 1))
    step = window / (k * 2)
    verdicts = [rules.evaluate(comment("spam spam"), i * step) for i in range(k)]
    assert verdicts[:-1] == [None] * (k - 1)
    assert verdicts[-1] is not None and verdicts[-1].rule == "repeated_text"


# -- the classifier loader ---------------------------------------------------------------------


def test_loading_a_classifier() -> None:
    c = load_classifier("tests.moderation.fake_classifier:MarkerClassifier")
    assert hasattr(c, "classify")
    for bad in ("nope", "tests.moderation.fake_classifier:Missing", "no.such.module:x", "tests.moderation.fake_classifier:MARKER"):
        with pytest.raises(ValueError):
            load_classifier(bad)


# -- acquire_many ------------------------------------------------------------------------------


def test_acquire_many_is_all_or_nothing() -> None:
    lim = InMemoryRateLimiter()
    user, slow = Rate(5, 10), Rate(1, 30)
    d = lim.check_many([("user", user), ("slow", slow)], 0.0)
    assert d.allowed
    d = lim.check_many([("user", user), ("slow", slow)], 1.0)
    assert not d.allowed and d.retry_after == pytest.approx(29.0)
    # The refusal charged nothing: four more on the user key alone still fit.
    for t in (1.0, 1.1, 1.2, 1.3):
        assert lim.check("user", user, t).allowed
    assert not lim.check("user", user, 1.4).allowed


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3), st.floats(min_value=0, max_value=5, allow_nan=False)),
        max_size=40,
    )
)
def test_acquire_many_matches_checking_each_rule_on_a_copy(steps: list[tuple[list[str], float]]) -> None:
    """allowed == every rule would allow; on refusal no key changes; retry_after is the
    longest wait among the refusing rules."""
    rules = {"a": Rate(2, 4), "b": Rate(1, 3), "c": Rate(3, 1)}
    lim = InMemoryRateLimiter()
    now = 0.0
    for keys, dt in steps:
        now += dt
        keys = list(dict.fromkeys(keys))
        before = {k: lim._events.get(k) for k in "abc"}
        singles = [rules[k].check(before[k], now) for k in keys]
        d = lim.check_many([(k, rules[k]) for k in keys], now)
        assert d.allowed == all(ok for ok, _, _ in singles)
        if d.allowed:
            for k, (_, tat, _) in zip(keys, singles):
                assert lim._events[k] == tat
        else:
            assert {k: lim._events.get(k) for k in "abc"} == before
            assert d.retry_after == pytest.approx(max(r for ok, _, r in singles if not ok))
