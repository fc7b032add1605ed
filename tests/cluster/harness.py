"""A ``livecomments cluster up`` process, and the clients the failure tests drive through
its edge: SSE viewers that resume with ``Last-Event-ID`` (jittered backoff, ``goaway``
honoured) and a poster that retries 503s after ``Retry-After``."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from domain.identity import TokenIssuer

SECRET = "cluster-test-secret-0123456789abcdef"


class ClusterProcess:
    """``livecomments cluster up`` against the session's Redis, with a key prefix of its own
    (``redis_url=None``: against a Redis it starts itself). ``args``: more flags."""

    def __init__(
        self,
        redis_url: str | None,
        prefix: str,
        *,
        rms: int,
        ingest: int,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="lc-cluster-"))
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "LIVECOMMENTS_JWT_SECRET": SECRET,
            "LIVECOMMENTS_REDIS_PREFIX": prefix,
            "LIVECOMMENTS_LOG_LEVEL": "info",
            **(env or {}),
        }
        self.cmd = [
            sys.executable, "-m", "livecomments", "cluster", "up", "--rms", str(rms), "--ingest", str(ingest),
            "--edge-port", "0", "--run-dir", str(self.run_dir),
            *(["--redis-url", redis_url] if redis_url else []), *(args or []),
        ]
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.info: dict[str, Any] = {}
        self.edge = ""
        self.issuer = TokenIssuer(SECRET)

    def start(self, timeout: float = 90.0) -> ClusterProcess:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line)
                m = re.match(r"edge: (\S+)", line)
                if m:
                    self.edge = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not self.edge:
            self.stop()
            raise RuntimeError("cluster did not start:\n" + "".join(self.output[-60:]) + self.logs())
        self.info = json.loads((self.run_dir / "cluster.json").read_text())
        return self

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        # Anything left behind (it should not be): by pid, from cluster.json as cluster up
        # left it (a restarted process has a new pid there).
        self.refresh()
        for node in self.info.get("nodes", []):
            _kill_quietly(node["pid"])
        for part in ("nginx", "redis"):
            pid = (self.info.get(part) or {}).get("pid")
            if pid and (part == "nginx" or self.info[part].get("started_here")):
                _kill_quietly(pid)
        if not any(a.startswith("--redis-url") for a in self.cmd):  # servers it started itself
            for server in (self.info.get("redis") or {}).get("nodes", []):
                _kill_quietly(server["pid"])
        return code

    def cleanup(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- looking around ------------------------------------------------------------------------------

    def refresh(self) -> dict[str, Any]:
        """Re-read ``cluster.json`` (``cluster up`` rewrites it when it restarts a process)."""
        try:
            self.info = json.loads((self.run_dir / "cluster.json").read_text())
        except (OSError, ValueError):
            pass
        return self.info

    async def status(self) -> dict[str, Any]:
        """``livecomments cluster status --json`` of this cluster."""
        done = await trio.run_process(
            [sys.executable, "-m", "livecomments", "cluster", "status", "--json", "--run-dir", str(self.run_dir)],
            capture_stdout=True, capture_stderr=True, check=False, env=self.env,
        )
        assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.info["nodes"] if n["name"] == name)

    def nodes(self, role: str) -> list[dict[str, Any]]:
        return [n for n in self.info["nodes"] if n["role"] == role]

    def node_at(self, upstream: str) -> dict[str, Any]:
        """The node behind an ``X-Edge-Upstream`` value (``127.0.0.1:port``; the last one
        when nginx tried several)."""
        port = int(upstream.split(",")[-1].strip().rsplit(":", 1)[1])
        return next(n for n in self.info["nodes"] if n["port"] == port)

    def access_log(self) -> list[str]:
        return Path(self.info["nginx"]["access_log"]).read_text().splitlines()

    def logs(self) -> str:
        out = []
        for log in sorted((self.run_dir / "logs").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-25:]
            out.append(f"\n--- {log.name}\n" + "\n".join(lines))
        return "".join(out)

    def token(self, user: str, **kw: Any) -> str:
        return self.issuer.issue(user, kw.get("name", user), kw.get("roles", ("viewer",)), kw.get("streams", ()))

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(user)}


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- viewers ---------------------------------------------------------------------------------------


@attrs.define
class Connection:
    upstream: str = ""
    events: list[str] = attrs.field(factory=list)  # event types in arrival order
    ended_by: str = ""  # "goaway" (we closed it after one) | "error" | "eof" | "stop"


@attrs.define
class Viewer:
    """An SSE client like the page's: it keeps the last event id, and reconnects with it
    (``Last-Event-ID``) after errors with jittered exponential backoff, or after ``goaway``
    within the server's ``reconnect_ms`` window."""

    base: str
    video: str
    name: str = "viewer"
    ids: list[int] = attrs.field(factory=list)
    connections: list[Connection] = attrs.field(factory=list)
    gaps: int = 0
    resets: int = 0
    removed: set[int] = attrs.field(factory=set)
    goaway_delay_scale: float = 1.0

    @property
    def last_id(self) -> int | None:
        return self.ids[-1] if self.ids else None

    @property
    def upstream(self) -> str:
        return self.connections[-1].upstream if self.connections else ""

    async def run(self, client: httpx.AsyncClient, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        failures = 0
        while True:
            conn = Connection()
            self.connections.append(conn)
            headers = {"Accept": "text/event-stream"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = str(self.last_id)
            delay = 0.0
            try:
                async with client.stream("GET", f"{self.base}/v1/videos/{self.video}/events", headers=headers) as r:
                    conn.upstream = r.headers.get("x-edge-upstream", "")
                    if r.status_code != 200:
                        raise httpx.HTTPError(f"status {r.status_code}")
                    if not started:
                        started = True
                        task_status.started()
                    failures = 0
                    delay = await self._read(r, conn)
                    conn.ended_by = conn.ended_by or "eof"
            except (httpx.HTTPError, OSError) as e:
                conn.ended_by = conn.ended_by or f"error: {type(e).__name__}"
            if not delay:
                failures += 1
                delay = min(0.05 * 2**failures, 1.0) * (0.5 + random.random())
            await trio.sleep(delay)

    async def _read(self, r: httpx.Response, conn: Connection) -> float:
        event, data, eid = "message", "", None
        async for line in r.aiter_lines():
            if line == "":
                if data or event != "message":
                    conn.events.append(event)
                    if event == "comment" and eid is not None:
                        self.ids.append(int(eid))
                    elif event == "remove":
                        self.removed.add(int(json.loads(data)["id"]))
                    elif event == "gap":
                        self.gaps += 1
                    elif event == "reset":
                        self.resets += 1
                    elif event == "goaway":
                        conn.ended_by = "goaway"
                        lo, hi = json.loads(data).get("reconnect_ms", [500, 3000])
                        return random.uniform(lo, hi) / 1000 * self.goaway_delay_scale
                event, data, eid = "message", "", None
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data = value if not data else data + "\n" + value
                elif field == "id":
                    eid = value
        return 0.0


# -- posting -----------------------------------------------------------------------------------------


@attrs.define
class Poster:
    """Posts at about ``rate`` per second as ``users`` different users until stopped;
    keeps what was accepted (201) and counts every status."""

    cluster: ClusterProcess
    video: str
    users: int = 20
    rate: float = 30.0
    accepted: list[int] = attrs.field(factory=list)
    statuses: Counter[int] = attrs.field(factory=Counter)
    retry_after: list[str] = attrs.field(factory=list)
    running: bool = True

    async def run(self, client: httpx.AsyncClient) -> None:
        # Users and texts of this video's own: automod removes one user's same text
        # posted in several videos (cross_video_flood).
        headers = [self.cluster.auth(f"{self.video}-poster{u}") for u in range(self.users)]
        n = attempt = 0
        next_at = trio.current_time()
        while self.running:
            # Each attempt's text is its own: a 503 may still have stored the comment (a
            # write Redis did not replicate in time), and automod removes the third copy of
            # one user's text in a video, which would look like a lost comment here.
            attempt += 1
            body = {"text": f"{self.video} comment {n} (attempt {attempt})", "client_id": f"c{n}"}
            try:
                r = await client.post(
                    f"{self.cluster.edge}/v1/videos/{self.video}/comments", json=body, headers=headers[n % self.users]
                )
            except httpx.HTTPError:
                self.statuses[0] += 1
                await trio.sleep(0.1)
                continue
            self.statuses[r.status_code] += 1
            if r.status_code == 201:
                self.accepted.append(int(r.json()["id"]))
                n += 1
            elif r.status_code in (429, 503):
                self.retry_after.append(r.headers.get("retry-after", ""))
                await trio.sleep(0.2)  # a real client waits Retry-After; the test keeps it short
                continue
            next_at = max(next_at + 1 / self.rate, trio.current_time() - 1)
            await trio.sleep_until(next_at)


async def wait_for(check: Any, limit_s: float, what: str) -> None:
    """Poll ``check()`` every 50 ms until it is truthy; fail after ``limit_s`` s."""
    with trio.move_on_after(limit_s):
        while True:
            value = check()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {limit_s} s waiting for {what}")


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0), limits=httpx.Limits(max_connections=100))


