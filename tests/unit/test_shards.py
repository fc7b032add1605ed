"""The hot-video sharding switch (``policy.shards``): hot on a cause, held for
``min_hot_s``, cooled only below both cool lines, idle cold videos forgotten."""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from policy.shards import HotVideos, ShardingThresholds

# -- examples ---------------------------------------------------------------------------------

T = ShardingThresholds(hot_velocity=100, cool_velocity=50, hot_viewers=1000, cool_viewers=800, min_hot_s=10)


def test_velocity_turns_a_video_hot_within_the_window() -> None:
    hot = HotVideos(T)
    # 99 comments in the first second: not hot; the 100th crosses the line at once.
    assert not any(hot.observe_comment("v", 0.001 * i) for i in range(99))
    assert hot.observe_comment("v", 0.2)
    assert not hot.is_hot("other", 0.2)


def test_viewers_turn_a_video_hot_and_hysteresis_holds_it() -> None:
    hot = HotVideos(T)
    assert not hot.observe_viewers("v", 999, 0.0)
    assert hot.observe_viewers("v", 1000, 1.0)
    # Below the hot line but above the cool line: stays hot, however long.
    assert hot.observe_viewers("v", 900, 100.0)
    # Below the cool line: back to one partition (it has been hot for more than min_hot_s).
    assert not hot.observe_viewers("v", 700, 101.0)


def test_min_hot_time_prevents_flapping() -> None:
    hot = HotVideos(T)
    assert hot.observe_viewers("v", 5000, 0.0)
    assert hot.observe_viewers("v", 0, 5.0)  # quiet at once: still hot (min_hot_s = 10)
    assert hot.is_hot("v", 9.9)
    assert not hot.is_hot("v", 10.0)


def test_velocity_must_fall_below_the_cool_line() -> None:
    hot = HotVideos(T)
    t = 0.0
    for _ in range(100):  # 100/s
        hot.observe_comment("v", t)
        t += 0.01
    assert hot.is_hot("v", t)
    # 60/s for a minute: under the hot line, over the cool line: stays hot.
    for _ in range(3600):
        assert hot.observe_comment("v", t)
        t += 1 / 60
    # 20/s: cools down at the next window.
    states = []
    for _ in range(60):
        states.append(hot.observe_comment("v", t))
        t += 1 / 20
    assert states[0] and not states[-1]


def test_sweep_forgets_idle_cold_videos_only() -> None:
    hot = HotVideos(T)
    hot.observe_comment("quiet", 0.0)
    hot.observe_viewers("big", 10_000, 0.0)
    assert hot.sweep(1000.0, idle_s=600) == 1
    assert len(hot) == 1 and hot.is_hot("big", 1000.0) is False  # dwell passed, viewers stale: cools
    assert hot.sweep(2000.0, idle_s=600) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 5.0), st.booleans(), st.integers(0, 2000)),
        min_size=1,
        max_size=200,
    )
)
def test_a_hot_video_stays_hot_for_min_hot_s(events: list[tuple[float, bool, int]]) -> None:
    """Property: every switch to hot lasts at least ``min_hot_s``; never hot without cause."""
    hot = HotVideos(T)
    now = 0.0
    went_hot_at: float | None = None
    ever_over = False
    for gap, is_comment, viewers in events:
        now += gap
        if is_comment:
            state = hot.observe_comment("v", now)
        else:
            ever_over |= viewers >= T.hot_viewers
            state = hot.observe_viewers("v", viewers, now)
        ever_over |= hot.velocity("v") >= T.hot_velocity
        if state and went_hot_at is None:
            went_hot_at = now
            assert ever_over
        elif not state and went_hot_at is not None:
            assert now - went_hot_at >= T.min_hot_s
            went_hot_at = None


def test_cool_lines_above_hot_lines_are_refused() -> None:
    for bad in ({"hot_velocity": 10, "cool_velocity": 11}, {"hot_viewers": 10, "cool_viewers": 11}, {"window_s": 0}):
        try:
            ShardingThresholds(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")


# -- the state machine --------------------------------------------------------------------------

M = ShardingThresholds(
    hot_velocity=6, cool_velocity=3, hot_viewers=100, cool_viewers=60, min_hot_s=10, viewers_stale_s=30
)


@attrs.define
class Seen:
    """What the model knows of one video: the switch's last answer and its inputs."""

    hot: bool = False
    went_hot_at: float = 0.0
    last_seen: float = 0.0
    viewers: int = 0
    viewers_at: float | None = None


class HotVideosModel(RuleBasedStateMachine):
    """Every decision is taken inside a call that answers it, so the model sees every
    switch: each switch to hot has a cause, each switch back waits ``min_hot_s`` and
    needs both inputs below their cool lines, and ``sweep`` forgets exactly the idle
    cold videos (never a hot one)."""

    @initialize()
    def start(self) -> None:
        self.hot = HotVideos(M)
        self.now = 0.0
        self.seen: dict[str, Seen] = {}

    def _fresh_viewers(self, s: Seen) -> int:
        return s.viewers if s.viewers_at is not None and self.now - s.viewers_at < M.viewers_stale_s else 0

    def _answer(self, video: str, state: bool) -> None:
        s = self.seen[video]
        velocity = self.hot.velocity(video)
        viewers = self._fresh_viewers(s)
        if state and not s.hot:
            assert velocity >= M.hot_velocity or viewers >= M.hot_viewers, "hot without a cause"
            s.went_hot_at = self.now
        elif s.hot and not state:
            assert self.now - s.went_hot_at >= M.min_hot_s, "cooled before min_hot_s"
            assert velocity < M.cool_velocity and viewers < M.cool_viewers, "cooled above a cool line"
        s.hot = state

    @rule(dt=st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5, 7.0, 40.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(video=st.sampled_from(["a", "b", "c"]), n=st.integers(1, 12), spacing=st.sampled_from([0.0, 0.01, 0.2]))
    def comments(self, video: str, n: int, spacing: float) -> None:
        for _ in range(n):
            self.seen.setdefault(video, Seen(last_seen=self.now))
            state = self.hot.observe_comment(video, self.now)
            self.seen[video].last_seen = self.now
            self._answer(video, state)
            self.now += spacing

    @rule(video=st.sampled_from(["a", "b", "c"]), viewers=st.sampled_from([0, 30, 59, 60, 99, 100, 5000]))
    def viewers(self, video: str, viewers: int) -> None:
        s = self.seen.setdefault(video, Seen(last_seen=self.now))
        state = self.hot.observe_viewers(video, viewers, self.now)
        s.viewers, s.viewers_at, s.last_seen = viewers, self.now, self.now
        if viewers >= M.hot_viewers:
            assert state, "a fresh hot viewer count must turn the video hot at once"
        self._answer(video, state)

    @rule(video=st.sampled_from(["a", "b", "c", "never"]))
    def ask(self, video: str) -> None:
        state = self.hot.is_hot(video, self.now)
        if video not in self.seen:
            assert not state
            return
        self._answer(video, state)

    @rule(idle_s=st.sampled_from([0.0, 5.0, 60.0]))
    def sweep(self, idle_s: float) -> None:
        gone = [v for v, s in self.seen.items() if not s.hot and self.now - s.last_seen >= idle_s]
        assert self.hot.sweep(self.now, idle_s) == len(gone)
        for v in gone:
            del self.seen[v]

    @invariant()
    def tracks_exactly_the_videos_seen(self) -> None:
        assert len(self.hot) == len(self.seen)


HotVideosModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestHotVideosModel = HotVideosModel.TestCase
