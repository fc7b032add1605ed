"""A throwaway single-node Apache Cassandra for the CQL store tests.

There is no ScyllaDB binary for these machines; Cassandra 5.0 speaks the same CQL native
protocol and scylla-driver talks to both. This module fetches Cassandra's runtime jars
from Maven Central once (``pom.xml`` next to it lists the one dependency), writes a
minimal ``cassandra.yaml`` on 127.0.0.1 with free ports in a temporary directory, and
runs ``CassandraDaemon`` in the foreground as a child process it owns.

    server = CassandraServer()
    server.start()        # blocks until "Starting listening for CQL clients"
    ... server.host, server.port ...
    server.kill9()        # outage tests: SIGKILL, nothing flushed
    server.restart()      # same ports, same data directory (replays the commitlog)
    server.stop()         # SIGTERM, then SIGKILL; removes the temporary directory

``python tests/services/cassandra.py fetch`` prefetches the jars (CI warm-up);
``python tests/services/cassandra.py run`` starts a server and waits for Ctrl-C.

This module must not import the ``cassandra`` driver package: run as a script, its own
directory is first on ``sys.path`` and this file would shadow it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASSANDRA_VERSION = "5.0.9"
POM = Path(__file__).resolve().parent / "cassandra" / "pom.xml"
READY_LINE = "Starting listening for CQL clients"

# Cassandra's conf/jvm17-server.options: the JDK internals it reaches into.
_ADD_EXPORTS = (
    "java.base/jdk.internal.misc",
    "java.base/jdk.internal.ref",
    "java.base/sun.nio.ch",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
    "java.management/com.sun.jmx.remote.security",
)
_ADD_OPENS = (
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.nio",
    "java.base/java.util.concurrent",
    "java.base/java.util",
    "java.base/java.util.concurrent.atomic",
    "java.base/java.lang",
    "java.base/java.math",
    "java.base/java.lang.reflect",
    "java.base/java.net",
    "jdk.compiler/com.sun.tools.javac",
)

_LOGBACK = """<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{log}</file>
    <encoder><pattern>%-5level %date{{HH:mm:ss.SSS}} [%thread] %logger{{20}} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "livecomments" / "cassandra"


def lib_dir() -> Path:
    return cache_dir() / "lib"


