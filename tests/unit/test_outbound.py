"""One viewer's outbound queue: bounded, whole batches or nothing, gap notices, stuck detection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from backpressure.outbound import CONTROL_SLACK, OutboundQueue


def gap(missed: int) -> bytes:
    return b"<gap %d>" % missed


def drain(q: OutboundQueue, now: float = 0.0) -> bytes:
    out = b""
    while not q.empty:
        part = bytes(q.peek())
        assert part, "bytes are waiting but peek() offers none"
        q.consume(len(part), now)
        out += part
    return out


def test_a_fresh_queue_is_clear() -> None:
    q = OutboundQueue(100, 30.0, gap)
    assert q.empty and q.clear and q.size == 0
    assert q.peek() == b""
    assert not q.is_stuck(10**6)
    assert not q.flush_gap(0.0)


def test_a_batch_that_fits_is_queued_whole() -> None:
    q = OutboundQueue(10, 30.0, gap)
    assert q.push(b"0123456789", 3, 0.0)
    assert q.size == 10
    assert not q.push(b"x", 1, 0.0)
    assert drain(q) == b"0123456789"


def test_a_batch_that_does_not_fit_is_dropped_whole_and_counted() -> None:
    q = OutboundQueue(10, 30.0, gap)
    assert q.push(b"abcdef", 2, 0.0)
    assert not q.push(b"ghijkl", 5, 0.0)  # 12 > 10: nothing of it is queued
    assert not q.push(b"mnopqr", 4, 0.0)
    assert (q.missed, q.missed_total, q.size) == (9, 9, 6)
    assert not q.clear
    assert drain(q) == b"abcdef"


def test_the_gap_goes_before_the_next_batch_that_fits() -> None:
    q = OutboundQueue(20, 30.0, gap)
    assert q.push(b"A" * 15, 1, 0.0)
    assert not q.push(b"B" * 10, 4, 0.0)
    q.consume(15, 1.0)
    assert q.push(b"C", 1, 1.0)
    assert drain(q) == b"<gap 4>C"
    assert (q.missed, q.missed_total, q.gaps_sent) == (0, 4, 1)


def test_the_gap_counts_toward_the_limit() -> None:
    q = OutboundQueue(10, 30.0, gap)
    assert q.push(b"A" * 10, 1, 0.0)
    assert not q.push(b"B", 2, 0.0)
    q.consume(10, 1.0)
    assert not q.push(b"C" * 5, 1, 1.0)  # "<gap 2>" + 5 bytes > 10
    assert q.missed == 3  # that batch is missed too, and the next gap says so
    assert q.push(b"D", 1, 1.0)
    assert drain(q) == b"<gap 3>D"


def test_flush_gap_tells_a_drained_viewer_what_it_missed() -> None:
    q = OutboundQueue(10, 30.0, gap)
    q.push(b"A" * 10, 1, 0.0)
    q.push(b"B", 7, 0.0)
    assert not q.flush_gap(0.0)  # bytes still waiting: the gap waits for the next batch or drain
    drain(q)
    assert q.flush_gap(1.0)
    assert not q.flush_gap(1.0)
    assert drain(q) == b"<gap 7>"
    assert q.clear


def test_push_rest_ignores_the_limit() -> None:
    q = OutboundQueue(4, 30.0, gap)
    q.push_rest(b"0123456789", 0.0)
    assert q.size == 10
    assert not q.push(b"x", 1, 0.0)
    assert drain(q) == b"0123456789"


def test_a_batch_partly_written_keeps_its_place_at_the_head() -> None:
    q = OutboundQueue(10, 30.0, gap)
    q.push_rest(b"[0123456789]", 5.0, written=4)  # "[012" went straight to the socket
    assert q.size == 8 and q.stuck_deadline() == 35.0
    q.push_pong(b"<p>", 5.0)  # a pong may not cut into the frame in progress
    assert bytes(q.peek()) == b"3456789]"
    assert drain(q) == b"3456789]<p>"
    q.push_rest(b"whole", 6.0, written=5)  # all of it went out: nothing waits
    assert q.empty


def test_a_batch_partly_written_is_refused_while_bytes_wait() -> None:
    q = OutboundQueue(10, 30.0, gap)
    q.push_pong(b"<p>", 0.0)
    with pytest.raises(ValueError):
        q.push_rest(b"[batch]", 0.0, written=2)
    assert drain(q) == b"<p>"


def test_push_control_takes_the_slack_beyond_the_limit_and_no_more() -> None:
    q = OutboundQueue(10, 30.0, gap, control_slack=8)
    assert q.push(b"A" * 10, 1, 0.0)
    assert q.push_control(b"goaway", 0.0)  # 16 <= 10 + 8
    assert not q.push_control(b"mode", 0.0)  # 20 > 18: refused, nothing queued
    assert q.size == 16
    assert q.push_control(b"ok", 0.0)  # exactly at limit + slack
    assert q.size == 18
    assert drain(q) == b"A" * 10 + b"goawayok"


def test_control_slack_defaults_to_a_small_fixed_amount() -> None:
    q = OutboundQueue(100, 30.0, gap)
    assert q.control_slack == CONTROL_SLACK
    q.push(b"A" * 100, 1, 0.0)
    assert q.push_control(b"c" * CONTROL_SLACK, 0.0)
    assert not q.push_control(b"c", 0.0)


def test_a_pong_on_an_empty_queue_goes_out() -> None:
    q = OutboundQueue(100, 30.0, gap)
    q.push_pong(b"<pong1>", 0.0)
    assert not q.empty and not q.clear and q.full
    assert q.size == 7
    assert drain(q) == b"<pong1>"
    assert q.clear and not q.full


def test_a_newer_pong_replaces_one_not_yet_started() -> None:
    q = OutboundQueue(100, 30.0, gap)
    q.push(b"[batch]", 1, 0.0)
    q.consume(2, 0.0)  # the batch is in progress
    for i in range(1000):
        q.push_pong(b"<pong%d>" % i, 0.0)
    assert q.size == 5 + len(b"<pong999>")  # one pong waits, whatever the flood
    assert q.pongs_replaced == 999
    assert drain(q) == b"atch]<pong999>"


def test_a_waiting_pong_goes_out_at_the_next_frame_boundary() -> None:
    q = OutboundQueue(100, 30.0, gap)
    q.push(b"[one]", 1, 0.0)
    q.push(b"[two]", 1, 0.0)
    q.consume(3, 0.0)  # "[on" written: the rest of [one] goes first
    q.push_pong(b"<p>", 0.0)
    assert drain(q) == b"e]<p>[two]"
    q.push(b"[three]", 1, 0.0)
    q.push_pong(b"<q>", 0.0)  # at a boundary: the pong goes first
    assert drain(q) == b"<q>[three]"


def test_a_partly_written_pong_is_finished_and_a_newer_one_follows_it() -> None:
    q = OutboundQueue(100, 30.0, gap)
    q.push(b"[batch]", 1, 0.0)
    q.push_pong(b"<pong-a>", 0.0)
    assert bytes(q.peek()) == b"<pong-a>"
    q.consume(3, 0.0)  # "<po" written: that frame must be finished
    q.push_pong(b"<pong-b>", 0.0)
    q.push_pong(b"<pong-c>", 0.0)  # replaces b, which had not started
    assert q.pongs_replaced == 1
    assert drain(q) == b"ng-a><pong-c>[batch]"


def test_a_pong_starts_the_stuck_clock_and_counts_as_waiting() -> None:
    q = OutboundQueue(100, 5.0, gap)
    q.push_pong(b"<p>", 10.0)
    assert q.stuck_deadline() == 15.0
    q.push_pong(b"<q>", 14.0)  # a newer pong is not progress
    assert q.is_stuck(15.0)
    q.consume(3, 16.0)
    assert q.empty and not q.is_stuck(100.0)


def test_full_while_anything_waits_or_a_gap_is_owed() -> None:
    q = OutboundQueue(10, 5.0, gap)
    assert not q.full
    q.push(b"A" * 10, 1, 0.0)
    assert q.full
    assert not q.push(b"B", 3, 0.0)
    drain(q)
    assert q.empty and q.full  # the gap notice is owed: still no input from this viewer
    assert q.flush_gap(0.0)
    drain(q)
    assert not q.full


def test_partial_consume_moves_through_the_first_chunk() -> None:
    q = OutboundQueue(100, 30.0, gap)
    q.push(b"hello", 1, 0.0)
    q.push(b"world", 1, 0.0)
    q.consume(2, 0.0)
    assert bytes(q.peek()) == b"llo"
    q.consume(3, 0.0)
    assert bytes(q.peek()) == b"world"
    assert q.size == 5


def test_consume_nothing_is_no_progress() -> None:
    q = OutboundQueue(100, 5.0, gap)
    q.push(b"abc", 1, 0.0)
    q.consume(0, 4.0)
    assert q.is_stuck(5.0)


def test_stuck_only_after_stuck_after_without_progress_while_bytes_wait() -> None:
    q = OutboundQueue(100, 5.0, gap)
    assert not q.is_stuck(100.0)  # nothing waiting: never stuck
    q.push(b"abcdef", 1, 10.0)  # bytes start waiting at 10
    assert q.stuck_deadline() == 15.0
    assert not q.is_stuck(14.0)
    q.consume(1, 14.0)  # progress at 14
    assert not q.is_stuck(18.0)
    assert q.is_stuck(19.0)
    q.push(b"more", 1, 19.5)  # more bytes are not progress
    assert q.is_stuck(19.5)
    drain(q, 20.0)
    assert not q.is_stuck(1000.0)
    q.push(b"x", 1, 500.0)  # the clock starts again when bytes start waiting again
    assert not q.is_stuck(504.0)
    assert q.is_stuck(505.0)


def test_empty_pushes_queue_nothing() -> None:
    q = OutboundQueue(10, 5.0, gap)
    assert q.push(b"", 0, 0.0)
    assert q.push_control(b"", 0.0)
    q.push_rest(b"", 0.0)
    q.push_pong(b"", 0.0)
    assert q.empty and q.peek() == b"" and q.clear


class QueueModel(RuleBasedStateMachine):
    """The queue against a reference: the frames waiting, in order, the rest of the frame
    being written, and the one pong slot.

    Every push is a unique token, so comparing what ``peek`` offers with the reference at
    every step shows that every accepted frame goes out whole, in order, with the gap
    notices where they belong; that nothing of a refused frame ever goes out; that a pong
    goes out only at a frame boundary, ahead of waiting frames; that at most one pong
    waits (a newer one replaces it unless it has started); and that what may exceed the
    limit does so only by its documented bound.
    """

    @initialize(limit=st.integers(0, 60), stuck_after=st.integers(1, 10), slack=st.integers(0, 20))
    def start(self, limit: int, stuck_after: int, slack: int) -> None:
        self.q = OutboundQueue(limit, float(stuck_after), gap, control_slack=slack)
        self.limit = limit
        self.slack = slack
        self.stuck_after = stuck_after
        self.now = 0
        self.serial = 0
        self.ahead = b""  # the rest of the frame being written
        self.frames: list[bytes] = []  # whole frames waiting, in order
        self.pong: bytes | None = None  # the waiting pong (not started)
        self.pushed: list[bytes] = []  # every frame accepted (not pongs), in order
        self.pongs: list[bytes] = []  # every pong pushed, in order
        self.written = b""
        self.missed = 0
        self.missed_total = 0
        self.gaps = 0
        self.replaced = 0
        self.waiting_since: int | None = None  # bytes waiting and no progress since then
        self.unbounded = False  # push_rest (or a gap notice longer than the limit) happened

    def _queued(self) -> int:
        return len(self.ahead) + sum(map(len, self.frames)) + len(self.pong or b"")

    def _offered(self) -> bytes:
        if self.ahead:
            return self.ahead
        if self.pong is not None:
            return self.pong
        return self.frames[0] if self.frames else b""

    def _start_waiting(self) -> None:
        if self._queued() == 0:
            self.waiting_since = self.now

    def _append(self, data: bytes) -> None:
        if data:
            self._start_waiting()
            self.frames.append(data)
            self.pushed.append(data)

    @rule(dt=st.integers(0, 4))
    def tick(self, dt: int) -> None:
        self.now += dt

    @rule(size=st.integers(0, 30), comments=st.integers(0, 9))
    def push(self, size: int, comments: int) -> None:
        self.serial += 1
        data = b"[%d:%s]" % (self.serial, b"x" * size)
        notice = gap(self.missed) if self.missed else b""
        before = self.q.size
        fits = before + len(notice) + len(data) <= self.limit
        assert self.q.push(data, comments, float(self.now)) == fits
        if fits:
            if notice:
                self.gaps += 1
                self.missed = 0
                self._append(notice)
            self._append(data)
            assert self.q.size <= self.limit  # whatever else waits, a batch never goes past the limit
        else:
            self.missed += comments
            self.missed_total += comments
            assert self.q.size == before

    @rule(size=st.integers(1, 30))
    def push_rest(self, size: int) -> None:
        self.serial += 1
        data = b"(%d:%s)" % (self.serial, b"r" * size)
        self.q.push_rest(data, float(self.now))
        self._append(data)
        self.unbounded = True

    @precondition(lambda self: self._queued() == 0)
    @rule(size=st.integers(1, 30), data=st.data())
    def push_rest_partly_written(self, size: int, data: st.DataObject) -> None:
        """The shell wrote part of a batch itself (only on an empty queue): the rest is the
        frame in progress, and nothing goes out before it."""
        self.serial += 1
        batch = b"(%d:%s)" % (self.serial, b"w" * size)
        written = data.draw(st.integers(1, len(batch)))
        self.q.push_rest(batch, float(self.now), written=written)
        self.written += batch[:written]  # what the shell wrote, in the stream's order
        self.pushed.append(batch)
        if written < len(batch):
            self.waiting_since = self.now
            self.ahead = batch[written:]
        self.unbounded = True

    @rule(size=st.integers(0, 12))
    def push_control(self, size: int) -> None:
        self.serial += 1
        data = b"{%d%s}" % (self.serial, b"c" * size)
        before = self.q.size
        fits = before + len(data) <= self.limit + self.slack
        assert self.q.push_control(data, float(self.now)) == fits
        if fits:
            self._append(data)
            assert self.q.size <= self.limit + self.slack
        else:
            assert self.q.size == before  # refused: nothing queued (the shell closes the viewer)

    @rule(size=st.integers(0, 8))
    def push_pong(self, size: int) -> None:
        self.serial += 1
        data = b"<%d%s>" % (self.serial, b"p" * size)
        self.q.push_pong(data, float(self.now))
        self.pongs.append(data)
        if self.pong is not None:
            self.replaced += 1
        else:
            self._start_waiting()
        self.pong = data

    @precondition(lambda self: self._queued() > 0)
    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        offered = bytes(self.q.peek())
        assert offered, "bytes are waiting but peek() offers none"
        n = data.draw(st.integers(1, len(offered)))
        self.written += offered[:n]
        self.q.consume(n, float(self.now))
        if self.ahead:
            self.ahead = self.ahead[n:]
        elif self.pong is not None:
            self.ahead, self.pong = self.pong[n:], None
        else:
            self.ahead = self.frames.pop(0)[n:]
        self.waiting_since = self.now if self._queued() else None

    @rule()
    def flush_gap(self) -> None:
        want = self._queued() == 0 and self.missed > 0
        assert self.q.flush_gap(float(self.now)) == want
        if want:
            notice = gap(self.missed)
            self.gaps += 1
            self.missed = 0
            self._append(notice)
            if len(notice) > self.limit:
                self.unbounded = True  # a notice alone may exceed a tiny limit

    @rule()
    def drain_all(self) -> None:
        while self._queued():
            offered = bytes(self.q.peek())
            self.written += offered
            self.q.consume(len(offered), float(self.now))
            if self.ahead:
                self.ahead = b""
            elif self.pong is not None:
                self.pong = None
            else:
                self.frames.pop(0)
        self.waiting_since = None

    @invariant()
    def matches_the_reference(self) -> None:
        q = self.q
        assert bytes(q.peek()) == self._offered()
        assert q.size == self._queued()
        assert q.empty == (self._queued() == 0)
        assert (q.missed, q.missed_total, q.gaps_sent) == (self.missed, self.missed_total, self.gaps)
        assert q.pongs_replaced == self.replaced
        assert q.clear == (self._queued() == 0 and self.missed == 0)
        assert q.full == (not q.clear)
        if not self.unbounded:
            # Batches within the limit, control frames within the slack, and pongs: at
            # most one being written and one waiting.
            longest_pong = max(map(len, self.pongs), default=0)
            assert q.size <= self.limit + self.slack + 2 * longest_pong

    @invariant()
    def stuck_only_when_waiting_without_progress(self) -> None:
        for later in (0, self.stuck_after - 1, self.stuck_after, self.stuck_after + 3):
            t = self.now + later
            want = self.waiting_since is not None and t >= self.waiting_since + self.stuck_after
            assert self.q.is_stuck(float(t)) == want

    def teardown(self) -> None:
        if not hasattr(self, "q"):
            return
        self.drain_all()
        if self.q.flush_gap(float(self.now)):
            self.pushed.append(gap(self.missed))
            self.written += drain(self.q, float(self.now))
        assert self.q.clear
        # Everything accepted arrived whole and in order, pongs aside; pongs arrived only
        # between frames, each at most once, the newest always.
        rest = self.written
        frames = list(self.pushed)
        pongs_out: list[bytes] = []
        while rest:
            if frames and rest.startswith(frames[0]):
                rest = rest[len(frames.pop(0)) :]
                continue
            pong = next((p for p in self.pongs if rest.startswith(p)), None)
            assert pong is not None, f"bytes that are neither the next frame nor a pong: {rest[:40]!r}"
            pongs_out.append(pong)
            rest = rest[len(pong) :]
        assert frames == [], "an accepted frame never went out"
        assert len(set(pongs_out)) == len(pongs_out)
        assert [p for p in self.pongs if p in pongs_out] == pongs_out  # in the order they came
        if self.pongs:
            assert pongs_out[-1] == self.pongs[-1]  # the newest pong always goes out


QueueModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestQueueModel = QueueModel.TestCase


@settings(max_examples=75, deadline=None)
@given(
    st.integers(8, 200),
    st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 5)), max_size=60),
)
def test_with_only_batches_the_size_never_exceeds_the_limit(limit: int, ops: list[tuple[bool, int, int]]) -> None:
    """push / consume / flush_gap only: the queue never holds more than ``limit`` bytes
    (gap notices here are at most 8 bytes, and the limit at least that)."""
    q = OutboundQueue(limit, 30.0, lambda n: b"<g%d>" % min(n, 999))
    for is_push, size, comments in ops:
        if is_push:
            q.push(b"b" * size, comments, 0.0)
        elif not q.empty:
            q.consume(min(size, len(q.peek())), 0.0)
        else:
            q.flush_gap(0.0)
        assert q.size <= limit
