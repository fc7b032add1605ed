"""``--target cluster``: a ``livecomments cluster up`` started by the harness, measured per role.

The harness runs ``python -m livecomments cluster up --rms N --ingest N --edge-port 0
--run-dir <tmp>`` (pinned to the server CPU like the all-in-one server: every process of
the cluster inherits the pin, so the cluster as a whole gets one core and the load
generator the other), waits for the ``cluster.json`` it writes once every node answers,
and reads the pids of each role there:

- ``ingest``, ``rms``, ``persist``, ``moderate``: the nodes (and any children they have);
- ``redis``: the redis-server ``cluster up`` started (and its children: an AOF rewrite);
- ``edge``: the nginx master and its workers (children of the master);
- ``supervisor``: ``cluster up`` itself.

The load goes through the edge by default (``--via edge``): posts and viewers to the one
nginx port, which routes posts round-robin to the ingest nodes and each video's streams
to one rms node by a consistent hash of the video. ``--via nodes`` goes straight at the
nodes the same way: the publisher's connections are spread round-robin over the ingest
nodes (and it takes them in turn), and every viewer of the video goes to the rms node the
edge would pick for it (asked once, from the edge's ``X-Edge-Upstream`` header). nginx
still runs then (``cluster up`` always starts it) and is still measured: it should be
idle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from benches.procstat import children, descendants
from benches.targets import HOST, LivecommentsTarget, TargetUnavailable

# The roles reported in ``result.json``, in the order the plots stack them.
ROLES = ("ingest", "rms", "redis", "persist", "moderate", "edge", "supervisor")
VIA = ("edge", "nodes")
START_TIMEOUT_S = 120.0


class ClusterTarget(LivecommentsTarget):
    """A whole local cluster (``livecomments cluster up``) as the server under test."""

    name = "cluster"

    def __init__(
        self,
        workdir: Path,
        cpu: int | None,
        *,
        rms: int = 2,
        ingest: int = 2,
        via: str = "edge",
        env: dict[str, str] | None = None,
    ) -> None:
        if via not in VIA:
            raise ValueError(f"--via must be one of {', '.join(VIA)}, not {via!r}")
        if rms < 1 or ingest < 1:
            raise ValueError("a cluster needs at least one rms and one ingest node")
        super().__init__(workdir, cpu, None, env)
        self.rms = rms
        self.ingest = ingest
        self.via = via
        self.run_dir = workdir / "cluster"
        self.info: dict[str, Any] = {}
        self.role_pids: dict[str, list[int]] = {}
        self.node_pids: dict[str, tuple[str, list[int]]] = {}  # node name -> (role, pids)
        self.nginx_workers: list[int] = []
        self.viewer_node = ""

    # -- starting and stopping ---------------------------------------------------------------------

    def start(self) -> None:
        self.cmd = [
            sys.executable, "-m", "livecomments", "cluster", "up",
            "--rms", str(self.rms), "--ingest", str(self.ingest),
            "--edge-port", "0", "--run-dir", str(self.run_dir),
        ]  # fmt: skip
        env = dict(os.environ)
        env.update(
            {
                "LIVECOMMENTS_RATE_LIMIT": "1000000/1s",
                "LIVECOMMENTS_GUEST_RATE_LIMIT": "1000000/1s",
                "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "1000000/1s",
                # The publishers sign in as guests, as they do against the all-in-one server.
                "LIVECOMMENTS_GUEST_SIGNIN": "true",
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
        self.info = self._wait_described()
        edge = str(self.info.get("edge") or "")
        if not edge.startswith("http://"):
            raise TargetUnavailable(f"cluster up reported no plain-HTTP edge ({edge!r})")
        self.port = int(edge.rsplit(":", 1)[1].strip("/"))
        self._wait_healthy()
        self.role_pids = self._find_roles()
        self.nginx_workers = self._nginx_workers()
        if self.via == "nodes":
            self.viewer_node = self._edge_pick()

    def _wait_described(self) -> dict[str, Any]:
        """Wait for ``cluster.json`` (written once every node answers) and read it."""
        path = self.run_dir / "cluster.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise TargetUnavailable(
                    f"cluster up exited with {self.proc.returncode} during start-up; log tail:\n{self.log_tail()}"
                )
            if path.exists():
                try:
                    info: dict[str, Any] = json.loads(path.read_text())
                    return info
                except ValueError:
                    pass  # being written: read it again
            time.sleep(0.1)
        raise TargetUnavailable(f"cluster up wrote no cluster.json within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def _nginx_pid(self) -> int:
        return int((self.info.get("nginx") or {}).get("pid") or 0)

    def _find_roles(self) -> dict[str, list[int]]:
        """Each role's pids: the processes cluster.json names and everything below them."""
        assert self.proc is not None
        roles: dict[str, list[int]] = {r: [] for r in ROLES}
        self.node_pids = {}
        for node in self.info.get("nodes", []):
            role, pid = str(node.get("role", "")), int(node.get("pid") or 0)
            if pid:
                self.node_pids[str(node.get("name") or pid)] = (role, descendants(pid))
                roles.setdefault(role, []).extend(self.node_pids[str(node.get("name") or pid)][1])
        redis_pid = int((self.info.get("redis") or {}).get("pid") or 0)
        if redis_pid:
            roles["redis"] = descendants(redis_pid)
        nginx_pid = self._nginx_pid()
        if nginx_pid:
            roles["edge"] = descendants(nginx_pid)
        roles["supervisor"] = [self.proc.pid]
        missing = [r for r in ("ingest", "rms", "redis", "edge") if not roles[r]]
        if missing:
            raise TargetUnavailable(f"cluster.json names no process for {', '.join(missing)}: {self.info}")
        return roles

    def _nodes(self, role: str) -> list[dict[str, Any]]:
        return [n for n in self.info.get("nodes", []) if n.get("role") == role]

    def _edge_pick(self) -> str:
        """The rms node (host:port) the edge sends this video's viewers to.

        Streams and ``/stats`` use the same nodes and the same consistent hash of the video
        in ``edge.conf``, so one ``/stats`` request through the edge names the node in its
        ``X-Edge-Upstream`` header. Without it, a CRC-32 of the video picks one.
        """
        rms = self._nodes("rms")
        try:
            conn_headers = _head(self.port, f"/v1/videos/{self.stream}/stats")
            upstream = conn_headers.get("x-edge-upstream", "").split(",")[-1].strip()
            if any(upstream == f"{HOST}:{n['port']}" for n in rms):
                return upstream
        except OSError:
            pass
        node = rms[zlib.crc32(self.stream.encode()) % len(rms)]
        return f"{HOST}:{node['port']}"

    def stop(self) -> None:
        """SIGTERM to ``cluster up`` (it stops every node in order); SIGKILL to what lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10.0)
        # Should ``cluster up`` have died without stopping them: by pid, never by name.
        for pids in self.role_pids.values():
            for pid in pids:
                if pid != proc.pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass

    # -- what the harness asks -----------------------------------------------------------------

    def roles(self) -> dict[str, list[int]]:
        return self.role_pids

    def nodes(self) -> dict[str, tuple[str, list[int]]]:
        """The nodes ``cluster.json`` names (``ingest-1``, ``rms-2``, ...): role and pids."""
        return self.node_pids

    def server_pids(self) -> list[int]:
        return [p for pids in self.role_pids.values() for p in pids]

    def publish_ports(self) -> list[int]:
        if self.via == "edge":
            return [self.port]
        return [int(n["port"]) for n in self._nodes("ingest")]

    def viewer_port(self) -> int:
        if self.via == "edge":
            return self.port
        return int(self.viewer_node.rsplit(":", 1)[1])

    def _nginx_workers(self) -> list[int]:
        """The nginx workers (not its cache manager and loader: the loader exits after a minute)."""
        out = []
        for pid in children(self._nginx_pid()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"worker process" in f.read():
                        out.append(pid)
            except OSError:
                continue
        return sorted(out)

    def port_name(self, port: int) -> str:
        """``edge`` or the node's name (``ingest-1``) for one of the cluster's ports."""
        if port == self.port:
            return "edge"
        return next((str(n["name"]) for n in self.info.get("nodes", []) if n.get("port") == port), str(port))

    def problem(self) -> str | None:
        base = super().problem()
        if base:
            return base
        named = [int(n.get("pid") or 0) for n in self.info.get("nodes", [])]
        named += [int((self.info.get(k) or {}).get("pid") or 0) for k in ("redis", "nginx")]
        for pid in filter(None, named):
            if not os.path.exists(f"/proc/{pid}"):
                role = next((r for r, pids in self.role_pids.items() if pid in pids), "?")
                return f"a {role} process (pid {pid}) exited during the run"
        workers = self._nginx_workers()
        if workers != self.nginx_workers:
            return f"the nginx workers {self.nginx_workers} were replaced (crash?): now {workers}"
        return None

    def log_tail(self, lines: int = 30) -> str:
        parts = [super().log_tail(lines)]
        for log in sorted((self.run_dir / "logs").glob("*.log")) if (self.run_dir / "logs").is_dir() else []:
            try:
                tail = log.read_text(errors="replace").splitlines()[-5:]
            except OSError:
                continue
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            {
                "via": self.via,
                "rms": self.rms,
                "ingest": self.ingest,
                "edge_port": self.port,
                "publish_ports": self.publish_ports(),
                "viewer_port": self.viewer_port(),
                "viewer_node": self.viewer_node or f"{HOST}:{self.port} (the edge)",
                "pids": self.role_pids,
                "cluster": self.info,
            }
        )
        return out


def _head(port: int, path: str) -> dict[str, str]:
    """The response headers of one GET (set-up only)."""
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10.0)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def role_figures(
    cpu_s: dict[str, float], rss_kb: dict[str, int], accepted: int, deliveries: int, window_s: float
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per role and in total: CPU seconds in the window, share of a core, RSS at its end,
    and CPU µs per accepted comment and per delivery (None when there were none)."""

    def figures(cpu: float, rss: int) -> dict[str, Any]:
        return {
            "cpu_s": round(cpu, 4),
            "cpu_util_pct": round(100 * cpu / window_s, 1) if window_s > 0 else None,
            "rss_kb": rss,
            "cpu_us_per_comment": round(1e6 * cpu / accepted, 3) if accepted else None,
            "cpu_us_per_delivery": round(1e6 * cpu / deliveries, 4) if deliveries else None,
        }

    roles = {r: figures(cpu_s[r], rss_kb.get(r, 0)) for r in cpu_s}
    total = figures(sum(cpu_s.values()), sum(rss_kb.values()))
    total["accepted_comments"] = accepted
    total["deliveries"] = deliveries
    return roles, total
