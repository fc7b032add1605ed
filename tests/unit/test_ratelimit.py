"""The in-process rate limiter: a sliding window per key, bounded by max_keys whatever the key flood."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.rate import EPS, Events, Rate
from policy.ratelimit import Decision, InMemoryRateLimiter

RULE = Rate(3, 6.0)  # 3 per 6 s
SLOW = Rate(1, 4.0)  # slow mode: one per 4 s

# (key, time step) pairs; dyadic steps keep the arithmetic exact
ops = st.lists(
    st.tuples(st.integers(0, 9).map(lambda k: f"user:{k}"), st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 6.0])),
    max_size=120,
)


def window(rule: Rate, history: list[float], now: float) -> Decision:
    """The definition over a key's whole history of counted events."""
    inside = sorted(t for t in history if t + rule.period - now > EPS)
    if len(inside) < rule.count:
        return Decision(True, 0.0)
    return Decision(False, max(inside[len(inside) - rule.count] + rule.period - now, EPS))


def reference(
    events: list[tuple[str, float]], rule: Rate, max_keys: int, start: float = 100.0
) -> tuple[list[Decision], list[str]]:
    """Every counted event per key, the least recently counted key forgotten past max_keys.
    -> decisions, and the keys remembered, least recently counted first."""
    history: OrderedDict[str, list[float]] = OrderedDict()
    now = start
    out = []
    for key, dt in events:
        now += dt
        d = window(rule, history.get(key, []), now)
        if d.allowed:
            history.setdefault(key, []).append(now)
            history.move_to_end(key)
            while len(history) > max_keys:
                history.popitem(last=False)
        out.append(d)
    return out, list(history)


def replay(
    limiter: InMemoryRateLimiter, events: list[tuple[str, float]], rule: Rate, start: float = 100.0
) -> list[Decision]:
    now = start
    out = []
    for key, dt in events:
        now += dt
        out.append(limiter.check(key, rule, now))
        assert len(limiter) <= limiter.max_keys
    return out


@settings(max_examples=75, deadline=None)
@given(ops)
def test_with_room_for_every_key_decisions_are_the_sliding_window_s(events: list[tuple[str, float]]) -> None:
    limiter = InMemoryRateLimiter(max_keys=10)
    want, keys = reference(events, RULE, max_keys=10)
    assert replay(limiter, events, RULE) == want
    assert list(limiter._events) == keys


@settings(max_examples=75, deadline=None)
@given(st.integers(1, 5), ops)
def test_past_max_keys_the_least_recently_counted_key_is_forgotten(
    max_keys: int, events: list[tuple[str, float]]
) -> None:
    """The key count never exceeds max_keys (asserted after each check), and the decisions
    are those of a limiter that forgets exactly the least recently counted key."""
    limiter = InMemoryRateLimiter(max_keys=max_keys)
    want, keys = reference(events, RULE, max_keys=max_keys)
    assert replay(limiter, events, RULE) == want
    assert list(limiter._events) == keys


def test_a_burst_of_count_then_refused_until_the_oldest_leaves_the_window() -> None:
    limiter = InMemoryRateLimiter()
    assert [limiter.check("u", RULE, 10.0).allowed for _ in range(4)] == [True, True, True, False]
    assert limiter.check("u", RULE, 10.0) == Decision(False, 6.0)
    assert limiter.check("u", RULE, 12.0) == Decision(False, 4.0)  # not one per 2 s: three per 6 s
    assert not limiter.check("u", RULE, 15.999).allowed
    assert limiter.check("other", RULE, 10.0).allowed  # keys are independent
    assert [limiter.check("u", RULE, 16.0).allowed for _ in range(4)] == [True, True, True, False]


def test_refusals_do_not_count() -> None:
    limiter = InMemoryRateLimiter()
    for _ in range(3):
        assert limiter.check("u", RULE, 10.0).allowed
    for k in range(50):
        assert not limiter.check("u", RULE, 10.0 + k * 0.1).allowed
    assert [limiter.check("u", RULE, 16.0).allowed for _ in range(4)] == [True, True, True, False]


def test_refused_keys_are_not_stored() -> None:
    limiter = InMemoryRateLimiter(max_keys=2)
    for _ in range(3):
        limiter.check("a", RULE, 0.0)
    assert not limiter.check_many([("a", RULE), ("new", RULE)], 0.0).allowed
    assert len(limiter) == 1
    assert "new" not in limiter._events


def test_when_full_the_least_recently_counted_key_is_forgotten_even_if_active() -> None:
    limiter = InMemoryRateLimiter(max_keys=2)
    for _ in range(3):
        limiter.check("old", RULE, 100.0)  # active until 106
    limiter.check("recent", RULE, 100.0)
    assert limiter.check("new", RULE, 101.0).allowed  # evicts "old": O(1), no scan for expired keys
    assert len(limiter) == 2
    assert list(limiter._events) == ["recent", "new"]
    assert limiter.check("old", RULE, 101.0).allowed  # forgotten: a fresh window
    assert list(limiter._events) == ["new", "old"]


def test_a_counted_event_makes_a_key_the_most_recent() -> None:
    limiter = InMemoryRateLimiter(max_keys=2)
    limiter.check("a", RULE, 100.0)
    limiter.check("b", RULE, 100.0)
    limiter.check("a", RULE, 101.0)  # counted: a is now the most recent
    assert limiter.check("c", RULE, 102.0).allowed  # evicts b
    assert list(limiter._events) == ["a", "c"]
    assert limiter.check("a", RULE, 102.0).allowed
    assert not limiter.check("a", RULE, 102.0).allowed  # a's three events survived


