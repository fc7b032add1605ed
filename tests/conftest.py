"""Fixtures shared by the whole suite: real servers on ephemeral ports.

The CQL server (Apache Cassandra 5.0, tests/services/cassandra.py) is here so that the
store suite and the cluster suite share ONE per session. It starts lazily, when the first
test that needs ``cql`` runs; a session that needs none never starts Java. Each session
migrates a keyspace of its own (tests that need another, like the cluster outage test,
migrate their own too). ``LIVECOMMENTS_TEST_SCYLLA_HOSTS=host:port,...`` points the same
tests at an existing cluster (ScyllaDB, say) instead; tests that kill the server skip.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

import attrs
import pytest
import trio

from tests.services.cassandra import CassandraServer
from tests.support.server import ServerProcess

HOSTS_ENV = "LIVECOMMENTS_TEST_SCYLLA_HOSTS"

_video_counter = itertools.count()

# Tests sign in and post as guests from one address (127.0.0.1) far more than any person.
SUITE_LIMITS = {"LIVECOMMENTS_GUEST_RATE_LIMIT": "10000/1s", "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "10000/1s"}


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One server for the session: tests that do not restart it share it (own videos)."""
    srv = ServerProcess(SUITE_LIMITS).start()
    yield srv
    srv.close()


@pytest.fixture
def live_server() -> Iterator[ServerProcess]:
    """A server of the test's own, which the test may stop and start again."""
    srv = ServerProcess(SUITE_LIMITS).start()
    yield srv
    srv.close()


@pytest.fixture
def server_factory() -> Iterator[object]:
    """Start servers with extra ``LIVECOMMENTS_*`` settings: ``server_factory(env)``."""
    started: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None) -> ServerProcess:
        srv = ServerProcess({**SUITE_LIMITS, **(env or {})}).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.close()


@pytest.fixture
def video(request: pytest.FixtureRequest) -> str:
    """A video id of the test's own."""
    name = "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:40]
    return f"{name}_{next(_video_counter)}"


# -- the CQL server ------------------------------------------------------------------------------


@attrs.frozen
class CqlTarget:
    hosts: list[str]
    keyspace: str
    server: CassandraServer | None  # None: an external cluster we must not kill


@pytest.fixture(scope="session")
def cql_server() -> Iterator[CassandraServer | None]:
    if os.environ.get(HOSTS_ENV):
        yield None
        return
    server = CassandraServer()
    server.start()
    print(f"\nCassandra on {server.host}:{server.port} started in {server.started_in_s:.1f} s")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cql(cql_server: CassandraServer | None) -> Iterator[CqlTarget]:
    """Hosts and a migrated keyspace of this session's own (dropped at the end)."""
    from adapters.scylla.store import migrate  # the driver only when CQL is used

    hosts = cql_server.hosts if cql_server is not None else os.environ[HOSTS_ENV].split(",")
    keyspace = f"lc_test_{secrets.token_hex(4)}"
    trio.run(migrate, hosts, keyspace, 3600)
    yield CqlTarget(hosts=hosts, keyspace=keyspace, server=cql_server)
    if cql_server is None or cql_server.running():
        trio.run(drop_keyspace, hosts, keyspace)


async def drop_keyspace(hosts: list[str], keyspace: str) -> None:
    from adapters.scylla.store import _make_cluster, consistency_level, parse_hosts

    def run() -> None:
        cluster = _make_cluster(parse_hosts(hosts), consistency=consistency_level("ONE"), request_timeout_s=60)
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        finally:
            cluster.shutdown()

    await trio.to_thread.run_sync(run)
