"""A real ``livecomments serve`` process on an ephemeral port, for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable

from domain.identity import TokenIssuer, signing_key

URL_RE = re.compile(r"serving (http://[^\s/]+)/watch/")


class ServerProcess:
    """Start, stop and restart one server; the port and data dir survive restarts."""

    def __init__(self, env: dict[str, str] | None = None, data_dir: str | None = None) -> None:
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("LIVECOMMENTS_JWT_SECRET", "test-secret-for-the-livecomments-suite")
        self.env["PYTHONUNBUFFERED"] = "1"
        self._tmp = tempfile.TemporaryDirectory(prefix="lc-test-") if data_dir is None else None
        self.data_dir = data_dir or self._tmp.name  # type: ignore[union-attr]
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._issuer = TokenIssuer(signing_key(self.env["LIVECOMMENTS_JWT_SECRET"], self.data_dir))

    def start(self, timeout: float = 20.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "livecomments", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", self.data_dir]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        found = threading.Event()

        def pump(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line)
                m = URL_RE.search(line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    self.port = int(self.url.rsplit(":", 1)[1])
                    found.set()

        threading.Thread(target=pump, args=(self.proc,), daemon=True).start()
        if not found.wait(timeout):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output[-40:]))
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.stop(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._tmp is not None:
            self._tmp.cleanup()

    def token(
        self,
        user: str,
        name: str | None = None,
        roles: Iterable[str] = ("viewer",),
        streams: Iterable[str] = (),
        ttl_s: int = 3600,
    ) -> str:
        return self._issuer.issue(user, name or user, tuple(roles), tuple(streams), ttl_s=ttl_s)

    def headers(self, user: str, **kw: object) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.token(user, **kw)}  # type: ignore[arg-type]
