"""One viewer's outbound queue: bounded, whole batches or nothing, gap notices, stuck detection."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from backpressure.outbound import OutboundQueue


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


def test_push_rest_and_push_control_ignore_the_limit() -> None:
    q = OutboundQueue(4, 30.0, gap)
    q.push_rest(b"0123456789", 0.0)
    q.push_control(b"goaway", 0.0)
    assert q.size == 16
    assert not q.push(b"x", 1, 0.0)
    assert drain(q) == b"0123456789goaway"


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
    q.push_control(b"", 0.0)
    q.push_rest(b"", 0.0)
    assert q.empty and q.peek() == b""


class QueueModel(RuleBasedStateMachine):
    """The queue against a reference stream: the bytes a viewer must receive, in order.

    Batches are unique tokens, so comparing the bytes written with the reference stream
    shows that every accepted batch arrives whole, in order, with the gap notices where
    they belong, and that nothing of a dropped batch ever arrives.
    """

    @initialize(limit=st.integers(0, 60), stuck_after=st.integers(1, 10))
    def start(self, limit: int, stuck_after: int) -> None:
        self.q = OutboundQueue(limit, float(stuck_after), gap)
        self.limit = limit
        self.stuck_after = stuck_after
        self.now = 0
        self.serial = 0
        self.expected = b""  # everything the viewer must get, in order
        self.written = b""  # what went out through peek/consume
        self.missed = 0
        self.missed_total = 0
        self.gaps = 0
        self.waiting_since: int | None = None  # bytes waiting and no progress since then
        self.over_limit_ok = False  # push_rest/push_control/flush_gap may exceed the limit

    def _queued(self) -> int:
        return len(self.expected) - len(self.written)

    def _append(self, data: bytes) -> None:
        if data and self._queued() == 0:
            self.waiting_since = self.now
        self.expected += data

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
            self._append(notice + data)
            if not self.over_limit_ok:
                assert self.q.size <= self.limit
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
        self.over_limit_ok = True

    @rule()
    def push_control(self) -> None:
        self.serial += 1
        data = b"{%d}" % self.serial
        self.q.push_control(data, float(self.now))
        self._append(data)
        self.over_limit_ok = True

    @precondition(lambda self: self._queued() > 0)
    @rule(data=st.data())
    def consume(self, data: st.DataObject) -> None:
        offered = bytes(self.q.peek())
        assert offered, "bytes are waiting but peek() offers none"
        n = data.draw(st.integers(1, len(offered)))
        self.written += offered[:n]
        self.q.consume(n, float(self.now))
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
                self.over_limit_ok = True  # a notice alone may exceed a tiny limit

    @rule()
    def drain_all(self) -> None:
        self.written += drain(self.q, float(self.now))
        self.waiting_since = None

    @invariant()
    def matches_the_reference(self) -> None:
        q = self.q
        assert self.expected.startswith(self.written)
        assert q.size == self._queued()
        assert q.empty == (self._queued() == 0)
        assert bytes(q.peek()) == self.expected[len(self.written) :][: len(bytes(q.peek()))]
        assert (q.missed, q.missed_total, q.gaps_sent) == (self.missed, self.missed_total, self.gaps)
        assert q.clear == (self._queued() == 0 and self.missed == 0)
        if not self.over_limit_ok:
            assert q.size <= self.limit

    @invariant()
    def stuck_only_when_waiting_without_progress(self) -> None:
        for later in (0, self.stuck_after - 1, self.stuck_after, self.stuck_after + 3):
            t = self.now + later
            want = self.waiting_since is not None and t >= self.waiting_since + self.stuck_after
            assert self.q.is_stuck(float(t)) == want

    def teardown(self) -> None:
        if hasattr(self, "q"):
            self.written += drain(self.q, float(self.now))
            if self.q.flush_gap(float(self.now)):
                self.expected += gap(self.missed)
                self.written += drain(self.q, float(self.now))
            assert self.written == self.expected
            assert self.q.clear


QueueModel.TestCase.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)
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