def fetch_jars(quiet: bool = True) -> Path:
    """Cassandra's runtime jars in the cache (fetched with Maven once; ~100 jars, 67 MB)."""
    lib = lib_dir()
    if any(lib.glob("cassandra-all-*.jar")) and any(lib.glob("jamm-*.jar")):
        return lib
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch Cassandra's jars: apt-get install -y maven")
    # Fetch into a directory of this process's own and rename it into place, so an
    # interrupted fetch is never "present" and two test runs fetching at once do not clash.
    partial = lib.with_name(f"lib.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "mvn", "-B", *(["-q"] if quiet else []),
        "-f", str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"mvn failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    try:
        partial.rename(lib)
    except OSError:  # another run got there first (or a stale, incomplete lib is in the way)
        if any(lib.glob("cassandra-all-*.jar")) and any(lib.glob("jamm-*.jar")):
            shutil.rmtree(partial, ignore_errors=True)
        else:
            shutil.rmtree(lib, ignore_errors=True)
            partial.rename(lib)
    return lib


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _yaml(root: Path, storage_port: int, native_port: int, commitlog_sync: str) -> str:
    sync = (
        "commitlog_sync: batch\n"
        if commitlog_sync == "batch"
        else "commitlog_sync: group\ncommitlog_sync_group_window: 15ms\n"
    )
    return f"""\
cluster_name: livecomments-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
data_file_directories:
  - {root}/data
commitlog_directory: {root}/commitlog
saved_caches_directory: {root}/saved_caches
hints_directory: {root}/hints
cdc_raw_directory: {root}/cdc_raw
{sync}seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage_port}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage_port}
native_transport_port: {native_port}
endpoint_snitch: SimpleSnitch
start_native_transport: true
auto_snapshot: false
disk_access_mode: standard
memtable_allocation_type: heap_buffers
"""


class CassandraServer:
    """One Cassandra node on 127.0.0.1, owned by this object (see the module docstring).

    ``commitlog_sync`` is ``"batch"`` (default) or ``"group"`` (15 ms window): with either,
    a SIGKILL loses no acknowledged write, which the outage tests rely on. Never
    ``periodic`` here, and never ``-Dcassandra.unsafesystem=true`` (it lost the schema
    after a kill -9).
    """

    def __init__(
        self,
        *,
        heap: str = "1g",
        commitlog_sync: str = "batch",
        start_timeout_s: float = 90.0,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        if commitlog_sync not in ("batch", "group"):
            raise ValueError("commitlog_sync must be batch or group")
        self.host = "127.0.0.1"
        self.port = 0
        self.storage_port = 0
        self.jmx_port = 0
        self._heap = heap
        self._commitlog_sync = commitlog_sync
        self._start_timeout_s = start_timeout_s
        self._own_root = root is None
        self._root = Path(root) if root is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_in_s = 0.0
        # Last resort if the owner never calls stop(): no Java left behind at interpreter exit.
        atexit.register(self._kill_at_exit)

    # -- paths -----------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("not started")
        return self._root

    @property
    def log_path(self) -> Path:
        return self.root / "logs" / "system.log"

    @property
    def hosts(self) -> list[str]:
        """Contact points as the store takes them."""
        return [f"{self.host}:{self.port}"]

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Fetch the jars if needed, write the config, start, wait until CQL listens."""
        if self.running():
            raise RuntimeError("already running")
        lib = fetch_jars()
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="livecomments-cassandra-"))
        if not self.port:
            self.port, self.storage_port, self.jmx_port = _three_free_ports()
        root = self.root
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "triggers", "tmp", "logs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "cassandra.yaml").write_text(_yaml(root, self.storage_port, self.port, self._commitlog_sync))
        (root / "logback.xml").write_text(_LOGBACK.format(log=self.log_path))
        self._launch(lib)

    def restart(self) -> None:
        """Start again on the same ports and data directory (after ``kill9`` or
        ``stop_process``; ``stop`` removes the data)."""
        if self.running():
            self.stop_process()
        self._launch(lib_dir())

    def kill9(self) -> None:
        """SIGKILL: what the process had not written to its commitlog is gone."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    kill = kill9

    def stop_process(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (clean exit takes ~4-5 s), SIGKILL after ``timeout_s``; keeps the data."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def _kill_at_exit(self) -> None:
        if self.running():
            self.kill9()
        if self._own_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def stop(self) -> None:
        """Stop the process and remove the temporary directory this object made."""
        self.stop_process()
        if self._own_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> CassandraServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------
    def _command(self, lib: Path) -> list[str]:
        root = self.root
        jamm = sorted(lib.glob("jamm-*.jar"))
        if not jamm:
            raise RuntimeError(f"no jamm jar in {lib}")
        module_flags: list[str] = []
        for m in _ADD_EXPORTS:
            module_flags.append(f"--add-exports={m}=ALL-UNNAMED")
        for m in _ADD_OPENS:
            module_flags.append(f"--add-opens={m}=ALL-UNNAMED")
        return [
            shutil.which("java") or "java",
            "-Xms256m", f"-Xmx{self._heap}", "-Xss256k",
            "-XX:+UseG1GC", "-XX:+ExitOnOutOfMemoryError",
            # Nothing big to JIT in a test: tiered C1 starts faster.
            "-XX:TieredStopAtLevel=1",
            f"-javaagent:{jamm[-1]}",
            "-Djdk.attach.allowAttachSelf=true",
            *module_flags,
            "-Dio.netty.tryReflectionSetAccessible=true",
            "-Dcassandra-foreground=yes",
            "-Dchronicle.analytics.disable=true",
            "-Djava.net.preferIPv4Stack=true",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.shutdown_announce_in_ms=0",
            f"-Dcassandra.config=file://{root}/cassandra.yaml",
            f"-Dcassandra.storagedir={root}",
            f"-Dcassandra.triggers_dir={root}/triggers",
            f"-Dcassandra.jmx.local.port={self.jmx_port}",
            f"-Dcassandra.logdir={root}/logs",
            f"-Dlogback.configurationFile={root}/logback.xml",
            f"-Djava.io.tmpdir={root}/tmp",
            f"-Djna.tmpdir={root}/tmp",
            f"-Duser.home={root}",
            "-cp", f"{lib}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def _launch(self, lib: Path) -> None:
        root = self.root
        log = self.log_path
        # Where this start's log begins: a restart appends to the same file.
        offset = log.stat().st_size if log.exists() else 0
        stdout = open(root / "logs" / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        t0 = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self._command(lib),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=root,
                start_new_session=True,  # a Ctrl-C in the test run reaches us, not Java directly
            )
        finally:
            stdout.close()
        deadline = t0 + self._start_timeout_s
        while True:
            if _log_has(log, offset, READY_LINE) and _port_open(self.host, self.port):
                break
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"Cassandra exited with {code} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill9()
                self._proc = None
                raise TimeoutError(
                    f"Cassandra did not listen for CQL within {self._start_timeout_s:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        self.started_in_s = time.monotonic() - t0

    def log_tail(self, lines: int = 40) -> str:
        out: list[str] = []
        for p in (self.log_path, self.root / "logs" / "stdout.log"):
            if p.exists():
                text = p.read_text(errors="replace").splitlines()
                out.append(f"--- {p} (last {lines} lines)")
                out.extend(text[-lines:])
        return "\n".join(out)


def _three_free_ports() -> tuple[int, int, int]:
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    a, b, c = sorted(ports)
    return a, b, c


def _log_has(path: Path, offset: int, needle: str) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return needle.encode() in f.read()
    except FileNotFoundError:
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "fetch"
    if cmd == "fetch":
        t0 = time.monotonic()
        lib = fetch_jars(quiet=False)
        n = len(list(lib.glob("*.jar")))
        print(f"{n} jars in {lib} ({time.monotonic() - t0:.1f} s)")
        return 0
    if cmd == "run":

        def interrupt(_sig: int, _frame: object) -> None:
            raise KeyboardInterrupt

        # Also when started in the background (SIGINT ignored there) or stopped with kill.
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)
        server = CassandraServer()
        server.start()
        print(f"CQL on {server.host}:{server.port} (started in {server.started_in_s:.1f} s); Ctrl-C stops it")
        try:
            while server.running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return 0
    print(f"usage: {argv[0]} fetch|run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
