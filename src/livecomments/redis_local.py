"""Redis topologies on this machine, as child processes: one server, a Redis Cluster
(masters with replicas) or a Sentinel-managed primary with a replica.

``livecomments cluster up --redis-cluster N`` / ``--redis-sentinel`` and the test suite's
session fixtures start them from here. Every server listens on 127.0.0.1 on a free port
and keeps its files (append-only file, ``nodes.conf``, sentinel configs, log) in a
directory of its own, so a killed server restarted on the same port comes back as what
the topology made it: a Redis Cluster node rejoins with its ``nodes.conf`` (a replica of
the master that replaced it), an old Sentinel primary is turned into a replica by the
sentinels.

The inspection helpers talk RESP over a plain socket (``command``), so they work while
a server is half up and need no client library; ``redis-cli`` is only used to create a
cluster (``redis-cli --cluster create``).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from adapters.redis.keys import cluster_slot

DEFAULT_SERVICE = "livecomments"
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout / sentinel down-after-milliseconds


class RedisCommandError(Exception):
    """An error reply (``-ERR ...``) to ``command``."""


def free_port(*, bus: bool = False) -> int:
    """A free TCP port on 127.0.0.1; ``bus``: port + 10000 is free too (a cluster node's bus)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def die_with_parent() -> None:
    """In the child: get SIGTERM when the thread that started it ends (Linux), so that a
    killed parent leaves no servers behind. Start servers from the main thread: the
    signal follows the starting thread, not the process."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# -- a tiny RESP client (inspection only) ---------------------------------------------------


def _read_reply(f: Any) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisCommandError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read_reply(f) for _ in range(n)]
    raise ConnectionError(f"unexpected reply {line[:40]!r}")


def command(port: int, *args: str | int, timeout: float = 2.0) -> Any:
    """Send one command to 127.0.0.1:port and return its reply (RESP2 types)."""
    payload = b"*%d\r\n" % len(args)
    for a in args:
        b = str(a).encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        with s.makefile("rb") as f:
            return _read_reply(f)


def info(port: int, section: str) -> dict[str, str]:
    text = command(port, "INFO", section)
    out = {}
    for line in str(text).splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k] = v.strip()
    return out


def ping(port: int) -> bool:
    try:
        return bool(command(port, "PING", timeout=0.5) == "PONG")
    except (OSError, RedisCommandError):
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, *, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, RedisCommandError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- one server -------------------------------------------------------------------------------


class RedisProcess:
    """A ``redis-server`` child (or, with ``sentinel``, ``redis-server <conf> --sentinel``)."""

    def __init__(
        self,
        name: str,
        directory: Path,
        port: int,
        args: Iterable[str] = (),
        *,
        sentinel_conf: str | None = None,
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.exe = exe
        self.name = name
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.args = list(args)
        self.sentinel_conf = sentinel_conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cmdline(self) -> list[str]:
        common = ["--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "no", "--dir", str(self.dir)]
        if self.sentinel_conf is not None:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():  # a restart keeps what the sentinel learnt (it rewrites the file)
                conf.write_text(self.sentinel_conf)
            return [self.exe, str(conf), "--sentinel", *common]
        return [self.exe, *common, "--save", "", *self.args]

    def start(self, timeout: float = 15.0) -> None:
        if self.alive:
            return
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmdline(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal it and reap it (SIGKILL by default: a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the server answers nothing (its kernel still buffers what it is sent)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def describe(self, role: str) -> dict[str, Any]:
        return {"name": self.name, "role": role, "port": self.port, "pid": self.pid, "log": str(self.log)}


def _server_args(appendfsync: str) -> list[str]:
    return ["--appendonly", "yes", "--appendfsync", appendfsync]


def role_of(port: int) -> str:
    """``master`` | ``replica`` | ``down``."""
    try:
        role = info(port, "replication").get("role", "?")
    except (OSError, RedisCommandError):
        return "down"
    return "replica" if role == "slave" else role


def replica_ports(master_port: int) -> list[int]:
    """The replicas connected to a master (its INFO replication)."""
    out = []
    for k, v in info(master_port, "replication").items():
        if k.startswith("slave") and k[5:].isdigit():
            fields = dict(part.split("=", 1) for part in v.split(",") if "=" in part)
            out.append(int(fields["port"]))
    return out


# -- Redis Cluster --------------------------------------------------------------------------------


class LocalRedisCluster:
    """``masters`` cluster nodes with ``replicas`` replicas each, created with
    ``redis-cli --cluster create``. A master that dies is replaced by its replica after
    ``node_timeout_ms`` (plus the election, a second or two here)."""

    def __init__(
        self,
        directory: Path,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        appendfsync: str = "everysec",
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.dir = directory
        self.masters = masters
        self.replicas = replicas
        args = [
            *_server_args(appendfsync),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # A replica that was connected when its master died may always take over.
            "--cluster-replica-validity-factor", "0",
        ]
        self.nodes = []
        for _ in range(masters * (1 + replicas)):
            port = free_port(bus=True)
            self.nodes.append(RedisProcess(f"redis-{port}", directory / f"node-{port}", port, args))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 60.0) -> None:
        for n in self.nodes:
            n.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install -y redis-tools)")
        proc = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        self.wait_healthy(timeout)

    def healthy(self) -> bool:
        """Every node is up and sees the cluster ok, and every master has its replicas
        connected and in sync."""
        masters = 0
        for n in self.nodes:
            if not n.alive or info(n.port, "cluster").get("cluster_enabled") != "1":
                return False
            if "cluster_state:ok" not in str(command(n.port, "CLUSTER", "INFO")):
                return False
            repl = info(n.port, "replication")
            if repl.get("role") == "master":
                masters += 1
                links = [v for k, v in repl.items() if k.startswith("slave") and k[5:].isdigit()]
                if int(repl.get("connected_slaves", "0")) < self.replicas or not all("state=online" in v for v in links):
                    return False
            elif repl.get("master_link_status") != "up":
                return False
        return masters == self.masters

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_until(self.healthy, timeout, "the Redis Cluster to be ok with every replica in sync", every=0.1)

    def _any_alive(self) -> RedisProcess:
        for n in self.nodes:
            if n.alive and ping(n.port):
                return n
        raise RuntimeError("no Redis Cluster node is up")

    def master_of_slot(self, slot: int) -> RedisProcess:
        """The node serving ``slot`` as master, as a live node sees it now."""
        for lo, hi, master, *_ in command(self._any_alive().port, "CLUSTER", "SLOTS"):
            if int(lo) <= slot <= int(hi):
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise RuntimeError(f"slot {slot} is not served")

    def master_of_key(self, key: str) -> RedisProcess:
        return self.master_of_slot(cluster_slot(key))

    def wait_promoted(self, dead: RedisProcess, slot: int, timeout: float = 30.0) -> RedisProcess:
        """Wait until a live node serves ``slot`` as master (``dead`` was its master)."""
        found: list[RedisProcess] = []

        def promoted() -> bool:
            node = self.master_of_slot(slot)
            if node is dead or not node.alive:
                return False
            found.append(node)
            return "cluster_state:ok" in str(command(node.port, "CLUSTER", "INFO"))

        wait_until(promoted, timeout, f"a replica of {dead.name} to be promoted", every=0.1)
        return found[-1]

    def start_again(self, node: RedisProcess) -> None:
        """Start a killed node again: from its ``nodes.conf`` it rejoins, as a replica of
        the master that replaced it (``wait_healthy`` waits for that)."""
        node.start()

    def restart(self, node: RedisProcess, timeout: float = 60.0) -> None:
        self.start_again(node)
        self.wait_healthy(timeout)

    def roles(self) -> dict[int, str]:
        return {n.port: role_of(n.port) if n.alive else "down" for n in self.nodes}

    def replicas_of(self, master: RedisProcess) -> list[RedisProcess]:
        ports = replica_ports(master.port)
        return [n for n in self.nodes if n.port in ports]

    def describe(self) -> dict[str, Any]:
        roles = self.roles()
        return {"topology": "cluster", "url": self.url, "nodes": [n.describe(roles[n.port]) for n in self.nodes]}

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def processes(self) -> list[RedisProcess]:
        return list(self.nodes)


# -- Sentinel --------------------------------------------------------------------------------------


class LocalSentinel:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority)
    monitoring service ``service``. A primary that dies is replaced after
    ``down_after_ms`` plus the sentinels' election."""

    def __init__(
        self,
        directory: Path,
        *,
        service: str = DEFAULT_SERVICE,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = NODE_TIMEOUT_MS,
        appendfsync: str = "everysec",
    ) -> None:
        self.dir = directory
        self.service = service
        self.replica_count = replicas
        args = _server_args(appendfsync)
        mport = free_port()
        self.servers = [RedisProcess(f"redis-{mport}", directory / f"server-{mport}", mport, args)]
        for _ in range(replicas):
            port = free_port()
            self.servers.append(
                RedisProcess(
                    f"redis-{port}", directory / f"server-{port}", port,
                    [*args, "--replicaof", "127.0.0.1", str(mport)],
                )
            )
        quorum = sentinels // 2 + 1
        conf = (
            f"sentinel monitor {service} 127.0.0.1 {mport} {quorum}\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} {max(3 * down_after_ms, 3000)}\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.sentinels = []
        for _ in range(sentinels):
            port = free_port()
            self.sentinels.append(
                RedisProcess(f"sentinel-{port}", directory / f"sentinel-{port}", port, sentinel_conf=conf)
            )

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + "/" + self.service

    def start(self, timeout: float = 60.0) -> None:
        for s in self.servers:
            s.start()
        for s in self.sentinels:
            s.start()
        self.wait_healthy(timeout)

    def primary(self) -> RedisProcess:
        """The primary as the sentinels name it (a majority of those that answer agree)."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            if not s.alive:
                continue
            try:
                addr = command(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            except (OSError, RedisCommandError):
                continue
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        if not votes:
            raise RuntimeError("no sentinel names a primary")
        port = max(votes, key=lambda p: votes[p])
        return next(s for s in self.servers if s.port == port)

    def healthy(self) -> bool:
        """Every sentinel names the same live primary, knows the replicas and the other
        sentinels, and every replica is connected to the primary and in sync."""
        primary = self.primary()
        if not primary.alive or info(primary.port, "replication").get("role") != "master":
            return False
        for s in self.sentinels:
            addr = command(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
            if not addr or int(addr[1]) != primary.port:
                return False
            state = _pairs(command(s.port, "SENTINEL", "MASTER", self.service))
            if int(state.get("num-slaves", 0)) < self.replica_count or int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
            if "s_down" in state.get("flags", "") or "o_down" in state.get("flags", ""):
                return False
        repl = info(primary.port, "replication")
        links = [v for k, v in repl.items() if k.startswith("slave") and k[5:].isdigit()]
        online = [v for v in links if "state=online" in v]
        return len(online) >= self.replica_count and all(
            info(s.port, "replication").get("master_link_status") == "up" for s in self.servers if s is not primary and s.alive
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        wait_until(self.healthy, timeout, "the sentinels to agree on a primary with every replica in sync", every=0.1)

    def wait_promoted(self, dead: RedisProcess, timeout: float = 30.0) -> RedisProcess:
        found: list[RedisProcess] = []

        def promoted() -> bool:
            p = self.primary()
            if p is dead or not p.alive or info(p.port, "replication").get("role") != "master":
                return False
            found.append(p)
            return True

        wait_until(promoted, timeout, f"the sentinels to promote a replica of {dead.name}", every=0.1)
        return found[-1]

    def replicas_of(self, master: RedisProcess) -> list[RedisProcess]:
        ports = replica_ports(master.port)
        return [n for n in self.servers if n.port in ports]

    def start_again(self, node: RedisProcess) -> None:
        """Start a killed server again, as a replica of the current primary. (Started as
        it was, an old primary would come back as a primary with its stale data until
        the sentinels notice and turn it into a replica: they look every 10 s.)"""
        if node.alive:
            return
        args = list(node.args)
        if "--replicaof" in args:
            i = args.index("--replicaof")
            del args[i : i + 3]
        primary = self.primary()
        if primary is not node:
            args += ["--replicaof", "127.0.0.1", str(primary.port)]
        node.args = args
        node.start()

    def restart(self, node: RedisProcess, timeout: float = 60.0) -> None:
        """``start_again``, then wait until every replica is in sync."""
        self.start_again(node)
        self.wait_healthy(timeout)

    def describe(self) -> dict[str, Any]:
        try:
            primary_port = self.primary().port
        except RuntimeError:
            primary_port = 0
        return {
            "topology": "sentinel",
            "url": self.url,
            "service": self.service,
            "nodes": [
                *(s.describe("primary" if s.port == primary_port else "replica") for s in self.servers),
                *(s.describe("sentinel") for s in self.sentinels),
            ],
        }

    def stop(self) -> None:
        for s in [*self.sentinels, *self.servers]:
            s.stop()

    def processes(self) -> list[RedisProcess]:
        return [*self.servers, *self.sentinels]


def _pairs(flat: Any) -> dict[str, str]:
    items = list(flat or [])
    return {str(items[i]): str(items[i + 1]) for i in range(0, len(items) - 1, 2)}
