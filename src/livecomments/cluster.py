"""``livecomments cluster up``: a whole cluster on this machine, in the foreground.

It starts Redis (unless ``--redis-url`` names one; ``--redis-cluster N``: a Redis Cluster
of N masters with ``--redis-replicas`` replicas each; ``--redis-sentinel``: a primary, a
replica and three sentinels; see ``livecomments.redis_local``), ``--ingest`` ingest nodes and
``--rms`` rms nodes (child processes whose command lines name their role), the persist
worker, and nginx with ``deploy/nginx/edge.conf``; waits until each answers; prints what
runs where and then ``edge: http://127.0.0.1:P``. SIGINT or SIGTERM stops everything in
order: the edge, the rms nodes (which send ``goaway`` and drain), ingest, persist, Redis.
Everything (configs, logs, the SQLite cold store, Redis' append-only file) lives in the
run directory, also described in ``cluster.json`` there (``livecomments cluster status``
reads it).

Supervision: a process that exits while the cluster runs (a node, the Redis started
here, nginx) is restarted with the same command line: the same port (the edge's upstream
list stays valid), node id, worker id and data. The delay comes from
``policy.restart.RestartPolicy``: ``--restart-backoff-s`` at first, doubling for each
death soon after a restart, capped at ``--restart-backoff-max-s``, never giving up. Each
death is one log line (name, pid, exit code or signal, uptime, restart count, delay);
``cluster.json`` gets the new pid and the counts. Once SIGINT or SIGTERM arrived nothing
is restarted.

Children get ``LIVECOMMENTS_*`` settings from this process' environment (so
``LIVECOMMENTS_RATE_LIMIT=... livecomments cluster up`` applies to every node), plus
their own port, node id and Snowflake worker id (1, 2, ... for ingest nodes: ids from
different workers never collide).

``--regions N`` (``livecomments.regions_local``): N such clusters, one per region, each
with its own Redis, plus a ``forward`` process per region and delaying proxies between
them (docs/operations.md, Regions). A ``Cluster`` is then one region: its own run
directory, worker ids from ``worker_base`` + 1, edge port and extra environment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import trio

from livecomments.redis_local import LocalRedisCluster, LocalSentinel, RedisProcess
from policy.backoff import Backoff
from policy.restart import RestartPolicy

READY_TIMEOUT_S = 60.0
CLUSTER_SHARDS = "16"  # LIVECOMMENTS_REDIS_SHARDS for a Redis Cluster started here (unless set)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the cluster process dies (Linux), so that a killed
    ``cluster up`` leaves no orphans."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def edge_template() -> str:
    """deploy/nginx/edge.conf from the source tree (next to ``src/``)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "deploy" / "nginx" / "edge.conf"
        if candidate.is_file():
            return candidate.read_text()
    packaged = resources.files("livecomments") / "edge.conf"
    if packaged.is_file():
        return packaged.read_text()
    raise FileNotFoundError("deploy/nginx/edge.conf not found next to the package")


def make_edge_dirs(ndir: Path) -> Path:
    """The directories edge.conf writes to (temp files, the snapshot cache) under ``ndir``."""
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "cache"):
        (ndir / sub).mkdir(parents=True, exist_ok=True)
    return ndir


def render_edge(
    template: str,
    *,
    run_dir: str,
    listen: str,
    rms: list[str],
    ingest: list[str],
    tls: tuple[str, str] | None = None,
    workers: int = 1,
) -> str:
    """Fill in the template's fields (``rms``/``ingest``: host:port of each node)."""
    server = "        server {} max_fails=1 fail_timeout=3s;"
    tls_lines = ""
    if tls is not None:
        tls_lines = (
            f"        ssl_certificate {tls[0]};\n"
            f"        ssl_certificate_key {tls[1]};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;"
        )
    text = template
    for field, value in {
        "{{RUN_DIR}}": run_dir,
        "{{LISTEN}}": listen,
        "{{WORKERS}}": str(workers),
        "{{RMS_SERVERS}}": "\n".join(server.format(a) for a in rms),
        "{{INGEST_SERVERS}}": "\n".join(server.format(a) for a in ingest),
        "{{TLS}}": tls_lines,
    }.items():
        text = text.replace(field, value)
    if os.geteuid() == 0:
        # Workers would run as "nobody" and could not write the run dir's temp and cache.
        text = text.replace("worker_processes", "user root;\nworker_processes", 1)
    return text