async def watch(
    nursery: trio.Nursery, http: httpx.AsyncClient, cluster: ClusterProcess, video: str, n: int = 6
) -> list[Viewer]:
    """``n`` viewers of ``video`` through the edge, all on the node that hosts it."""
    await edge_settled(http, cluster, video)
    viewers = [Viewer(cluster.edge, video, f"viewer{i}") for i in range(n)]
    for v in viewers:
        await nursery.start(v.run, http)
    assert len({cluster.node_at(v.upstream)["name"] for v in viewers}) == 1, [(v.upstream, v.connections) for v in viewers]
    return viewers


async def edge_settled(http: httpx.AsyncClient, cluster: ClusterProcess, video: str, limit_s: float = 20.0) -> None:
    """Until the edge sends ``video`` to one rms node, request after request. A node that
    cluster up just restarted (an earlier test killed it) is passed over by nginx for its
    ``fail_timeout`` (3 s): meanwhile the consistent hash sends the video elsewhere, and
    viewers opened across that moment would land on two nodes."""
    with trio.move_on_after(limit_s):
        while True:
            seen = set()
            for _ in range(5):
                r = await http.get(f"{cluster.edge}/v1/videos/{video}/stats")
                seen.add(r.headers.get("x-edge-upstream", ""))
            if len(seen) == 1 and "" not in seen:
                return
            await trio.sleep(0.25)


