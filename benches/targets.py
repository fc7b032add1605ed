"""The two systems under test: a livecomments server and Nchan in nginx.

Both are started by the harness as child processes pinned to the server CPU, on a free
port on 127.0.0.1, with a fresh video id / channel per run, and stopped afterwards. The
harness measures the processes named by :meth:`Target.server_pids` (the livecomments
process tree; the nginx worker, not its idle master).
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benches.procstat import children, descendants, pin, raise_nofile

NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"
NCHAN_CONF = Path(__file__).with_name("nchan.conf")
HOST = "127.0.0.1"

# Filler for comment texts: ASCII only, no JSON escapes, no '%' (bodies are %-templates).
_FILLER = (
    "great stream today, that last play was unreal and chat is going wild about it "
    "lol gg wp no way he pulled that off, clip it clip it, first time here and loving it "
)


class TargetUnavailable(RuntimeError):
    """The target cannot run on this machine (missing binary or module, failed start)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One blocking request, for set-up only (never on a measured path)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def comment_text(payload_bytes: int) -> str:
    """A comment text sized so that the comment object is about ``payload_bytes`` long.

    The size is worked out on the contract's comment shape with typical field lengths, so
    the livecomments frames and the Nchan messages (built on the same shape) match.
    """
    shape = {
        "id": "7" * 19,
        "video_id": "bench-" + "x" * 12,
        "author": {"id": "1" * 19, "name": "bench1", "verified": False},
        "text": "",
        "created_at": 1_764_000_000_000,
        "client_id": "c123456",
        "pending": False,
    }
    overhead = len(json.dumps(shape, separators=(",", ":"))) + len(SEQ_PREFIX % 0)
    n = max(8, payload_bytes - overhead)
    return (_FILLER * (n // len(_FILLER) + 1))[:n].rstrip() + "!"


# Every text starts with the post's number: identical texts would be (rightly) removed by
# livecomments' automod as repeats, and a real chat does not repeat itself either.
SEQ_PREFIX = "#%08d "
SEQ_TEMPLATE = b"#%(seq)08d "


@dataclass
class PublishSpec:
    """How the publisher posts to a target."""

    path: str
    headers_per_connection: list[list[str]]
    body_template: bytes


class Target(ABC):
    """A server under test."""

    name: str

    def __init__(self, workdir: Path, cpu: int | None) -> None:
        self.workdir = workdir
        self.cpu = cpu
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"
        self.stream = "bench-" + uuid.uuid4().hex[:12]

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def server_pids(self) -> list[int]: ...

    @abstractmethod
    def viewer_path(self, backlog: int) -> str: ...

    @abstractmethod
    def publish_spec(self, connections: int, text: str) -> PublishSpec: ...

    @abstractmethod
    def describe(self) -> dict[str, Any]: ...

    def roles(self) -> dict[str, list[int]]:
        """The measured processes by role (a cluster's ingest, rms, ...); {} for one server."""
        return {}

    def publish_ports(self) -> list[int]:
        """Ports the publisher's connections go to, round-robin (one server: its port)."""
        return [self.port]

    def viewer_port(self) -> int:
        """The port the viewers connect to."""
        return self.port

    def problem(self) -> str | None:
        """Why the measured process is not the one that was measured from the start, if so."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"{self.name} exited with {self.proc.returncode} during the run"
        return None

    def preload(self, spec: PublishSpec, n: int) -> int:
        """Post ``n`` comments before the viewers come (the join-storm backlog)."""
        ok = 0
        hdrs = dict(h.split(": ", 1) for h in spec.headers_per_connection[0])
        hdrs["Content-Type"] = "application/json"
        for i in range(n):
            body = spec.body_template % {b"seq": 10_000_000 + i, b"ms": int(time.time() * 1000)}
            status, _ = http_request(self.port, "POST", spec.path, body, hdrs)
            ok += 200 <= status < 300
        return ok

    def _preexec(self) -> None:
        pin(self.cpu)
        raise_nofile()

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        """Poll ``/healthz`` until it answers 200 (a readiness probe, with a deadline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TargetUnavailable(
                    f"{self.name} exited with {self.proc.returncode} before answering; log tail:\n{self.log_tail()}"
                )
            try:
                status, _ = http_request(self.port, "GET", "/healthz", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TargetUnavailable(f"{self.name} did not answer /healthz within {timeout:.0f} s")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL if it lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


class LivecommentsTarget(Target):
    """``python -m livecomments serve`` with rate limits off, SQLite in a temp data dir."""

    name = "livecomments"

    def __init__(
        self,
        workdir: Path,
        cpu: int | None,
        server_cmd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, cpu)
        self.data_dir = workdir / "data"
        self.server_cmd = server_cmd
        self.extra_env = env or {}
        self.cmd: list[str] = []
        self.tokens: list[tuple[str, str]] = []

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.server_cmd:
            self.cmd = shlex.split(
                self.server_cmd.format(python=sys.executable, host=HOST, port=self.port, data_dir=self.data_dir)
            )
        else:
            self.cmd = [
                sys.executable, "-m", "livecomments", "serve",
                "--host", HOST, "--port", str(self.port), "--data-dir", str(self.data_dir),
            ]  # fmt: skip
        env = dict(os.environ)
        env.update(
            {
                "LIVECOMMENTS_RATE_LIMIT": "1000000/1s",
                "LIVECOMMENTS_GUEST_RATE_LIMIT": "1000000/1s",
                "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "1000000/1s",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        try:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    self.cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=self._preexec,
                    start_new_session=True,
                )
        except OSError as e:
            raise TargetUnavailable(f"cannot start {self.cmd[0]}: {e}") from e
        self._wait_healthy()

    def server_pids(self) -> list[int]:
        assert self.proc is not None
        return descendants(self.proc.pid)

    def viewer_path(self, backlog: int) -> str:
        return f"/v1/videos/{self.stream}/events?backlog={backlog}"

    def ws_path(self, backlog: int) -> str:
        """The WebSocket endpoint (``--transport ws``)."""
        return f"/v1/videos/{self.stream}/ws?backlog={backlog}"

    def sign_in(self, n: int) -> None:
        """Guest tokens for ``n`` publisher connections (one user each)."""
        self.tokens = []
        for i in range(n):
            status, body = http_request(
                self.port, "POST", "/v1/auth/guest",
                json.dumps({"name": f"bench{i + 1}"}).encode(),
                {"Content-Type": "application/json"},
            )  # fmt: skip
            if status != 200 and status != 201:
                raise TargetUnavailable(f"guest sign-in answered {status}: {body[:200]!r}")
            doc = json.loads(body)
            self.tokens.append((doc["token"], doc["user_id"]))

    def publish_spec(self, connections: int, text: str) -> PublishSpec:
        if len(self.tokens) < connections:
            self.sign_in(connections)
        body = json.dumps({"text": "TEXT", "client_id": "CLIENT"}, separators=(",", ":")).encode()
        template = body.replace(b"CLIENT", b"c%(seq)d").replace(b"TEXT", SEQ_TEMPLATE + text.encode())
        return PublishSpec(
            path=f"/v1/videos/{self.stream}/comments",
            headers_per_connection=[[f"Authorization: Bearer {tok}"] for tok, _ in self.tokens[:connections]],
            body_template=template,
        )

    def describe(self) -> dict[str, Any]:
        return {"command": self.cmd, "video_id": self.stream, "port": self.port}


class NchanTarget(Target):
    """nginx with the Nchan module, configured from ``benches/nchan.conf``."""

    name = "nchan"

    def __init__(
        self,
        workdir: Path,
        cpu: int | None,
        backlog: int,
        buffer_length: int = 1000,
        join_storm: bool = False,
        viewers: int = 20_000,
    ) -> None:
        super().__init__(workdir, cpu)
        self.viewers = viewers
        self.backlog = backlog
        # A new subscriber gets the whole buffer ("oldest"). Nchan can also start at the last
        # N messages, but only for N <= 32, and nchan 1.3.6 aborts (spool.c assertion) when
        # a subscriber with a negative start joins an empty channel. So for a join storm the
        # buffer is the backlog itself; otherwise a long buffer keeps Last-Event-ID resumes
        # working (viewers connect before the first post, so they get no backlog anyway).
        self.buffer_length = max(backlog, 1) if join_storm else max(buffer_length, backlog)
        self.first_message = "oldest"
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.conf_path = workdir / "nginx.conf"
        self.master_pid = 0
        self.worker_pid = 0
        self.cmd: list[str] = []

    def render_conf(self, nofile: int) -> str:
        text = NCHAN_CONF.read_text()
        values = {
            "tmp": str(self.workdir),
            "port": str(self.port),
            "nofile": str(nofile),
            # Nchan uses connection slots beyond the sockets (it logged "worker_connections
            # are not enough" at 19,800 subscribers with one slot per descriptor). Slots cost
            # idle RSS (~0.4 KB each), so they follow the number of viewers.
            "worker_connections": str(max(4096, min(2 * nofile, 2 * self.viewers + 1024))),
            "buffer_length": str(self.buffer_length),
            "first_message": self.first_message,
        }
        for key, value in values.items():
            text = text.replace("{{" + key + "}}", value)
        return text

    def start(self) -> None:
        if not os.path.exists(self.nginx):
            raise TargetUnavailable("nginx is not installed (apt-get install -y nginx libnginx-mod-nchan)")
        if not os.path.exists(NCHAN_MODULE):
            raise TargetUnavailable(f"{NCHAN_MODULE} missing (apt-get install -y libnginx-mod-nchan)")
        _, soft, _ = raise_nofile()
        self.conf_path.write_text(self.render_conf(soft))
        self.cmd = [
            self.nginx,
            "-e",
            str(self.workdir / "error.log"),
            "-p",
            str(self.workdir),
            "-c",
            str(self.conf_path),
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=self._preexec,
                start_new_session=True,
            )
        self._wait_healthy(30.0)
        self.master_pid = self.proc.pid
        workers = children(self.master_pid)
        if len(workers) != 1:
            raise TargetUnavailable(f"expected one nginx worker, found {workers}")
        self.worker_pid = workers[0]

    def log_tail(self, lines: int = 30) -> str:
        parts = [super().log_tail(lines)]
        err = self.workdir / "error.log"
        if err.exists():
            parts.append("\n".join(err.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(parts)

    def server_pids(self) -> list[int]:
        return [self.worker_pid]

    def problem(self) -> str | None:
        base = super().problem()
        if base:
            return base
        workers = children(self.master_pid)
        if workers != [self.worker_pid]:
            return f"the nginx worker {self.worker_pid} was replaced (crash?): workers now {workers}"
        return None

    def viewer_path(self, backlog: int) -> str:
        return f"/sub?id={self.stream}"

    def publish_spec(self, connections: int, text: str) -> PublishSpec:
        # Nchan adds no timestamp, so the message carries its send time; it mimics the
        # livecomments comment object so that both targets deliver frames of one size.
        message = {
            "id": "SEQ",
            "video_id": self.stream,
            "author": {"id": "1" * 19, "name": "bench1", "verified": False},
            "text": "TEXT",
            "created_at": 0,
            "client_id": "CLIENT",
            "pending": False,
        }
        raw = json.dumps(message, separators=(",", ":")).encode()
        raw = raw.replace(b'"SEQ"', b'"%(seq)019d"').replace(b'"created_at":0', b'"created_at":%(ms)d')
        raw = raw.replace(b"CLIENT", b"c%(seq)d").replace(b"TEXT", SEQ_TEMPLATE + text.encode())
        return PublishSpec(
            path=f"/pub?id={self.stream}",
            headers_per_connection=[[] for _ in range(connections)],
            body_template=raw,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "command": self.cmd,
            "channel": self.stream,
            "port": self.port,
            "worker_pid": self.worker_pid,
            "config": str(self.conf_path),
            "message_buffer_length": self.buffer_length,
            "subscriber_first_message": self.first_message,
        }
