"""Hostile WebSocket clients against a livecomments server: three floods, one at a time.

    python -m benches.hostile                       # starts its own server (temp data dir)
    python -m benches.hostile --url http://127.0.0.1:8000 --pid 1234 --jwt-secret S

Each flood runs on one connection while a probe asks ``GET /healthz`` every 100 ms;
the report gives the probe's worst and median latency during the flood, the server's
RSS growth (VmRSS from ``/proc/<pid>/status``) and its CPU seconds:

- ``fragments``: a text frame with FIN=0, then 40,000 empty continuation frames;
- ``resume``: ``{"type": "resume", "after": "1"}`` over and over on a video with 200
  comments, from a client that never reads (``--resume-count`` messages at most);
- ``ping``: pings with 125-byte payloads from a client that never reads
  (``--ping-mb`` MiB at most).

A flood stops early when the server stops reading it (a send blocked for
``--stall-s``) or closes it. The clients speak raw frames (masked, hand-built) and read
the server's with a client-side wsproto connection; the tests reuse them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Event, RejectConnection, Request

from benches.procstat import cpu_seconds, memory_kb

MASK = b"\x37\xfa\x21\x3d"
WAIT_S = 20.0  # a wait this long means the server hangs
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes = MASK) -> bytes:
    """One masked client frame, built by hand (so any fragmenting is possible)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def text(obj: Any) -> bytes:
    """One whole text message (a JSON value, or a str sent as is)."""
    return frame(OP_TEXT, (obj if isinstance(obj, str) else json.dumps(obj)).encode())


