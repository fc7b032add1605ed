"""Fixtures of the cluster suite: ONE real redis-server per session (a child process on
a free port, restartable on the same port), clusters started with ``livecomments cluster
up`` against it, and a key prefix per test so that tests sharing the Redis never meet.

Two more Redis topologies, each started once per session and only when a test asks
for it: ``redis_cluster`` (3 masters, 3 replicas, ``redis-server --cluster-enabled``)
and ``redis_sentinel`` (a primary, a replica, 3 sentinels). Tests that kill one of their
servers restart it and wait until the topology is whole again before they end.

redis-server and nginx must be installed (``make test`` installs them through
``scripts/setup.sh --system``).
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.redis.client import open_redis
from adapters.redis.keys import Keys
from livecomments.redis_local import LocalRedisCluster, LocalSentinel

_ids = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return b"PONG" in s.recv(64)
    except OSError:
        return False


class RedisServer:
    """redis-server on 127.0.0.1:<port>, with its append-only file in a temp dir (so a
    restart keeps the data, as a production Redis with AOF would)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: run scripts/setup.sh --system (apt-get install -y redis-server)")
        self.exe = exe
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="lc-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        cmd = [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no",
            "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
        ]
        log = open(os.path.join(self.dir, "redis.log"), "ab")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start: " + Path(self.dir, "redis.log").read_text()[-2000:])
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own."""
    return f"t{next(_ids)}{secrets.token_hex(3)}"


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    async with open_redis(redis_server.url) as client:
        yield client


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A Redis Cluster of 3 masters with one replica each (node timeout 1 s)."""
    directory = Path(tempfile.mkdtemp(prefix="lc-rcluster-"))
    cluster = LocalRedisCluster(directory, masters=3, replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[LocalSentinel]:
    """A primary, one replica and three sentinels (down after 1 s)."""
    directory = Path(tempfile.mkdtemp(prefix="lc-rsentinel-"))
    sentinel = LocalSentinel(directory, replicas=1, sentinels=3)
    try:
        sentinel.start()
        yield sentinel
    finally:
        sentinel.stop()
        shutil.rmtree(directory, ignore_errors=True)
