"""Load generator processes: many SSE viewers per process on raw sockets, and a paced publisher.

Why it looks like this: the load generator must cost less per delivered comment than the
server it measures. One process holds thousands of non-blocking sockets on one ``epoll``
object, reads up to 256 KiB at a time into one preallocated buffer, counts frames with
``bytearray.count`` and parses only two timestamps per read (the first and the last
comment in it) for latency. Nothing is allocated per frame. After each round of reads
the process sleeps ``poll_s`` so that frames gather in the socket the way they would on
a real network: a client that wakes for every frame makes each server ``send()`` pay for
the wake-up (see ``docs/performance.md``).

Each worker runs in its own process (pinned to the load generator's CPU) and is driven by
the orchestrator over a ``multiprocessing`` pipe with small tuples: ``("measure", bool)``,
``("snap",)``, ``("storm",)``, ``("stop", expected)``, and ``("active", n)`` (the
``viral`` ramp: keep the first ``n`` viewers connected, drop the rest).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import heapq
import os
import random
import select
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from benches.procstat import pin, raise_nofile

M_COMMENT = b"event: comment\n"
M_EVENT = b"event: "
M_CREATED = b'"created_at":'
M_ID = b"\nid: "
M_MODE = b'"mode":"'
MODES = ("push", "sampled", "cdn")  # livecomments' fan-out tiers, announced with `event: mode`
SEAM = len(M_COMMENT) - 1
# WebSocket viewers: each server text frame is one JSON object, comments start with this.
WS_COMMENT = b'{"type":"comment"'
WS_TYPE = b'{"type":"'
WS_ID_AT = len(b'{"type":"comment","id":"')  # where a comment's id starts in its payload
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TRANSPORTS = ("sse", "ws")
HIST_MS = 120_000  # latency histogram: 1 ms bins up to 2 minutes (created_at is whole ms)
READ_SIZE = 256 * 1024

# Viewer states.
IDLE, CONNECTING, HEADERS, STREAM, PAUSED, DONE = range(6)
# Reading modes.
READS, SLOW, STALLED = range(3)
MODE_OF_CLASS = {"healthy": READS, "flapping": READS, "slow": SLOW, "stalled": STALLED}

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux: pick the port at connect()
EV_IN = select.EPOLLIN
EV_OUT = select.EPOLLOUT
EV_RDHUP = select.EPOLLRDHUP


@dataclass
class ViewerConfig:
    """What one viewer process does. Times are ``time.monotonic()`` values unless named _ms."""

    host: str
    port: int
    path: str
    classes: list[tuple[str, int]]
    connect_rate: float = 0.0  # initial connections per second; 0 = as fast as possible
    poll_s: float = 0.005
    slow_bps: int = 16_384
    small_rcvbuf: int = 0  # SO_RCVBUF for slow/stalled viewers; 0 = kernel default
    flap_interval_s: float = 5.0
    flap_pause_s: float = 0.5
    backlog_target: int = 0  # comment frames that count as "has the backlog"; 0 = not tracked
    track_ids: bool = True  # keep each viewer's last event id (for Last-Event-ID resumes)
    # Client sockets bind to 127.0.0.1 .. 127.0.0.N (all loopback): one source address has
    # about 28,000 ephemeral ports towards the server's port, and connect() gets slow as
    # they fill up (TIME_WAIT included). 0 = let the kernel choose.
    source_addrs: int = 16
    reconnect_delay_s: float = 1.0
    connect_timeout_s: float = 30.0
    series_origin: float = 0.0
    cpu: int | None = None
    seed: int = 0
    extra_headers: list[str] = field(default_factory=list)
    transport: str = "sse"  # "sse" or "ws" (WebSocket; resumes send ?last_event_id=)


class Viewer:
    """One SSE or WebSocket connection and its counters (slots: thousands of these per process)."""

    __slots__ = (
        "backlog_at",
        "budget",
        "chunk_left",
        "chunk_line",
        "chunk_skip",
        "cls",
        "connected_once",
        "fd",
        "first_latency",
        "frames",
        "hdr",
        "id_partial",
        "idx",
        "last_id",
        "live_from_ms",
        "mode",
        "parked",
        "reconnects",
        "seam",
        "seen_mode",
        "sock",
        "state",
        "storm_conn_at",
        "storm_live_at",
        "t_conn",
        "t_first",
        "tail",
        "ws_accept",
    )

    def __init__(self, idx: int, cls: int, mode: int) -> None:
        self.idx = idx
        self.cls = cls
        self.mode = mode
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = IDLE
        self.hdr = b""
        self.frames = 0
        self.last_id: bytes | None = None
        self.id_partial: bytes | None = None
        self.seam = False
        self.tail = b""
        self.t_conn = 0.0
        self.t_first = 0.0
        self.first_latency = -1.0
        self.live_from_ms = 0.0
        self.connected_once = False
        self.backlog_at = 0.0
        self.storm_conn_at = 0.0
        self.storm_live_at = 0.0
        self.budget = 0.0
        self.reconnects = 0
        self.parked = False  # dropped by the viral ramp: no reconnects until asked again
        self.seen_mode = 0  # index in MODES of the last mode the server announced
        self.ws_accept = b""  # the Sec-WebSocket-Accept the handshake must answer with
        # Transfer-Encoding: chunked (nginx re-chunks a stream it proxies): bytes left in the
        # current chunk (-1: the stream is not chunked), CRLF bytes still to skip after a
        # chunk, and a chunk-size line split by a read.
        self.chunk_left = -1
        self.chunk_skip = 0
        self.chunk_line = b""


def dechunk(v: Viewer, buf: bytearray, n: int) -> int:
    """Remove HTTP/1.1 chunk framing from the ``n`` bytes at the start of ``buf``, in place;
    returns how many payload bytes are left there.

    A chunk boundary can fall anywhere in an SSE frame (in the middle of ``event: comment``
    too), so frames are counted on the payload only. nginx writes one chunk per upstream
    read: a few per read here, each a short copy.
    """
    pos = out = 0
    while pos < n:
        if v.chunk_skip:  # the CRLF after a chunk's data
            take = min(v.chunk_skip, n - pos)
            v.chunk_skip -= take
            pos += take
        elif v.chunk_left > 0:
            take = min(v.chunk_left, n - pos)
            if out != pos:
                buf[out : out + take] = buf[pos : pos + take]
            out += take
            pos += take
            v.chunk_left -= take
            if not v.chunk_left:
                v.chunk_skip = 2
        else:  # a chunk-size line, maybe split across reads
            eol = buf.find(b"\n", pos, n)
            if eol < 0:
                v.chunk_line += bytes(buf[pos:n])
                if len(v.chunk_line) > 1024:
                    raise ValueError("chunk-size line over 1 KiB: not a chunked stream")
                break
            line = v.chunk_line + bytes(buf[pos:eol])
            v.chunk_line = b""
            pos = eol + 1
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:  # the last chunk: the stream ends (trailers, if any, are ignored)
                v.chunk_left, v.chunk_skip = 0, 1 << 62  # skip everything after it
            else:
                v.chunk_left = size
    return out


def _ws_header(data: Any, pos: int, n: int) -> tuple[int, int, int] | None:
    """(opcode, frame end, payload start) of an unmasked frame at ``pos``; None if the header is cut."""
    if n - pos < 2:
        return None
    ln = data[pos + 1] & 0x7F
    start = pos + 2
    if ln == 126:
        if n - pos < 4:
            return None
        ln = (data[pos + 2] << 8) | data[pos + 3]
        start = pos + 4
    elif ln == 127:
        if n - pos < 10:
            return None
        ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
        start = pos + 10
    return data[pos] & 0x0F, start + ln, start


class ClassStats:
    """Counters for one viewer class."""

    __slots__ = (
        "bytes",
        "events",
        "frames",
        "frames_window",
        "gaps",
        "hist",
        "lat_max",
        "lat_samples",
        "missed",
        "name",
        "reads",
        "reads_window",
        "reconnects",
        "server_closed",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames = 0
        self.frames_window = 0
        self.bytes = 0
        self.reads = 0
        self.reads_window = 0
        self.hist = array("Q", bytes(8 * HIST_MS))
        self.lat_max = 0.0
        self.lat_samples = 0
        self.gaps = 0
        self.missed = 0
        self.events: Counter[str] = Counter()
        self.server_closed = 0
        self.reconnects = 0


class ViewerWorker:
    """The event loop of one viewer process."""

    def __init__(self, cfg: ViewerConfig, ctl: Connection) -> None:
        self.cfg = cfg
        self.ctl = ctl
        self.addr = (cfg.host, cfg.port)
        self.ep = select.epoll()
        self.by_fd: dict[int, Viewer] = {}
        self.buf = bytearray(READ_SIZE)
        self.mv = memoryview(self.buf)
        self.timers: list[tuple[float, int, int, Viewer]] = []
        self.timer_seq = 0
        self.stats = [ClassStats(name) for name, _ in cfg.classes]
        self.viewers: list[Viewer] = []
        for ci, (name, count) in enumerate(cfg.classes):
            mode = MODE_OF_CLASS[name]
            for _ in range(count):
                self.viewers.append(Viewer(len(self.viewers), ci, mode))
        rnd = random.Random(cfg.seed)
        rnd.shuffle(self.viewers)  # interleave classes in the connect order
        self.rnd = rnd
        self.slow = [v for v in self.viewers if v.mode == SLOW]
        self.pending: set[Viewer] = set()
        self.errors: Counter[str] = Counter()
        self.series: list[int] = []
        self.new_frames = 0  # frames since the series was last updated (once per loop round)
        self.measuring = False
        self.stopping = False
        self.connecting = False
        self.next_connect = 0
        self.connect_t0 = 0.0
        self.connect_base = 0  # next_connect when the current round of connections began
        self.limit = len(self.viewers)  # viewers that should be connected (the viral ramp)
        self.connected = 0
        self.storm_t0 = 0.0
        self.storm_ms = 0.0
        if cfg.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {cfg.transport!r}")
        self.ws = cfg.transport == "ws"
        extra = "".join(h + "\r\n" for h in cfg.extra_headers)
        if self.ws:
            self.base_request = (
                f"HTTP/1.1\r\nHost: {cfg.host}:{cfg.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Version: 13\r\n" + extra
            ).encode()
        else:
            self.base_request = (
                f"GET {cfg.path} HTTP/1.1\r\nHost: {cfg.host}:{cfg.port}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n" + extra
            ).encode()
        self.consume: Callable[[Viewer, Any, int], None] = self._consume_ws if self.ws else self._consume

    # -- connection lifecycle -------------------------------------------------------------

    def _start_connect(self, v: Viewer, now: float) -> None:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:  # EMFILE/ENFILE: count it and try again later
            self.errors[f"socket {errno.errorcode.get(e.errno or 0, e.errno)}"] += 1
            self._retry_later(v, now)
            return
        s.setblocking(False)
        if self.cfg.source_addrs > 1:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{1 + v.idx % self.cfg.source_addrs}", 0))
        if v.mode != READS and self.cfg.small_rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.cfg.small_rcvbuf)
        err = s.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.errors[f"connect {errno.errorcode.get(err, err)}"] += 1
            self._retry_later(v, now)
            return
        v.sock = s
        v.fd = s.fileno()
        v.state = CONNECTING
        v.t_conn = now
        if not v.t_first:
            v.t_first = now
            v.live_from_ms = time.time() * 1000.0
        self.by_fd[v.fd] = v
        self.pending.add(v)
        self.ep.register(v.fd, EV_OUT)

    def _on_connected(self, v: Viewer, now: float) -> None:
        assert v.sock is not None
        err = v.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.errors[f"connect {errno.errorcode.get(err, err)}"] += 1
            self._close(v)
            self._retry_later(v, now)
            return
        if self.ws:
            req = self._ws_request(v)
        else:
            req = self.base_request
            if v.last_id is not None:
                req += b"Last-Event-ID: " + v.last_id + b"\r\n"
        try:
            v.sock.send(req + b"\r\n")
        except OSError as e:
            self.errors[f"send {errno.errorcode.get(e.errno or 0, e.errno)}"] += 1
            self._close(v)
            self._retry_later(v, now)
            return
        v.state = HEADERS
        v.hdr = b""
        self.ep.modify(v.fd, EV_IN)

    def _on_headers(self, v: Viewer, now: float) -> None:
        assert v.sock is not None
        try:
            data = v.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.errors[f"recv {errno.errorcode.get(e.errno or 0, e.errno)}"] += 1
            self._close(v)
            self._retry_later(v, now)
            return
        if not data:
            self.errors["closed before headers"] += 1
            self._close(v)
            self._retry_later(v, now)
            return
        v.hdr += data
        end = v.hdr.find(b"\r\n\r\n")
        if end < 0:
            if len(v.hdr) > 65536:
                self.errors["oversized headers"] += 1
                self.pending.discard(v)
                self._close(v)
                v.state = DONE
            return
        status = v.hdr[9:12]
        if status != (b"101" if self.ws else b"200"):
            self.errors[f"http {status.decode(errors='replace')}"] += 1
            self.pending.discard(v)
            self._close(v)
            v.state = DONE
            return
        if self.ws and not self._ws_accepted(v, v.hdr[:end]):
            self.errors["bad websocket handshake"] += 1
            self.pending.discard(v)
            self._close(v)
            v.state = DONE
            return
        body: bytes | bytearray = v.hdr[end + 4 :]
        chunked = b"transfer-encoding: chunked" in v.hdr[:end].lower()
        v.hdr = b""
        v.chunk_left, v.chunk_skip, v.chunk_line = (0 if chunked else -1), 0, b""
        if chunked and body:
            body = bytearray(body)
            del body[dechunk(v, body, len(body)) :]
        v.state = STREAM
        v.seam = False
        v.tail = b""
        v.id_partial = None
        v.seen_mode = 0  # the opening carries a `mode` event unless the video is in push
        self.pending.discard(v)
        if not v.connected_once:
            v.connected_once = True
            v.first_latency = now - v.t_first
            self.connected += 1
        if self.storm_t0 and not v.storm_conn_at:
            v.storm_conn_at = now
        if v.mode != READS:
            # Slow viewers are read on a timer, stalled ones never: only watch for the close.
            self.ep.modify(v.fd, EV_RDHUP)
        elif self.stats[v.cls].name == "flapping":
            self._add_timer(now + self.cfg.flap_interval_s * self.rnd.uniform(0.5, 1.5), 1, v)
        if body:
            self.consume(v, body, len(body))

    # -- WebSocket --------------------------------------------------------------------------

    def _ws_request(self, v: Viewer) -> bytes:
        """The upgrade request (a fresh key per connection); a resume carries ?last_event_id=."""
        key = base64.b64encode(os.urandom(16))
        v.ws_accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        path = self.cfg.path.encode()
        if v.last_id is not None:
            path += (b"&" if b"?" in path else b"?") + b"last_event_id=" + v.last_id
        return b"GET " + path + b" " + self.base_request + b"Sec-WebSocket-Key: " + key + b"\r\n"

    @staticmethod
    def _ws_accepted(v: Viewer, head: bytes) -> bool:
        """The 101 upgrades to websocket and answers our key."""
        upgrade = accept = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"upgrade":
                upgrade = value.strip().lower()
            elif name == b"sec-websocket-accept":
                accept = value.strip()
        return upgrade == b"websocket" and accept == v.ws_accept

    def _ws_send(self, v: Viewer, opcode: int, payload: bytes) -> None:
        """One small masked client frame (pong, close reply); best effort."""
        if v.sock is None or len(payload) > 125:
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        try:
            v.sock.send(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)
        except OSError:
            pass

    def _consume_ws(self, v: Viewer, data: Any, n: int) -> None:
        """Account for ``n`` bytes of one WebSocket viewer's stream held at the start of ``data``.

        Server frames are unmasked: step from header to header (2, 4 or 10 bytes), count the
        text frames whose payload starts with ``{"type":"comment"`` and parse ``created_at``
        in the first and last comment of the read only. A frame cut by the end of the read
        is kept in ``v.tail`` and completed by the next read.
        """
        st = self.stats[v.cls]
        st.bytes += n
        st.reads += 1
        measuring = self.measuring
        if measuring:
            st.reads_window += 1
        c = 0
        first: tuple[Any, int, int] | None = None
        last: tuple[Any, int, int] | None = None
        pos = 0
        if v.tail:  # finish the frame the previous read cut
            t = v.tail
            head = t if len(t) >= 10 else t + bytes(data[: min(n, 10 - len(t))])
            h = _ws_header(head, 0, len(head))
            if h is None or h[1] - len(t) > n:
                v.tail = t + bytes(data[:n])
                return
            frame = t + bytes(data[: h[1] - len(t)])
            pos = h[1] - len(t)
            v.tail = b""
            op, start, end = h[0], h[2], h[1]
            if op == 1 and frame.startswith(WS_COMMENT, start, end):
                c = 1
                first = last = (frame, start, end)
            elif not self._ws_other(v, st, op, frame, start, end):
                return
        while pos < n:
            if n - pos < 2:
                v.tail = bytes(data[pos:n])
                break
            b1 = data[pos + 1]
            ln = b1 & 0x7F
            start = pos + 2
            if ln == 126:
                if n - pos < 4:
                    v.tail = bytes(data[pos:n])
                    break
                ln = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif ln == 127:
                if n - pos < 10:
                    v.tail = bytes(data[pos:n])
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            if b1 & 0x80:
                self.errors["masked server frame"] += 1
                self._on_server_close(v, time.monotonic(), "protocol")
                return
            end = start + ln
            if end > n:
                v.tail = bytes(data[pos:n])
                break
            op = data[pos] & 0x0F
            if op == 1 and data.startswith(WS_COMMENT, start, end):
                c += 1
                if first is None:
                    first = (data, start, end)
                last = (data, start, end)
            elif not self._ws_other(v, st, op, data, start, end):
                return
            pos = end
        if c:
            v.frames += c
            st.frames += c
            self.new_frames += c
            if measuring:
                st.frames_window += c
            assert first is not None and last is not None
            if measuring or self.storm_ms:
                now_ms = time.time() * 1000.0
                self._ws_sample(v, st, first, now_ms, measuring)
                if last is not first:
                    self._ws_sample(v, st, last, now_ms, measuring)
            if self.cfg.track_ids:
                buf, start, end = last
                q = buf.find(b'"', start + WS_ID_AT, end)
                if q > 0:
                    v.last_id = bytes(buf[start + WS_ID_AT : q])
            bt = self.cfg.backlog_target
            if bt and not v.backlog_at and v.frames >= bt:
                v.backlog_at = time.monotonic()

    def _ws_sample(
        self, v: Viewer, st: ClassStats, frame: tuple[Any, int, int], now_ms: float, measuring: bool
    ) -> None:
        buf, start, end = frame
        k = buf.find(M_CREATED, start, end)
        if k < 0:
            return
        k += 13
        try:
            created = int(buf[k : k + 13])
        except ValueError:
            return
        self._sample(v, st, created, now_ms, measuring)

    def _sample(self, v: Viewer, st: ClassStats, created: float, now_ms: float, measuring: bool) -> None:
        """One latency sample (a live comment's accept time against now) and the storm mark."""
        if measuring and created >= v.live_from_ms - 1.0:
            lat = now_ms - created
            if lat < 0.0:
                lat = 0.0
            st.hist[int(lat) if lat < HIST_MS else HIST_MS - 1] += 1
            st.lat_samples += 1
            if lat > st.lat_max:
                st.lat_max = lat
        if self.storm_ms and not v.storm_live_at and created >= self.storm_ms:
            v.storm_live_at = time.monotonic()

    def _ws_other(self, v: Viewer, st: ClassStats, op: int, data: Any, start: int, end: int) -> bool:
        """A frame that is not a comment: control events, ping, close. False if it ended the stream."""
        if op == 1:
            if data.startswith(WS_TYPE, start, end):
                q = data.find(b'"', start + len(WS_TYPE), end)
                name = bytes(data[start + len(WS_TYPE) : q]).decode(errors="replace") if q > 0 else "?"
            else:
                name = "?"
            st.events[name] += 1
            if name == "gap":
                st.gaps += 1
                m = data.find(b'"missed":', start, end)
                if m >= 0:
                    q = m + 9
                    while q < end and 48 <= data[q] <= 57:
                        q += 1
                    if q > m + 9:
                        st.missed += int(data[m + 9 : q])
            elif name == "mode":
                m = data.find(M_MODE, start, end)
                if m >= 0:
                    q = data.find(b'"', m + len(M_MODE), end)
                    mode = bytes(data[m + len(M_MODE) : q]).decode(errors="replace") if q > 0 else ""
                    if mode in MODES:
                        v.seen_mode = MODES.index(mode)
        elif op == 9:  # ping: answer with a pong
            self._ws_send(v, 0xA, bytes(data[start:end]))
        elif op == 8:  # close: echo it and count the close like an EOF
            self._ws_send(v, 0x8, bytes(data[start : min(end, start + 2)]))
            self._on_server_close(v, time.monotonic(), "websocket close")
            return False
        elif op != 0xA:
            st.events[f"opcode {op}"] += 1
        return True

    def _close(self, v: Viewer) -> None:
        self.pending.discard(v)
        if v.sock is not None:
            try:
                self.ep.unregister(v.fd)
            except (OSError, ValueError):
                pass
            self.by_fd.pop(v.fd, None)
            v.sock.close()
            v.sock = None
            v.fd = -1
        v.state = PAUSED

    def _retry_later(self, v: Viewer, now: float) -> None:
        v.state = PAUSED
        self._add_timer(now + self.cfg.reconnect_delay_s, 0, v)

    def _on_server_close(self, v: Viewer, now: float, why: str) -> None:
        st = self.stats[v.cls]
        st.server_closed += 1
        if v.mode == READS and not self.stopping:
            self.errors[f"stream closed by server ({why})"] += 1
        self._close(v)
        if not self.stopping:
            self._retry_later(v, now)

    def _add_timer(self, when: float, kind: int, v: Viewer) -> None:
        """kind 0: (re)connect; kind 1: flap (drop the connection, come back after a pause)."""
        self.timer_seq += 1
        heapq.heappush(self.timers, (when, self.timer_seq, kind, v))

    def _run_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, kind, v = heapq.heappop(timers)
            if self.stopping:
                continue
            if kind == 0:
                if v.state in (PAUSED, IDLE) and not v.parked:
                    v.reconnects += 1
                    self.stats[v.cls].reconnects += 1
                    self._start_connect(v, now)
            elif kind == 1 and v.state == STREAM:
                self._close(v)
                self._add_timer(now + self.cfg.flap_pause_s, 0, v)

    def _connect_more(self, now: float) -> None:
        """Open the initial connections, at ``connect_rate`` per second if set."""
        total = min(len(self.viewers), self.limit)
        if not self.connecting or self.next_connect >= total:
            return
        if not self.connect_t0:
            self.connect_t0 = now
        if self.cfg.connect_rate > 0:
            target = min(total, self.connect_base + int((now - self.connect_t0) * self.cfg.connect_rate) + 1)
        else:
            target = total
        while self.next_connect < target:
            v = self.viewers[self.next_connect]
            v.parked = False
            if v.state in (IDLE, PAUSED):
                self._start_connect(v, now)
            self.next_connect += 1

    def _set_active(self, n: int, now: float) -> None:
        """Keep the first ``n`` viewers connected: drop the others (newest first), or
        connect more at ``connect_rate``."""
        n = max(0, min(n, len(self.viewers)))
        self.limit = n
        for v in self.viewers[n : self.next_connect]:
            v.parked = True
            if v.sock is not None:
                self._close(v)
            v.state = IDLE
        if n < self.next_connect:
            self.next_connect = n
        self.connecting = True
        self.connect_t0 = now
        self.connect_base = self.next_connect

    def _sweep_timeouts(self, now: float) -> None:
        limit = now - self.cfg.connect_timeout_s
        for v in [v for v in self.pending if v.t_conn < limit and v.state in (CONNECTING, HEADERS)]:
            self.errors["connect timeout"] += 1
            self.pending.discard(v)
            self._close(v)
            self._retry_later(v, now)

    # -- the hot path ------------------------------------------------------------------------

    def _consume(self, v: Viewer, data: Any, n: int) -> None:
        """Account for ``n`` bytes of one viewer's stream held at the start of ``data``.

        The hot path: a few C-level scans of the buffer and at most two integer parses
        per read, whatever the number of frames in it.
        """
        c = data.count(M_COMMENT, 0, n)
        joined = b""
        if v.seam:  # the previous read ended mid-line: look for a marker across the boundary
            joined = v.tail + bytes(data[:SEAM])
            c += joined.count(M_COMMENT)
        if self.cfg.track_ids and (c or joined or v.id_partial is not None or data.startswith(b"id: ", 0, n)):
            self._track_id(v, data, n, joined)
        if data[n - 1] == 10:
            v.seam = False
        else:
            v.seam = True
            v.tail = bytes(data[max(0, n - SEAM) : n])
        st = self.stats[v.cls]
        st.bytes += n
        st.reads += 1
        measuring = self.measuring
        if measuring:
            st.reads_window += 1
        if c:
            v.frames += c
            st.frames += c
            self.new_frames += c
            if measuring:
                st.frames_window += c
            i = data.find(M_CREATED, 0, n)
            if i >= 0:
                now_ms = time.time() * 1000.0
                j = data.rfind(M_CREATED, i + 13, n)
                for k in (i, j) if j > i else (i,):
                    k += 13
                    if k + 13 >= n:
                        continue
                    try:
                        created = int(data[k : k + 13])
                    except ValueError:
                        continue
                    self._sample(v, st, created, now_ms, measuring)
            bt = self.cfg.backlog_target
            if bt and not v.backlog_at and v.frames >= bt:
                v.backlog_at = time.monotonic()
        if data.count(M_EVENT, 0, n) != c:
            self._control_events(v, st, data, n)

    def _track_id(self, v: Viewer, data: Any, n: int, joined: bytes) -> None:
        """Keep the id of the newest comment read, even when a read splits its ``id:`` line."""
        if v.id_partial is not None:
            k = data.find(b"\n", 0, n)
            if k >= 0:
                v.last_id = v.id_partial + bytes(data[:k])
                v.id_partial = None
            else:
                v.id_partial += bytes(data[:n])
        if not joined and data.startswith(b"id: ", 0, n):  # the read split "...\n" | "id: ..."
            k = data.find(b"\n", 4, n)
            if k >= 0:
                v.last_id = bytes(data[4:k])
            else:
                v.id_partial = bytes(data[4:n])
        if joined:
            j = joined.rfind(M_ID)
            start = j + len(M_ID) - len(v.tail)
            if j >= 0 and start > 0:  # the "\nid: " marker itself straddles the boundary
                k = data.find(b"\n", start, n)
                if k >= 0:
                    v.last_id = bytes(data[start:k])
                else:
                    v.id_partial = bytes(data[start:n])
        i = data.rfind(M_ID, 0, n)
        if i >= 0:
            k = data.find(b"\n", i + 5, n)
            if k >= 0:
                v.last_id = bytes(data[i + 5 : k])
                v.id_partial = None
            else:
                v.id_partial = bytes(data[i + 5 : n])

    def _control_events(self, v: Viewer, st: ClassStats, data: Any, n: int) -> None:
        """Rare events (gap, reset, goaway, mode, remove): parse them one by one."""
        pos = data.find(M_EVENT, 0, n)
        while pos >= 0:
            eol = data.find(b"\n", pos, n)
            if eol < 0:
                break
            name = bytes(data[pos + 7 : eol]).decode(errors="replace").strip()
            if name != "comment":
                st.events[name] += 1
                if name == "gap":
                    st.gaps += 1
                    m = data.find(b'"missed":', eol, n)
                    if m >= 0:
                        digits = bytearray()
                        q = m + 9
                        while q < n and 48 <= data[q] <= 57:
                            digits.append(data[q])
                            q += 1
                        if digits:
                            st.missed += int(digits)
                elif name == "mode":
                    m = data.find(M_MODE, eol, n)
                    if m >= 0:
                        q = data.find(b'"', m + len(M_MODE), n)
                        mode = bytes(data[m + len(M_MODE) : q]).decode(errors="replace") if q > 0 else ""
                        if mode in MODES:
                            v.seen_mode = MODES.index(mode)
            pos = data.find(M_EVENT, eol, n)

    def _read(self, v: Viewer, now: float, limit: int = READ_SIZE) -> None:
        assert v.sock is not None
        try:
            n = v.sock.recv_into(self.mv[:limit] if limit < READ_SIZE else self.buf)
        except BlockingIOError:
            return
        except OSError as e:
            self._on_server_close(v, now, errno.errorcode.get(e.errno or 0, str(e.errno)))
            return
        if n == 0:
            self._on_server_close(v, now, "eof")
            return
        if v.chunk_left >= 0:
            n = dechunk(v, self.buf, n)
            if not n:
                return
        self.consume(v, self.buf, n)

    def _slow_tick(self, now: float, dt: float) -> None:
        """Slow viewers read at most ``slow_bps`` bytes per second, in 100 ms steps."""
        allowance = self.cfg.slow_bps * dt
        for v in self.slow:
            if v.state != STREAM:
                continue
            v.budget = min(v.budget + allowance, float(READ_SIZE))
            take = int(v.budget)
            if take <= 0:
                continue
            before = self.stats[v.cls].bytes
            self._read(v, now, take)
            v.budget -= self.stats[v.cls].bytes - before

    # -- control ---------------------------------------------------------------------------

    def _storm(self, now: float) -> None:
        """Every viewer drops its connection and resumes at once with Last-Event-ID."""
        self.storm_t0 = now
        self.storm_ms = time.time() * 1000.0
        for v in self.viewers:
            v.storm_conn_at = 0.0
            v.storm_live_at = 0.0
            if v.state in (CONNECTING, HEADERS, STREAM):
                self.pending.discard(v)
                self._close(v)
                v.reconnects += 1
                self.stats[v.cls].reconnects += 1
                self._start_connect(v, now)

    def snapshot(self) -> dict[str, Any]:
        streaming = sum(1 for v in self.viewers if v.state == STREAM)
        out: dict[str, Any] = {
            "connected_once": self.connected,
            "streaming": streaming,
            "frames": sum(s.frames for s in self.stats),
            "frames_by_class": {s.name: s.frames for s in self.stats},
            "errors": sum(self.errors.values()),
        }
        told = [0] * len(MODES)
        for v in self.viewers:
            if v.state == STREAM:
                told[v.seen_mode] += 1
        out["viewers_by_mode"] = dict(zip(MODES, told))  # the mode each was last told
        bt = self.cfg.backlog_target
        if bt:
            out["with_backlog"] = sum(1 for v in self.viewers if v.backlog_at)
        if self.storm_t0:
            out["storm_reconnected"] = sum(1 for v in self.viewers if v.storm_conn_at)
            out["storm_live"] = sum(1 for v in self.viewers if v.storm_live_at)
        return out

    def results(self, expected: int) -> dict[str, Any]:
        t = os.times()
        classes: dict[str, Any] = {}
        for ci, st in enumerate(self.stats):
            members = [v for v in self.viewers if v.cls == ci]
            entry: dict[str, Any] = {
                "viewers": len(members),
                "streaming": sum(1 for v in members if v.state == STREAM),
                "frames": st.frames,
                "frames_window": st.frames_window,
                "bytes": st.bytes,
                "reads": st.reads,
                "reads_window": st.reads_window,
                "hist": {i: c for i, c in enumerate(st.hist) if c},
                "lat_max": st.lat_max,
                "lat_samples": st.lat_samples,
                "gaps": st.gaps,
                "missed": st.missed,
                "events": dict(st.events),
                "server_closed": st.server_closed,
                "reconnects": st.reconnects,
            }
            if expected >= 0:
                entry["missing"] = sum(max(0, expected - v.frames) for v in members)
                entry["duplicates"] = sum(max(0, v.frames - expected) for v in members)
                entry["complete"] = sum(1 for v in members if v.frames == expected)
            classes[st.name] = entry
        out: dict[str, Any] = {
            "classes": classes,
            "errors": dict(self.errors),
            "series": self.series,
            "connect_latency_s": [v.first_latency for v in self.viewers if v.connected_once],
            "connected": self.connected,
            "cpu_s": t.user + t.system,
            "cpu_user_s": t.user,
            "cpu_sys_s": t.system,
        }
        # Absolute time.monotonic() values (one clock for every process on the machine).
        if self.cfg.backlog_target:
            out["backlog_at"] = [v.backlog_at or None for v in self.viewers]
        if self.storm_t0:
            out["storm_t0"] = self.storm_t0
            out["storm_reconnect_at"] = [v.storm_conn_at or None for v in self.viewers]
            out["storm_live_at"] = [v.storm_live_at or None for v in self.viewers]
        return out

    def _control(self, now: float) -> None:
        while self.ctl.poll():
            msg = self.ctl.recv()
            cmd = msg[0]
            if cmd == "measure":
                self.measuring = bool(msg[1])
            elif cmd == "connect":
                self.connecting = True
                self.connect_t0 = now
            elif cmd == "active":
                self._set_active(int(msg[1]), now)
            elif cmd == "snap":
                self.ctl.send(self.snapshot())
            elif cmd == "storm":
                self._storm(now)
            elif cmd == "stop":
                self.stopping = True
                self.measuring = False
                self.ctl.send(self.results(int(msg[1])))
                return

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        ctl_fd = self.ctl.fileno()
        self.ep.register(ctl_fd, EV_IN)
        self.ctl.send(("ready", os.getpid()))
        poll_s = self.cfg.poll_s
        next_slow = time.monotonic() + 0.1
        next_sweep = time.monotonic() + 1.0
        by_fd = self.by_fd
        buf = self.buf
        consume = self.consume
        maxevents = len(self.viewers) + 8
        while not self.stopping:
            now = time.monotonic()
            self._connect_more(now)
            if self.timers and self.timers[0][0] <= now:
                self._run_timers(now)
            if self.slow and now >= next_slow:
                self._slow_tick(now, 0.1)
                next_slow += 0.1
                if next_slow < now:
                    next_slow = now + 0.1
            if now >= next_sweep:
                self._sweep_timeouts(now)
                next_sweep = now + 1.0
            timeout = 0.1
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - now))
            if self.connecting and self.next_connect < len(self.viewers):
                timeout = min(timeout, 0.002)
            events = self.ep.poll(timeout, maxevents)
            if not events:
                continue
            now = time.monotonic()
            for fd, ev in events:
                v = by_fd.get(fd)
                if v is None:
                    if fd == ctl_fd:
                        self._control(now)
                        if self.stopping:
                            break
                    continue
                st = v.state
                if st == STREAM:
                    if v.mode == READS:
                        try:
                            n = v.sock.recv_into(buf)  # type: ignore[union-attr]
                        except BlockingIOError:
                            continue
                        except OSError as e:
                            self._on_server_close(v, now, errno.errorcode.get(e.errno or 0, str(e.errno)))
                            continue
                        if n:
                            if v.chunk_left >= 0:  # through nginx: take the chunk framing out
                                n = dechunk(v, buf, n)
                                if not n:
                                    continue
                            consume(v, buf, n)
                        else:
                            self._on_server_close(v, now, "eof")
                    elif ev & (EV_RDHUP | select.EPOLLHUP | select.EPOLLERR):
                        self._on_server_close(v, now, "hangup")
                elif st == CONNECTING:
                    self._on_connected(v, now)
                elif st == HEADERS:
                    self._on_headers(v, now)
            if self.new_frames:
                sec = int(now - self.cfg.series_origin)
                series = self.series
                if sec >= len(series):
                    series.extend([0] * (sec + 1 - len(series)))
                series[sec] += self.new_frames
                self.new_frames = 0
            if poll_s > 0:
                time.sleep(poll_s)
        for v in self.viewers:
            if v.sock is not None:
                v.sock.close()


