"""Store fixtures: every contract test runs on SQLite and on a real CQL server.

The CQL server is Apache Cassandra 5.0 (tests/services/cassandra.py), started once per
session (the ``cql`` fixture in tests/conftest.py, shared with the cluster suite) and only
when a CQL test runs; each session gets its own keyspace and each test its own video ids.
``LIVECOMMENTS_TEST_SCYLLA_HOSTS=host:port,...`` points the same tests at an existing
cluster (ScyllaDB, say) instead; the outage test then skips, since it kills the server.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from adapters.scylla.store import ScyllaStore
from adapters.sqlite.store import SqliteStore
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment
from domain.ports import Store
from tests.conftest import HOSTS_ENV, CqlTarget, drop_keyspace

# Re-exported: the store tests import these from here.
__all__ = ["HOSTS_ENV", "TEST_BUCKET_S", "Backend", "Comments", "CqlTarget", "drop_keyspace"]

# The contract suite's CQL store uses one-minute buckets so that ordinary tests (whose ids
# are spread over simulated minutes, see ``Comments``) also walk partitions across buckets.
TEST_BUCKET_S = 60


@attrs.frozen
class Backend:
    """How to open one adapter's store; ``open()`` may be called again (reopen tests)."""

    kind: str
    path: Path | None = None
    cql: CqlTarget | None = None

    def open(self, **kw: Any) -> AbstractAsyncContextManager[Store]:
        return self._open(**kw)

    @asynccontextmanager
    async def _open(self, **kw: Any) -> AsyncIterator[Store]:
        if self.kind == "sqlite":
            assert self.path is not None
            async with SqliteStore.open(str(self.path), **kw) as s:
                yield s
        else:
            assert self.cql is not None
            kw.setdefault("bucket_s", TEST_BUCKET_S)
            async with ScyllaStore.open(self.cql.hosts, self.cql.keyspace, **kw) as s:
                yield s


@pytest.fixture(params=["sqlite", "scylla"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", path=tmp_path / "comments.db")
    # Resolved lazily: a run of only the SQLite cases never starts Java.
    return Backend("scylla", cql=request.getfixturevalue("cql"))


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.open() as s:
        yield s


@attrs.define
class Comments:
    """Makes comments with real Snowflake ids for one video.

    Each comment is ``step_ms`` after the previous one in simulated time (default 7 s), so
    a few dozen comments span several one-minute buckets. Time starts an hour ago: well
    inside any TTL, and never in the future.
    """

    video_id: str
    step_ms: int = 7_000
    _gen: SnowflakeGenerator = attrs.field(factory=lambda: SnowflakeGenerator(worker=7))
    _t: int = attrs.field(factory=lambda: int(time.time() * 1000) - 3_600_000)

    def make(
        self,
        text: str = "hello",
        *,
        author: str = "alice",
        shadow: bool = False,
        verified: bool = False,
        streamer: bool = False,
        client_id: str | None = None,
        step_ms: int | None = None,
    ) -> Comment:
        self._t += self.step_ms if step_ms is None else step_ms
        return Comment(
            id=self._gen.next_id(self._t),
            video_id=self.video_id,
            author=Author(id=author, name=author.title(), verified=verified),
            text=text,
            created_at=self._t,
            client_id=client_id,
            shadow=shadow,
            streamer=streamer,
        )


@pytest.fixture
def comments(video: str) -> Comments:
    return Comments(video)