def fragmented(message: bytes, pieces: int) -> bytes:
    """``message`` as ``pieces`` frames: a text frame, then continuation frames (some may
    be empty when the message is shorter than ``pieces``)."""
    cuts = [len(message) * i // pieces for i in range(pieces + 1)]
    out = []
    for i in range(pieces):
        op = OP_TEXT if i == 0 else OP_CONT
        out.append(frame(op, message[cuts[i] : cuts[i + 1]], fin=i == pieces - 1))
    return b"".join(out)


class RawWs:
    """A WebSocket on a plain trio socket: the caller decides when (and whether) to read."""

    def __init__(self, sock: trio.socket.SocketType, ws: WSConnection) -> None:
        self.sock = sock
        self.ws = ws
        self.events: list[Event] = []
        self.closed: CloseConnection | None = None  # the server's close frame
        self.ended = False  # EOF or reset

    @classmethod
    async def connect(cls, port: int, path: str, *, rcvbuf: int | None = None) -> RawWs:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect: the window the client advertises is small from the start.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        ws = WSConnection(ConnectionType.CLIENT)
        self = cls(sock, ws)
        await self.send(ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
        with trio.fail_after(WAIT_S):
            while True:
                data = await sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed during the handshake")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        return self
                    if isinstance(event, RejectConnection):
                        raise ConnectionError(f"handshake refused: {event.status_code}")
                    self.events.append(event)

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = await self.sock.send(view)
            view = view[n:]

    async def read_some(self) -> bool:
        """Read what the socket has (waiting for some); False once the connection ended."""
        try:
            data = await self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.ended = True
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, CloseConnection):
                self.closed = event
            self.events.append(event)
        return True

    def messages(self) -> list[dict[str, Any]]:
        from wsproto.events import TextMessage

        out: list[dict[str, Any]] = []
        buf = ""
        for e in self.events:
            if isinstance(e, TextMessage):
                buf += e.data
                if e.message_finished:
                    out.append(json.loads(buf))
                    buf = ""
        return out

    async def read_until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            with trio.fail_after(WAIT_S):
                while not predicate():
                    if not await self.read_some():
                        if predicate():
                            return
                        raise AssertionError(f"the connection ended before {what}; last: {self.messages()[-3:]}")
        except trio.TooSlowError:
            raise AssertionError(f"timed out waiting for {what}; last: {self.messages()[-3:]}") from None

    async def read_to_end(self) -> None:
        """Read (and keep) everything until the server closes the connection."""
        with trio.fail_after(WAIT_S):
            while await self.read_some():
                pass

    def close(self) -> None:
        self.sock.close()


async def send_within(ws: RawWs, data: bytes, stall_s: float) -> bytes:
    """Send ``data`` unless the server stops taking it for ``stall_s``: -> what was not
    sent (maybe a frame's tail: send it before anything else on this connection)."""
    view = memoryview(data)
    with trio.move_on_after(stall_s):
        while view:
            n = await ws.sock.send(view)
            view = view[n:]
    return bytes(view)


async def flood(ws: RawWs, chunks: Callable[[], bytes | None], *, stall_s: float) -> tuple[int, str]:
    """Send ``chunks()`` until it returns None, the server stops reading (one chunk not
    taken within ``stall_s``) or the connection breaks. -> (bytes sent, why it stopped)."""
    sent = 0
    while True:
        data = chunks()
        if data is None:
            return sent, "all sent"
        try:
            rest = await send_within(ws, data, stall_s)
        except OSError as e:
            return sent, f"connection broke ({e.__class__.__name__})"
        sent += len(data) - len(rest)
        if rest:
            return sent, f"the server stopped reading (a send blocked {stall_s:g} s)"


class Server:
    """A ``livecomments serve`` of the bench's own, or one already running."""

    def __init__(self, url: str | None, pid: int | None, secret: str) -> None:
        self.secret = secret
        self.url = url or ""
        self.pid = pid or 0
        self.proc: subprocess.Popen[str] | None = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.output: list[str] = []

    def start(self) -> None:
        if self.url:
            return
        self.tmp = tempfile.TemporaryDirectory(prefix="lc-hostile-")
        env = {**os.environ, "LIVECOMMENTS_JWT_SECRET": self.secret, "LIVECOMMENTS_RATE_LIMIT": "100000/1s", "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "livecomments", "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", self.tmp.name]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                m = re.search(r"serving (http://[^\s/]+)/watch/", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(30):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.output[-30:]))
        self.pid = self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None

    def rss_mb(self) -> float:
        return memory_kb(self.pid)[0] / 1024

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def headers(self, user: str) -> dict[str, str]:
        from domain.identity import TokenIssuer

        token = TokenIssuer(self.secret).issue(user, user, ("viewer",), (), ttl_s=3600)
        return {"Authorization": "Bearer " + token}


async def seed(server: Server, video: str, n: int) -> None:
    """Post ``n`` comments of ~100 characters to ``video`` (a few users, a few at a time)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        counter = itertools.count()

        async def worker(w: int) -> None:
            headers = server.headers(f"seed{w}")
            while (i := next(counter)) < n:
                r = await client.post(f"/v1/videos/{video}/comments", json={"text": f"comment {i} " + "x" * 90}, headers=headers)
                r.raise_for_status()

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(worker, w)


async def probe(url: str, latencies: list[float], every_s: float = 0.1) -> None:
    """GET /healthz every ``every_s`` until cancelled; a request cut off by the end of the
    flood counts as the time it had waited."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while True:
            t0 = time.perf_counter()
            try:
                await client.get("/healthz")
            except httpx.HTTPError:
                pass
            finally:
                latencies.append(time.perf_counter() - t0)
            await trio.sleep(every_s)


async def settle(server: Server, limit_s: float = 60.0) -> None:
    """Wait until the server is done with what it was sent (it used < 10% of a CPU over
    the last half second), at most ``limit_s``."""
    with trio.move_on_after(limit_s):
        cpu = server.cpu_s()
        while True:
            await trio.sleep(0.5)
            now = server.cpu_s()
            if now - cpu < 0.05:
                return
            cpu = now


async def measured(server: Server, name: str, run: Callable[[], Awaitable[str]]) -> dict[str, Any]:
    rss0, cpu0 = server.rss_mb(), server.cpu_s()
    latencies: list[float] = []
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe, server.url, latencies)
        await trio.sleep(0.2)  # a baseline probe or two
        outcome = await run()
        nursery.cancel_scope.cancel()
    rss1, cpu1 = server.rss_mb(), server.cpu_s()
    return {
        "flood": name,
        "seconds": round(time.perf_counter() - t0, 2),
        "healthz_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "healthz_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
        "rss_growth_mb": round(rss1 - rss0, 1),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "outcome": outcome,
    }


async def fragments(server: Server, video: str, count: int, stall_s: float) -> str:
    ws = await RawWs.connect(server.port, f"/v1/videos/{video}/ws?backlog=0")
    try:
        empty = frame(OP_CONT, fin=False)
        parts = iter([frame(OP_TEXT, b"[", fin=False), *([empty * 1000] * (count // 1000)), frame(OP_CONT, b"]")])
        sent, why = await flood(ws, lambda: next(parts, None), stall_s=stall_s)
        with trio.move_on_after(30):
            while not ws.closed and await ws.read_some():
                if ws.messages():
                    break  # the old server answers the whole message (an error)
        end = f"close {ws.closed.code} {ws.closed.reason!r}" if ws.closed else ("answered" if ws.messages() else "no answer")
        return f"{sent} bytes sent ({why}); {end}"
    finally:
        ws.close()


async def resume(server: Server, video: str, count: int, stall_s: float) -> str:
    ws = await RawWs.connect(server.port, f"/v1/videos/{video}/ws?backlog=0", rcvbuf=4096)
    try:
        msg = text({"type": "resume", "after": "1"})
        batch = 100
        left = [count]

        def chunks() -> bytes | None:
            if left[0] <= 0:
                return None
            n = min(batch, left[0])
            left[0] -= n
            return msg * n

        sent, why = await flood(ws, chunks, stall_s=stall_s)
        await settle(server)  # the connection stays open (and unread) meanwhile
        return f"{sent // len(msg)} resumes sent ({why})"
    finally:
        ws.close()


async def ping(server: Server, video: str, mib: float, stall_s: float) -> str:
    ws = await RawWs.connect(server.port, f"/v1/videos/{video}/ws?backlog=0", rcvbuf=4096)
    try:
        one = frame(OP_PING, b"p" * 125)
        block = one * (1024 * 1024 // len(one))
        left = [int(mib * 1024 * 1024)]

        def chunks() -> bytes | None:
            if left[0] <= 0:
                return None
            left[0] -= len(block)
            return block

        sent, why = await flood(ws, chunks, stall_s=stall_s)
        await settle(server)  # the connection stays open (and unread) meanwhile
        return f"{sent / 2**20:.1f} MiB of pings sent ({why})"
    finally:
        ws.close()


async def run_flood(server: Server, name: str, args: argparse.Namespace) -> dict[str, Any]:
    video = f"h{name}{int(time.time() * 1000)}"
    if name == "fragments":
        return await measured(server, name, lambda: fragments(server, video, args.fragments, args.stall_s))
    if name == "resume":
        await seed(server, video, 200)
        return await measured(server, name, lambda: resume(server, video, args.resume_count, args.stall_s))
    if name == "ping":
        return await measured(server, name, lambda: ping(server, video, args.ping_mb, args.stall_s))
    raise ValueError(f"no such flood: {name}")


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each flood on a fresh server of its own (memory freed after one flood would hide
    the next one's growth), or all on the server at --url."""
    results = []
    for name in args.floods:
        server = Server(args.url, args.pid, args.jwt_secret)
        server.start()
        try:
            results.append(await run_flood(server, name, args))
        finally:
            server.stop()
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benches.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="a running server (default: start one)")
    p.add_argument("--pid", type=int, help="its process id (for RSS and CPU), with --url")
    p.add_argument("--jwt-secret", default="hostile-bench-secret", help="its signing key (to seed comments)")
    p.add_argument("--floods", default="fragments,resume,ping", help="which floods, comma-separated, in order")
    p.add_argument("--fragments", type=int, default=40_000, help="empty continuation frames")
    p.add_argument("--resume-count", type=int, default=5_000, help="resume messages at most")
    p.add_argument("--ping-mb", type=float, default=64.0, help="MiB of pings at most")
    p.add_argument("--stall-s", type=float, default=2.0, help="a send blocked this long: the server stopped reading")
    args = p.parse_args(argv)
    if args.url and not args.pid:
        p.error("--url needs --pid (RSS and CPU are read from /proc/<pid>)")
    args.floods = [f.strip() for f in args.floods.split(",") if f.strip()]
    results = trio.run(main_async, args)
    cols = ["flood", "seconds", "healthz_max_ms", "healthz_p50_ms", "rss_growth_mb", "server_cpu_s", "outcome"]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r[c]) for c in cols))


if __name__ == "__main__":
    main()