def viewer_main(cfg: ViewerConfig, ctl: Connection) -> None:
    """Process entry point for viewers."""
    pin(cfg.cpu)
    raise_nofile()
    ViewerWorker(cfg, ctl).run()


# -----------------------------------------------------------------------------------------
# Publisher


@dataclass
class PublisherConfig:
    """A paced, keep-alive HTTP POST publisher.

    ``body_template`` is bytes with ``%(seq)d`` and ``%(ms)d`` fields (post number, send
    time in ms since the epoch), so a body costs one formatting operation.
    """

    host: str
    port: int
    path: str
    body_template: bytes
    rate: float
    headers_per_connection: list[list[str]]
    ok_statuses: tuple[int, ...] = (200, 201, 202)
    max_lag_s: float = 1.0
    cpu: int | None = None
    series_origin: float = 0.0
    # Ports the connections go to, connection i to ports[i % len(ports)] (empty: ``port``
    # for all). With several, the publisher takes its connections in turn (round-robin
    # over the ports) instead of always the first idle one.
    ports: list[int] = field(default_factory=list)


class PubConn:
    """One keep-alive publisher connection."""

    __slots__ = ("busy", "fd", "head", "in_window", "port", "rbuf", "sent_at", "sock")

    def __init__(self, head: bytes, port: int) -> None:
        self.sock: socket.socket | None = None
        self.fd = -1
        self.head = head
        self.port = port
        self.busy = False
        self.sent_at = 0.0
        self.in_window = False
        self.rbuf = b""


