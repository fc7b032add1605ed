"""The sampler: streamer always, preferred first, budget near the target."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from backpressure.sampler import Candidate, Sampler

candidates = st.lists(
    st.builds(Candidate, id=st.integers(0, 10**6), streamer=st.booleans(), verified=st.booleans(), reactions=st.integers(0, 3)),
    max_size=200,
    unique_by=lambda c: c.id,
)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(0.0, 2.0), candidates), max_size=30), st.integers(0, 2**32))
def test_streamer_comments_are_never_sampled_out(batches: list[tuple[float, list[Candidate]]], seed: int) -> None:
    s = Sampler(20.0, random.Random(seed))
    now = 0.0
    for dt, batch in batches:
        now += dt
        kept = s.choose(batch, now)
        assert {c.id for c in batch if c.streamer} <= kept
        assert kept <= {c.id for c in batch}


@settings(max_examples=200)
@given(candidates, st.integers(0, 2**32))
def test_preferred_comments_go_first(batch: list[Candidate], seed: int) -> None:
    s = Sampler(5.0, random.Random(seed))
    kept = s.choose(batch, 0.0)
    ordinary_kept = [c for c in batch if c.id in kept and not (c.streamer or c.verified or c.reactions)]
    preferred_dropped = [c for c in batch if c.id not in kept and not c.streamer and (c.verified or c.reactions)]
    assert not (ordinary_kept and preferred_dropped)


def test_flow_stays_near_the_target_whatever_the_velocity() -> None:
    s = Sampler(20.0, random.Random(1))
    next_id = 0
    kept_total = 0
    for tick in range(1, 201):  # 10 s of 50 ms ticks at 500 comments/s
        batch = [Candidate(next_id + i) for i in range(25)]
        next_id += 25
        kept_total += len(s.choose(batch, tick * 0.05))
    assert 180 <= kept_total <= 220 + 20  # ~20/s for 10 s, plus the first second's budget


def test_everything_passes_when_quiet() -> None:
    s = Sampler(20.0, random.Random(1))
    for t in range(10):
        batch = [Candidate(t * 10 + i) for i in range(2)]
        assert s.choose(batch, float(t)) == {c.id for c in batch}
    assert s.sampled_out == 0