def has_all(viewers: list[Viewer], accepted: list[int]) -> bool:
    want = set(accepted)
    return all(want - v.removed <= set(v.ids) for v in viewers)


def check_complete_in_order(viewers: list[Viewer], poster: Poster) -> None:
    """Every viewer has every accepted comment, none twice, in id order (and nothing else,
    unless a post's answer was lost in transit: that comment may exist unacknowledged; a
    502 or 504 from the edge is such a loss, as when an ingest node dies mid-request)."""
    want = sorted(poster.accepted)
    answers_lost = poster.statuses[0] + poster.statuses[502] + poster.statuses[504]
    for v in viewers:
        assert not v.removed, f"{v.name}: comments were removed (automod?): {sorted(v.removed)[:5]}"
        assert v.ids == sorted(set(v.ids)), f"{v.name}: out of order or repeated: {_first_disorder(v.ids)}"
        missing = set(want) - set(v.ids)
        assert not missing, f"{v.name}: missing {len(missing)} of {len(want)} comments"
        if not answers_lost:
            assert v.ids == want, f"{v.name}: has comments nobody posted"


def _first_disorder(ids: list[int]) -> str:
    for i in range(1, len(ids)):
        if ids[i] <= ids[i - 1]:
            return f"#{i}: {ids[i]} after {ids[i - 1]}"
    return "none"


def now() -> float:
    return time.monotonic()