def _response_complete(buf: bytes) -> tuple[int, int, bool] | None:
    """(status, total length, close) once ``buf`` holds one whole HTTP/1.1 response."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            close = True
    if chunked:
        term = buf.find(b"0\r\n\r\n", end + 4)
        if term < 0:
            return None
        return status, term + 5, close
    total = end + 4 + length
    if len(buf) < total:
        return None
    return status, total, close


class PublisherWorker:
    """Posts comments at a fixed rate over keep-alive connections, measuring post latency."""

    def __init__(self, cfg: PublisherConfig, ctl: Connection) -> None:
        self.cfg = cfg
        self.ctl = ctl
        self.ep = select.epoll()
        self.conns = []
        ports = cfg.ports or [cfg.port]
        for i, hdrs in enumerate(cfg.headers_per_connection):
            port = ports[i % len(ports)]
            head = (
                f"POST {cfg.path} HTTP/1.1\r\nHost: {cfg.host}:{port}\r\n"
                "Content-Type: application/json\r\n" + "".join(h + "\r\n" for h in hdrs)
            ).encode()
            self.conns.append(PubConn(head, port))
        self.rotate = len(set(ports)) > 1
        self.next_conn = 0
        self.by_fd: dict[int, PubConn] = {}
        self.posting = False
        self.measuring = False
        self.stopping = False
        self.t0 = 0.0
        self.seq = 0
        self.sent = 0
        self.ok = 0
        self.ok_window = 0
        self.sent_window = 0
        self.skipped = 0
        self.statuses: Counter[int] = Counter()
        self.ok_by_port: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.series: list[int] = []
        self.max_lag = 0.0

    def _connect(self, c: PubConn) -> None:
        s = socket.create_connection((self.cfg.host, c.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        c.sock = s
        c.fd = s.fileno()
        c.busy = False
        c.rbuf = b""
        self.by_fd[c.fd] = c
        self.ep.register(c.fd, EV_IN)

    def _drop(self, c: PubConn) -> None:
        if c.sock is not None:
            try:
                self.ep.unregister(c.fd)
            except (OSError, ValueError):
                pass
            self.by_fd.pop(c.fd, None)
            c.sock.close()
            c.sock = None
        c.busy = False

    def _send(self, c: PubConn, now: float) -> None:
        if c.sock is None:
            try:
                self._connect(c)
            except OSError as e:
                self.errors[f"connect {e}"] += 1
                return
        assert c.sock is not None
        body = self.cfg.body_template % {b"seq": self.seq, b"ms": int(time.time() * 1000)}
        req = c.head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        try:
            sent = c.sock.send(req)
            if sent < len(req):  # rare on loopback: finish it blocking
                c.sock.setblocking(True)
                c.sock.sendall(req[sent:])
                c.sock.setblocking(False)
        except OSError as e:
            self.errors[f"send {errno.errorcode.get(e.errno or 0, e.errno)}"] += 1
            self._drop(c)
            return
        self.seq += 1
        self.sent += 1
        if self.measuring:
            self.sent_window += 1
        c.busy = True
        c.sent_at = now
        c.in_window = self.measuring

    def _on_readable(self, c: PubConn, now: float) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if c.busy:
                self.errors["publisher connection closed mid-request"] += 1
            self._drop(c)
            return
        c.rbuf += data
        done = _response_complete(c.rbuf)
        if done is None:
            return
        status, total, close = done
        c.rbuf = c.rbuf[total:]
        c.busy = False
        self.statuses[status] += 1
        if status in self.cfg.ok_statuses:
            self.ok += 1
            self.ok_by_port[c.port] += 1
            sec = int(now - self.cfg.series_origin)
            if sec >= len(self.series):
                self.series.extend([0] * (sec + 1 - len(self.series)))
            self.series[sec] += 1
            if c.in_window:
                self.ok_window += 1
                self.latencies.append((time.monotonic() - c.sent_at) * 1000.0)
        else:
            self.errors[f"post http {status}"] += 1
        if close:
            self._drop(c)

    def _control(self) -> None:
        while self.ctl.poll():
            msg = self.ctl.recv()
            cmd = msg[0]
            if cmd == "start":
                self.posting = True
                self.t0 = time.monotonic()
            elif cmd == "measure":
                self.measuring = bool(msg[1])
            elif cmd == "snap":
                self.ctl.send({"sent": self.sent, "ok": self.ok, "lag_s": self.max_lag})
            elif cmd == "stop":
                self.posting = False
                self.measuring = False
                self.stopping = True

    def run(self) -> None:
        ctl_fd = self.ctl.fileno()
        self.ep.register(ctl_fd, EV_IN)
        for c in self.conns:
            self._connect(c)
        self.ctl.send(("ready", os.getpid()))
        interval = 1.0 / self.cfg.rate if self.cfg.rate > 0 else 0.0
        posted_since_start = 0
        drain_until = 0.0
        while True:
            now = time.monotonic()
            timeout = 0.1
            if self.posting and interval:
                due = self.t0 + posted_since_start * interval
                lag = now - due
                if lag > self.cfg.max_lag_s:
                    # The server cannot keep up: skip the slots that are hopelessly late, so the
                    # achieved rate shows its capacity instead of a burst catching up.
                    skip = int((lag - self.cfg.max_lag_s) / interval) + 1
                    self.skipped += skip
                    posted_since_start += skip
                    due = self.t0 + posted_since_start * interval
                    lag = now - due
                if self.measuring and lag > self.max_lag:
                    self.max_lag = lag
                order = self.conns
                if self.rotate:  # round-robin over the ports: start after the last one used
                    k = self.next_conn % len(self.conns)
                    order = self.conns[k:] + self.conns[:k]
                for c in order:
                    if due > now:
                        break
                    if not c.busy:
                        self._send(c, now)
                        posted_since_start += 1
                        due = self.t0 + posted_since_start * interval
                        self.next_conn = self.conns.index(c) + 1
                timeout = due - now if due > now and any(not c.busy for c in self.conns) else 0.05
            if self.stopping:
                if not drain_until:
                    drain_until = now + 3.0
                if now >= drain_until or not any(c.busy for c in self.conns):
                    break
            for fd, _ in self.ep.poll(timeout):
                if fd == ctl_fd:
                    self._control()
                    continue
                conn = self.by_fd.get(fd)
                if conn is not None:
                    self._on_readable(conn, time.monotonic())
        t = os.times()
        self.ctl.send(
            {
                "sent": self.sent,
                "ok": self.ok,
                "sent_window": self.sent_window,
                "ok_window": self.ok_window,
                "skipped": self.skipped,
                "statuses": dict(self.statuses),
                "ok_by_port": dict(self.ok_by_port),
                "errors": dict(self.errors),
                "latencies_ms": self.latencies,
                "series": self.series,
                "max_lag_s": self.max_lag,
                "cpu_s": t.user + t.system,
                "cpu_user_s": t.user,
                "cpu_sys_s": t.system,
            }
        )
        for c in self.conns:
            self._drop(c)


def publisher_main(cfg: PublisherConfig, ctl: Connection) -> None:
    """Process entry point for the publisher."""
    pin(cfg.cpu)
    raise_nofile()
    PublisherWorker(cfg, ctl).run()