def test_when_every_key_is_active_the_least_recently_used_is_forgotten() -> None:
    limiter = InMemoryRateLimiter(max_keys=2)
    for _ in range(3):
        limiter.check("a", RULE, 100.0)
    for _ in range(3):
        limiter.check("b", RULE, 100.0)
    for _ in range(2):
        limiter.check("a", RULE, 101.0)  # refused: a refusal is not a use
    assert limiter.check("c", RULE, 101.0).allowed  # evicts a (least recently counted)
    assert len(limiter) == 2
    assert limiter.check("a", RULE, 101.0).allowed  # a starts fresh, and b goes
    assert len(limiter) == 2
    assert [limiter.check("b", RULE, 101.0).allowed for _ in range(4)] == [True, True, True, False]


def test_a_flood_of_new_keys_keeps_memory_fixed() -> None:
    limiter = InMemoryRateLimiter(max_keys=50)
    for i in range(2000):
        assert limiter.check(f"bot:{i}", RULE, 100.0 + i * 0.001).allowed
        assert len(limiter) <= 50
    assert len(limiter) == 50
    assert list(limiter._events) == [f"bot:{i}" for i in range(1950, 2000)]


def test_a_key_keeps_at_most_count_events() -> None:
    limiter = InMemoryRateLimiter()
    for k in range(100):
        limiter.check("u", RULE, 100.0 + k)
        assert len(limiter._events["u"]) <= RULE.count


async def test_acquire_is_check() -> None:
    a, b = InMemoryRateLimiter(), InMemoryRateLimiter()
    for i in range(12):
        assert await a.acquire("k", RULE, 10.0 + i * 0.5) == b.check("k", RULE, 10.0 + i * 0.5)
    assert a._events == b._events


many_ops = st.lists(
    st.tuples(
        st.lists(
            st.tuples(st.sampled_from(["user:a", "user:b", "slow:v:a"]), st.sampled_from([RULE, SLOW])),
            min_size=1,
            max_size=3,
        ),
        st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
    ),
    max_size=40,
)


@settings(max_examples=75, deadline=None)
@given(many_ops)
def test_check_many_is_all_or_nothing(events: list[tuple[list[tuple[str, Rate]], float]]) -> None:
    """Allowed only if every (key, rule) allows, counted in order (a key named twice sees
    its first count); refused: nothing is counted and retry_after is the longest wait."""
    limiter = InMemoryRateLimiter()
    state: dict[str, Events] = {}
    now = 100.0
    for items, dt in events:
        now += dt
        trial = dict(state)
        waits = []
        for key, rule in items:
            ok, after, wait = rule.check(trial.get(key), now)
            if ok:
                trial[key] = after
            else:
                waits.append(wait)
        got = limiter.check_many(items, now)
        if waits:
            assert got == Decision(False, max(waits))
        else:
            assert got == Decision(True, 0.0)
            state = trial
        assert dict(limiter._events) == state


def test_check_many_refused_by_one_rule_counts_against_none() -> None:
    limiter = InMemoryRateLimiter()
    assert limiter.check_many([("user:a", RULE), ("slow:v:a", SLOW)], 10.0).allowed
    d = limiter.check_many([("user:a", RULE), ("slow:v:a", SLOW)], 11.0)  # slow mode: one per 4 s
    assert d == Decision(False, 3.0)
    # the per-user count did not move: two more fit in its three per 6 s
    assert limiter.check("user:a", RULE, 11.0).allowed
    assert limiter.check("user:a", RULE, 11.0).allowed
    assert not limiter.check("user:a", RULE, 11.0).allowed
    assert limiter._events["slow:v:a"] == (10.0,)


def test_check_many_retry_after_is_the_longest_wait() -> None:
    limiter = InMemoryRateLimiter()
    for _ in range(3):
        limiter.check("user:a", RULE, 10.0)  # full until 16
    limiter.check("slow:v:a", SLOW, 11.0)  # full until 15
    assert limiter.check_many([("slow:v:a", SLOW), ("user:a", RULE)], 12.0) == Decision(False, 4.0)
    assert limiter.check_many([("slow:v:a", SLOW), ("user:a", RULE)], 15.0) == Decision(False, 1.0)
    assert limiter.check_many([("slow:v:a", SLOW), ("user:a", RULE)], 16.0) == Decision(True, 0.0)


def test_check_many_a_key_named_twice_sees_its_first_count() -> None:
    limiter = InMemoryRateLimiter()
    one = Rate(1, 10.0)
    # the second naming sees the first one's event: one per 10 s is already used up
    assert limiter.check_many([("k", one), ("k", one)], 0.0) == Decision(False, 10.0)
    assert len(limiter) == 0  # and nothing was counted
    two = Rate(2, 10.0)
    assert limiter.check_many([("k", two), ("k", two)], 0.0).allowed
    assert limiter._events["k"] == (0.0, 0.0)  # counted twice
    assert not limiter.check("k", two, 0.0).allowed


async def test_acquire_many_is_check_many() -> None:
    a, b = InMemoryRateLimiter(), InMemoryRateLimiter()
    items = [("user:a", RULE), ("slow:v:a", SLOW)]
    for i in range(8):
        assert await a.acquire_many(items, 10.0 + i) == b.check_many(items, 10.0 + i)
    assert a._events == b._events