def self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1/localhost, made with the openssl command."""
    cert, key = directory / "edge.crt", directory / "edge.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@attrs.define
class Child:
    name: str
    role: str
    cmd: list[str]
    env: dict[str, str]
    log: str
    url: str = ""
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    exited: int | None = None
    restarts: int = 0  # restarts so far
    attempt: int = 0  # quick deaths in a row (RestartPolicy's count)
    last_exit: str = ""  # "killed by SIGKILL", "exited with code 1"
    started_at: float = 0.0  # time.monotonic() of the last start
    started_wall: float = 0.0  # time.time() of the last start

    def start(self) -> None:
        self.started_at, self.started_wall = time.monotonic(), time.time()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Ctrl-C in a terminal reaches only `cluster up`, which then stops the
                # children in order; if it dies, they get SIGTERM (PR_SET_PDEATHSIG).
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def describe(self) -> dict[str, Any]:
        """What ``cluster.json`` says of this process besides its address."""
        return {
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit or None,
            "started_at": round(self.started_wall, 3),
        }

    def tail(self, lines: int = 30) -> str:
        try:
            return "".join(Path(self.log).read_text(errors="replace").splitlines(keepends=True)[-lines:])
        except OSError:
            return ""


class Cluster:
    def __init__(
        self,
        args: argparse.Namespace,
        *,
        region: str = "",
        run_dir: Path | None = None,
        worker_base: int = 0,
        edge_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """One region (``region``, ``run_dir``, ``worker_base``, ``edge_port``, ``env``: as
        ``RegionsCluster`` sets them; by default the whole single-region cluster)."""
        if args.rms < 1 or args.ingest < 1:
            raise ValueError("a cluster needs at least one rms and one ingest node")
        self.args = args
        self.region = region
        self.worker_base = worker_base
        self.edge_port: int = args.edge_port if edge_port is None else edge_port
        self.extra_env = dict(env or {})
        self.run_dir = (run_dir or Path(args.run_dir or tempfile.mkdtemp(prefix="livecomments-cluster-"))).resolve()
        self.children: list[Child] = []
        self.redis_url: str = args.redis_url or ""
        self.redis: Child | None = None
        self.topology: LocalRedisCluster | LocalSentinel | None = None
        masters = getattr(args, "redis_cluster", 0) or 0
        sentinel = bool(getattr(args, "redis_sentinel", False))
        if sum((bool(self.redis_url), bool(masters), sentinel)) > 1:
            raise ValueError("--redis-url, --redis-cluster and --redis-sentinel exclude each other")
        if masters and masters < 3:
            raise ValueError("--redis-cluster needs at least 3 masters")
        self.nginx: Child | None = None
        self.edge_url = ""
        self.stopping = False
        self._waiters: trio.CapacityLimiter | None = None  # threads waiting for exits (no pidfd)
        first = float(getattr(args, "restart_backoff_s", 0.5))
        cap = float(getattr(args, "restart_backoff_max_s", 30.0))
        if not 0 < first <= cap:
            raise ValueError("need 0 < --restart-backoff-s <= --restart-backoff-max-s")
        self.restart_policy = RestartPolicy(Backoff(initial_s=first, max_s=cap, factor=2.0, jitter=0.2))
        self.appendfsync = str(getattr(args, "redis_appendfsync", "always"))

    # -- starting ---------------------------------------------------------------------------

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "LIVECOMMENTS_REDIS_URL": self.redis_url,
                "LIVECOMMENTS_DATA_DIR": str(self.run_dir / "data"),
                "LIVECOMMENTS_HOST": "127.0.0.1",
                "LIVECOMMENTS_PROXY_HOPS": env.get("LIVECOMMENTS_PROXY_HOPS", "1"),
            }
        )
        if isinstance(self.topology, LocalRedisCluster):
            env.setdefault("LIVECOMMENTS_REDIS_SHARDS", CLUSTER_SHARDS)
        env.update(self.extra_env)
        env.update(extra)
        return env

    def _start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server), or pass --redis-url")
        port = free_port()
        data = self.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.redis_url = f"redis://127.0.0.1:{port}"
        cmd = [
            exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no",
            # Accepted comments wait in Redis for the persist worker: keep them across a
            # restart. With "always" Redis writes and fsyncs the AOF before it answers, so
            # an acknowledged comment survives a SIGKILL of Redis, even of the machine;
            # "everysec" may lose acknowledged writes (docs/operations.md, Failures).
            "--appendonly", "yes", "--appendfsync", self.appendfsync, "--dir", str(data),
        ]
        self.redis = Child("redis", "redis", cmd, dict(os.environ), str(self.run_dir / "logs" / "redis.log"),
                           url=self.redis_url, port=port)
        self.redis.start()

    def _start_topology(self) -> None:
        """A Redis Cluster or a Sentinel setup under run_dir/redis (blocking, on this
        thread: the servers get SIGTERM when the thread that started them ends)."""
        directory = self.run_dir / "redis"
        if getattr(self.args, "redis_cluster", 0):
            self.topology = LocalRedisCluster(
                directory, masters=self.args.redis_cluster, replicas=getattr(self.args, "redis_replicas", 1)
            )
        else:
            self.topology = LocalSentinel(directory, replicas=getattr(self.args, "redis_replicas", 1) or 1)
        self.topology.start(READY_TIMEOUT_S)
        self.redis_url = self.topology.url

    def _node(self, role: str, n: int, **extra: str) -> Child:
        name = f"{role}-{n}"
        port = free_port() if role not in ("persist", "moderate", "forward") else 0
        cmd = [sys.executable, "-m", "livecomments", role, "--node-id", name]
        if port:
            cmd += ["--port", str(port)]
        env = self._env(LIVECOMMENTS_NODE_ID=name, **extra)
        child = Child(name, role, cmd, env, str(self.run_dir / "logs" / f"{name}.log"), port=port)
        if port:
            child.url = f"http://127.0.0.1:{port}"
        return child

    def _start_nginx(self) -> None:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if exe is None:
            raise RuntimeError("nginx is not installed (apt-get install -y nginx)")
        ndir = make_edge_dirs(self.run_dir / "nginx")
        port = self.edge_port or free_port()
        tls = self_signed(ndir) if self.args.tls else None
        listen = f"127.0.0.1:{port}" + (" ssl http2" if tls else "")
        conf = render_edge(
            edge_template(),
            run_dir=str(ndir),
            listen=listen,
            rms=[f"127.0.0.1:{c.port}" for c in self.children if c.role == "rms"],
            ingest=[f"127.0.0.1:{c.port}" for c in self.children if c.role == "ingest"],
            tls=tls,
        )
        (ndir / "edge.conf").write_text(conf)
        scheme = "https" if tls else "http"
        self.edge_url = f"{scheme}://127.0.0.1:{port}"
        cmd = [exe, "-p", str(ndir), "-c", str(ndir / "edge.conf"), "-e", str(ndir / "error.log")]
        self.nginx = Child("nginx", "edge", cmd, dict(os.environ), str(self.run_dir / "logs" / "nginx.log"),
                           url=self.edge_url, port=port)
        self.nginx.start()

    async def _wait_ready(self, child: Child, path: str, *, verify: bool = True) -> None:
        import httpx

        deadline = trio.current_time() + READY_TIMEOUT_S
        async with httpx.AsyncClient(verify=verify, timeout=2.0) as client:
            while True:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited during start-up:\n{child.tail()}")
                try:
                    r = await client.get(child.url + path)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if trio.current_time() > deadline:
                    raise RuntimeError(f"{child.name} did not answer {path} within {READY_TIMEOUT_S:.0f} s:\n{child.tail()}")
                await trio.sleep(0.1)

    async def _wait_redis(self) -> None:
        """Until one of the URL's servers (any node of a cluster, any sentinel) answers PING."""
        netloc = self.redis_url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        hosts = [part.rsplit(":", 1) for part in netloc.split(",")]
        deadline = trio.current_time() + READY_TIMEOUT_S
        while True:
            if self.redis is not None and self.redis.proc is not None and self.redis.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited during start-up:\n{self.redis.tail()}")
            for host, port in hosts:
                try:
                    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                    async with stream:
                        await stream.send_all(b"PING\r\n")
                        if b"PONG" in await stream.receive_some(64):
                            return
                except (OSError, trio.BrokenResourceError):
                    pass
            if trio.current_time() > deadline:
                raise RuntimeError(f"Redis at {self.redis_url} did not answer")
            await trio.sleep(0.1)

    async def start(self) -> None:
        for sub in ("logs", "data"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        if getattr(self.args, "redis_cluster", 0) or getattr(self.args, "redis_sentinel", False):
            self._start_topology()
        elif not self.redis_url:
            self._start_redis()
        await self._wait_redis()
        for n in range(1, self.args.ingest + 1):
            self.children.append(self._node("ingest", n, LIVECOMMENTS_WORKER_ID=str(self.worker_base + n)))
        for n in range(1, self.args.rms + 1):
            self.children.append(self._node("rms", n))
        if not self.args.no_persist:
            self.children.append(self._node("persist", 1))
        self.children.append(self._node("moderate", 1))
        for child in self.children:
            child.start()
        async with trio.open_nursery() as nursery:
            for child in self.children:
                if child.url:
                    nursery.start_soon(self._wait_ready, child, "/readyz")
        self._start_nginx()
        assert self.nginx is not None
        await self._wait_ready(self.nginx, "/healthz", verify=False)

    # -- reporting ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        redis: dict[str, Any] = {
            "url": self.redis_url,
            "pid": None,
            "started_here": self.redis is not None,
            "prefix": os.environ.get("LIVECOMMENTS_REDIS_PREFIX", "lc"),
            "shards": int(os.environ.get("LIVECOMMENTS_REDIS_SHARDS", "1") or 1),
        }
        redis.update({k: v for k, v in self._describe_redis().items() if k != "pid"})
        if self.redis is not None:
            redis.update(self.redis.describe(), port=self.redis.port, log=self.redis.log, appendfsync=self.appendfsync)
        nginx: dict[str, Any] = {
            "pid": None,
            "config": str(self.run_dir / "nginx" / "edge.conf"),
            "access_log": str(self.run_dir / "nginx" / "access.log"),
        }
        if self.nginx is not None:
            nginx.update(self.nginx.describe(), url=self.edge_url, port=self.nginx.port, log=self.nginx.log)
        backoff = self.restart_policy.backoff
        return {
            "run_dir": str(self.run_dir),
            **({"region": self.region} if self.region else {}),
            "edge": self.edge_url,
            "supervisor": {
                "pid": os.getpid(),
                "restart_backoff_s": backoff.initial_s,
                "restart_backoff_max_s": backoff.max_s,
                "stable_s": self.restart_policy.stable_s,
            },
            "redis": redis,
            "nginx": nginx,
            "nodes": [
                {"name": c.name, "role": c.role, "url": c.url, "port": c.port, "log": c.log, **c.describe()}
                for c in self.children
            ],
            "data_dir": str(self.run_dir / "data"),
        }

    def save(self) -> None:
        """Write ``cluster.json`` (atomically: ``cluster status`` may be reading it)."""
        path = self.run_dir / "cluster.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2))
        os.replace(tmp, path)

    def _describe_redis(self) -> dict[str, Any]:
        if self.topology is not None:
            return {**self.topology.describe(), "pid": None}
        topology = "single"
        for scheme, name in (("+cluster", "cluster"), ("+sentinel", "sentinel")):
            if self.redis_url.split("://", 1)[0].endswith(scheme):
                topology = name
        return {"url": self.redis_url, "pid": self.redis.pid if self.redis else None, "topology": topology}

    def report(self) -> None:
        def rel(path: str) -> str:
            return os.path.relpath(path, self.run_dir)

        print(f"livecomments cluster: run dir {self.run_dir}", flush=True)
        if self.redis is not None:
            print(f"  {'redis':<10} {self.redis_url:<28} pid {self.redis.pid:<8} (started here, AOF in redis/)")
        elif self.topology is not None:
            for node in self.topology.describe()["nodes"]:
                where = f"redis://127.0.0.1:{node['port']}"
                print(f"  {node['name']:<10} {where:<28} pid {node['pid']:<8} {node['role']} (started here, redis/)")
            print(f"  {'redis url':<10} {self.redis_url}")
        else:
            print(f"  {'redis':<10} {self.redis_url:<28} (given)")
        for c in self.children:
            where = c.url or ("cold store: " + os.environ.get("LIVECOMMENTS_STORE", "sqlite"))
            if c.role == "forward":
                where = "to " + ",".join(r.split("=", 1)[0] for r in c.env.get("LIVECOMMENTS_REGION_REMOTES", "").split(","))
            extra = f" worker {c.env['LIVECOMMENTS_WORKER_ID']}" if c.role == "ingest" else ""
            print(f"  {c.name:<10} {where:<28} pid {c.pid:<8} log {rel(c.log)}{extra}")
        assert self.nginx is not None
        print(f"  {'nginx':<10} {self.edge_url:<28} pid {self.nginx.pid:<8} config nginx/edge.conf, access log nginx/access.log")
        print(f"  tokens: livecomments token --data-dir {self.run_dir / 'data'} --user U --name N", flush=True)
        print(f"edge: {self.edge_url}", flush=True)

    # -- running and stopping -------------------------------------------------------------------

    async def _wait_exit(self, child: Child) -> int:
        """Wait until ``child`` exits; kill what it left in its process group (nginx'
        workers, a Redis rewrite child) while its pid is still reserved (a zombie), then
        reap it. Returns Popen's return code (-N: killed by signal N)."""
        proc = child.proc
        assert proc is not None
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # already reaped (poll() elsewhere)
            return proc.wait()
        except (OSError, AttributeError):  # no pidfd (kernel < 5.3): wait in a thread, without reaping
            fd = -1
        if fd >= 0:
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
        else:
            await trio.to_thread.run_sync(
                os.waitid, os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT, abandon_on_cancel=True, limiter=self._waiters
            )
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = proc.wait()
        child.exited = code
        return code

    async def _supervise(self, child: Child) -> None:
        """Restart ``child`` whenever it exits, until the cluster stops (which cancels
        this task first: nothing is restarted once SIGINT or SIGTERM arrived)."""
        while True:
            code = await self._wait_exit(child)
            if self.stopping:
                return
            uptime = time.monotonic() - child.started_at
            delay, child.attempt = self.restart_policy.after_exit(child.attempt, uptime, random.random())
            child.restarts += 1
            child.last_exit = describe_exit(code)
            print(
                f"livecomments cluster: {child.name} (pid {child.pid}) {child.last_exit} after {uptime:.1f} s;"
                f" restart {child.restarts} in {delay:.2f} s",
                flush=True,
            )
            self.save()
            while True:
                await trio.sleep(delay)
                try:
                    child.start()
                    break
                except OSError as e:  # fork failed, the executable is gone: try again later
                    delay, child.attempt = self.restart_policy.after_exit(child.attempt, 0.0, random.random())
                    print(f"livecomments cluster: {child.name} did not start ({e}); again in {delay:.2f} s", flush=True)
            print(f"livecomments cluster: {child.name} restarted, pid {child.pid} (restart {child.restarts})", flush=True)
            self.save()

    async def _watch_redis(self, server: RedisProcess) -> None:
        proc = server.proc
        if proc is None:
            return
        code = await trio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
        if not self.stopping:
            print(f"livecomments cluster: {server.name} (pid {proc.pid}) exited with code {code}", flush=True)

    async def _stop_group(self, children: list[Child], sig: int, grace_s: float) -> None:
        """Signal them all, wait up to ``grace_s`` for them to exit, then kill."""
        for c in children:
            c.signal(sig)
        with trio.move_on_after(grace_s):
            for c in children:
                if c.proc is not None:
                    await trio.to_thread.run_sync(c.proc.wait, abandon_on_cancel=True)
        for c in children:
            if c.proc is not None and c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)  # with whatever it started
                except (ProcessLookupError, PermissionError):
                    c.proc.kill()
                await trio.to_thread.run_sync(c.proc.wait)

    async def stop(self) -> None:
        self.stopping = True
        grace = float(os.environ.get("LIVECOMMENTS_SHUTDOWN_GRACE_S", "5"))
        if self.nginx is not None:
            await self._stop_group([self.nginx], signal.SIGTERM, 5)  # fast: streams end now
        await self._stop_group([c for c in self.children if c.role == "rms"], signal.SIGTERM, grace + 10)
        await self._stop_group([c for c in self.children if c.role == "ingest"], signal.SIGTERM, 10)
        await self._stop_group([c for c in self.children if c.role == "forward"], signal.SIGTERM, 10)
        await self._stop_group([c for c in self.children if c.role == "persist"], signal.SIGTERM, grace + 10)
        await self._stop_group([c for c in self.children if c.role == "moderate"], signal.SIGTERM, 10)
        if self.redis is not None:
            await self._stop_group([self.redis], signal.SIGTERM, 10)
        if self.topology is not None:
            await trio.to_thread.run_sync(self.topology.stop)

    async def run(self) -> int:
        failed: list[str] = []
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                async with trio.open_nursery() as nursery:

                    async def until_signal() -> None:
                        async for _ in signals:
                            self.stopping = True
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(until_signal)
                    await self.start()
                    self.save()
                    self.report()
                    supervised = [c for c in [self.redis, *self.children, self.nginx] if c is not None]
                    self._waiters = trio.CapacityLimiter(len(supervised) + 1)
                    for c in supervised:
                        nursery.start_soon(self._supervise, c)
                    # A Redis Cluster's or Sentinel set's servers are reported, not restarted:
                    # failover is their own business (and the drills kill them on purpose).
                    for server in self.topology.processes() if self.topology is not None else []:
                        nursery.start_soon(self._watch_redis, server)
            except* (RuntimeError, OSError, subprocess.CalledProcessError) as group:
                failed = [str(e) for e in group.exceptions]
            finally:
                with trio.CancelScope(shield=True):
                    print("livecomments cluster: stopping", flush=True)
                    await self.stop()
        for text in failed:
            print(f"livecomments cluster: {text}", file=sys.stderr, flush=True)
        print("livecomments cluster: stopped", flush=True)
        return 1 if failed else 0


def describe_exit(code: int) -> str:
    """Popen's return code in words: ``killed by SIGKILL`` or ``exited with code 1``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def main(args: argparse.Namespace) -> int:
    if args.cluster_command == "status":
        from livecomments.cluster_status import main as status_main

        return status_main(args)
    if args.cluster_command != "up":
        raise ValueError(f"unknown cluster command {args.cluster_command!r}")
    if int(getattr(args, "regions", 1) or 1) > 1:
        from livecomments.regions_local import RegionsCluster

        return int(trio.run(RegionsCluster(args).run))
    return int(trio.run(Cluster(args).run))
