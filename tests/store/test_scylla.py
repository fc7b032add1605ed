"""What only the CQL store has: sharded writes, scatter-gather reads, migrations, TTLs,
the Trio bridge, and an outage (the server killed with SIGKILL while posting). The
sharding switch itself (``policy.shards``) is tested in tests/unit/test_shards.py."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.lowlevel

from adapters.scylla.store import (
    ScyllaStore,
    _gather,
    _make_cluster,
    _PartitionIndex,
    bucket_of,
    consistency_level,
    migrate,
    parse_hosts,
    shard_for,
    split_statements,
)
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment
from domain.ports import StoreUnavailable
from policy.shards import ShardingThresholds
from tests.store.conftest import TEST_BUCKET_S, Comments, CqlTarget, drop_keyspace

# -- pure helpers ----------------------------------------------------------------------------


def test_shard_for_spreads_snowflakes_evenly() -> None:
    gen = SnowflakeGenerator(worker=3)
    # One comment per millisecond: every id's sequence is 0, so ``id % 8`` would be 0.
    counts = collections.Counter(shard_for(gen.next_id(1_800_000_000_000 + i), 8) for i in range(8000))
    assert set(counts) == set(range(8))
    assert max(counts.values()) < 1.15 * 1000 and min(counts.values()) > 0.85 * 1000
    assert all(shard_for(i, 1) == 0 for i in range(100))


@pytest.mark.parametrize("descending", [True, False])
async def test_partition_index_pages_keep_buckets_whole(descending: bool) -> None:
    """The index walk returns whole buckets in order, however its pages cut the rows."""
    # 100 buckets; bucket b used shards 0..(b % 7) (a video going hot and cold).
    table = [(b, s) for b in range(100) for s in range(b % 7 + 1)]
    queries = 0

    async def run(stmt: str, params: tuple[str, int, int]) -> list[tuple[int, int]]:
        nonlocal queries
        queries += 1
        _video, bound, limit = params
        if stmt == "partitions_desc":
            rows = sorted((r for r in table if r[0] <= bound), key=lambda r: (-r[0], r[1]))
        else:
            rows = sorted((r for r in table if r[0] >= bound), key=lambda r: (r[0], -r[1]))
        return rows[:limit]

    index = _PartitionIndex(run, "v", descending, 10**6 if descending else -1)  # type: ignore[arg-type]
    first = await index.take(1, 32)
    assert queries == 1
    want_first = 99 if descending else 0
    assert first == [(want_first, s) for s in sorted({s for b, s in table if b == want_first}, reverse=not descending)]
    got = list(first)
    width = 2
    while batch := await index.take(width, 32):
        assert len({b for b, _ in batch}) <= width
        assert len(batch) <= 32 or len({b for b, _ in batch}) == 1
        got.extend(batch)
        width *= 2
    assert sorted(got) == sorted(table)
    buckets = [b for b, _ in got]
    assert buckets == sorted(buckets, reverse=descending)
    assert queries < 10


async def test_scatter_errors_surface_as_one_store_unavailable() -> None:
    async def down() -> None:
        await trio.lowlevel.checkpoint()
        raise StoreUnavailable("node down")

    async def fine() -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(StoreUnavailable, match="node down"):
        await _gather([down, fine, down])
    with pytest.raises(StoreUnavailable):
        await _gather([down])

    async def bug() -> None:
        raise KeyError("bug")

    with pytest.raises(BaseExceptionGroup) as info:  # a bug is not an outage
        await _gather([down, bug])
    assert info.group_contains(KeyError)


def test_small_parsers() -> None:
    assert parse_hosts(["a:1", " b ", "[::1]:9043", "[::1]"]) == [("a", 1), ("b", 9042), ("::1", 9043), ("::1", 9042)]
    with pytest.raises(ValueError):
        parse_hosts([""])
    assert consistency_level("local_quorum") == consistency_level("LOCAL_QUORUM")
    with pytest.raises(ValueError):
        consistency_level("MOST")
    assert split_statements("-- c\nCREATE a (x int);\n\n-- d\nCREATE b;\n") == ["CREATE a (x int)", "CREATE b"]
    with pytest.raises(ValueError):
        ScyllaStore(["h"], "bad-name")


class _Rows(list[tuple[Any, ...]]):
    def one(self) -> tuple[Any, ...] | None:
        return self[0] if self else None


class _RecordingCluster:
    """Stands in for the driver's Cluster in ``migrate``: records every statement."""

    def __init__(self, ttl_s: int) -> None:
        self.statements: list[str] = []
        self.ttl_s = ttl_s

    def connect(self) -> _RecordingCluster:
        return self

    def set_keyspace(self, keyspace: str) -> None:
        self.statements.append(f"USE {keyspace}")

    def execute(self, statement: str, params: Any = None) -> _Rows:
        self.statements.append(statement)
        return _Rows([(self.ttl_s,)]) if "default_time_to_live FROM system_schema" in statement else _Rows()

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize(
    ("env", "flags", "factor"),
    [({}, [], 1), ({"LIVECOMMENTS_SCYLLA_REPLICATION": "3"}, [], 3), ({}, ["--scylla-replication", "5"], 5)],
)
def test_db_migrate_creates_the_keyspace_with_the_configured_replication(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], flags: list[str], factor: int
) -> None:
    from adapters.scylla import store as scylla
    from livecomments import cli

    fake = _RecordingCluster(ttl_s=3600)
    monkeypatch.setattr(scylla, "_make_cluster", lambda *a, **kw: fake)
    monkeypatch.delenv("LIVECOMMENTS_SCYLLA_REPLICATION", raising=False)
    for name, value in {"LIVECOMMENTS_SCYLLA_KEYSPACE": "lc_rf", "LIVECOMMENTS_COMMENT_TTL_S": "3600", **env}.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["db", "migrate", *flags]) == 0
    [create] = [s for s in fake.statements if s.startswith("CREATE KEYSPACE")]
    assert create == (
        "CREATE KEYSPACE IF NOT EXISTS lc_rf WITH replication = "
        f"{{'class': 'SimpleStrategy', 'replication_factor': {factor}}} AND durable_writes = true"
    )


def test_db_migrate_refuses_a_replication_factor_below_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from livecomments import cli

    monkeypatch.setenv("LIVECOMMENTS_SCYLLA_REPLICATION", "0")
    assert cli.main(["db", "migrate"]) == 2


# -- against the CQL server ------------------------------------------------------------------


def raw_rows(cql: CqlTarget, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    cluster = _make_cluster(parse_hosts(cql.hosts), consistency=consistency_level("ONE"))
    try:
        session = cluster.connect(cql.keyspace)
        return [tuple(r) for r in session.execute(query, params)]
    finally:
        cluster.shutdown()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_hot_video_writes_across_shards_and_reads_merge(cql: CqlTarget, comments: Comments) -> None:
    clock = FakeClock()
    thresholds = ShardingThresholds(hot_velocity=1e9, cool_velocity=1e9, hot_viewers=100, cool_viewers=50, min_hot_s=5)
    v = comments.video_id
    comments.step_ms = 1_500  # 40 comments a minute: several buckets of one minute
    async with ScyllaStore.open(cql.hosts, cql.keyspace, bucket_s=TEST_BUCKET_S, shards=4, thresholds=thresholds, clock=clock) as store:
        cold1 = [comments.make(f"cold {i}") for i in range(30)]
        for c in cold1:
            await store.append(c)
        assert store.note_viewers(v, 5000)
        hot = [comments.make(f"hot {i}") for i in range(200)]
        for c in hot:
            await store.append(c)
        clock.now = 10.0
        assert not store.note_viewers(v, 10)
        cold2 = [comments.make(f"cold again {i}") for i in range(30)]
        for c in cold2:
            await store.append(c)
        made = cold1 + hot + cold2

        # The layout on disk: hot comments spread over four shards, the rest on shard 0.
        rows = await trio.to_thread.run_sync(
            raw_rows, cql, "SELECT bucket, shard FROM comment_partitions WHERE video_id = %s", (v,)
        )
        by_bucket: dict[int, set[int]] = collections.defaultdict(set)
        for b, s in rows:
            by_bucket[b].add(s)
        assert {b for b in by_bucket} == {bucket_of(c.id, TEST_BUCKET_S * 1000) for c in made}
        assert set().union(*by_bucket.values()) == {0, 1, 2, 3}
        assert any(len(s) == 4 for s in by_bucket.values())
        for c in hot:
            stored = await trio.to_thread.run_sync(
                raw_rows,
                cql,
                "SELECT shard FROM comments WHERE video_id = %s AND bucket = %s AND shard = %s AND comment_id = %s",
                (v, bucket_of(c.id, TEST_BUCKET_S * 1000), shard_for(c.id, 4), c.id),
            )
            assert stored, "hot comment not in its shard"
            break

        # Reads merge every shard in id order; pages cross the shard changes cleanly.
        assert await store.latest(v, 300) == made
        assert await store.latest(v, 45) == made[-45:]
        for page_size in (7, 50):
            seen: list[Comment] = []
            cursor: int | None = None
            while page := await store.before(v, cursor, page_size):
                seen.extend(page)
                cursor = page[-1].id
            assert seen == made[::-1]
            forward: list[Comment] = []
            last = 0
            while page := await store.after(v, last, page_size):
                forward.extend(page)
                last = page[-1].id
            assert forward == made
        # Tombstones and get find a comment whichever shard it is in.
        victim = hot[77]
        assert await store.get(v, victim.id) == victim
        assert await store.remove(v, victim.id)
        assert await store.get(v, victim.id) is None
        assert victim not in await store.latest(v, 300)

    # Another writer process with another shard count, reading the same video: the
    # recorded partitions tell it where to look.
    async with ScyllaStore.open(cql.hosts, cql.keyspace, bucket_s=TEST_BUCKET_S, shards=16) as other:
        assert await other.latest(v, 300) == [c for c in made if c.id != victim.id]


async def test_a_retry_across_a_shard_switch_reads_once_and_removes_everywhere(
    cql: CqlTarget, comments: Comments
) -> None:
    clock = FakeClock()
    thresholds = ShardingThresholds(hot_velocity=1e9, cool_velocity=1e9, hot_viewers=100, cool_viewers=50, min_hot_s=0)
    v = comments.video_id
    async with ScyllaStore.open(cql.hosts, cql.keyspace, bucket_s=TEST_BUCKET_S, shards=8, thresholds=thresholds, clock=clock) as store:
        before, dup, after = comments.make("before"), comments.make("dup"), comments.make("after")
        await store.append(before)
        await store.append(dup)  # cold: shard 0
        store.note_viewers(v, 1000)
        while shard_for(dup.id, 8) == 0:  # make sure the retry lands elsewhere
            dup = comments.make("dup")
            store.note_viewers(v, 0)
            await store.append(dup)
            store.note_viewers(v, 1000)
        await store.append(dup)  # hot now: a second copy in shard_for(dup.id, 8)
        await store.append(after)
        got = await store.latest(v, 10)
        assert [c.id for c in got] == sorted({c.id for c in got})
        assert dup in got and before in got and after in got
        assert await store.remove(v, dup.id) is True
        assert await store.get(v, dup.id) is None
        assert dup not in await store.latest(v, 10)
        assert await store.remove(v, dup.id) is False


async def test_rows_carry_the_configured_ttl(cql: CqlTarget, comments: Comments) -> None:
    async with ScyllaStore.open(cql.hosts, cql.keyspace, bucket_s=TEST_BUCKET_S, ttl_s=3600) as store:
        c = comments.make("short-lived")
        await store.append(c)
    rows = await trio.to_thread.run_sync(
        raw_rows,
        cql,
        "SELECT TTL(text) FROM comments WHERE video_id = %s AND bucket = %s AND shard = 0 AND comment_id = %s",
        (c.video_id, bucket_of(c.id, TEST_BUCKET_S * 1000), c.id),
    )
    assert 3500 < rows[0][0] <= 3600


async def test_migrate_is_idempotent_and_applies_a_new_ttl(cql: CqlTarget) -> None:
    keyspace = cql.keyspace + "_mig"
    try:
        first = await migrate(cql.hosts, keyspace, 7200)
        assert first.applied == ("001_comments.cql",) and not first.ttl_changed
        again = await migrate(cql.hosts, keyspace, 7200)
        assert again.applied == () and again.skipped == ("001_comments.cql",) and not again.ttl_changed
        changed = await migrate(cql.hosts, keyspace, 86400)
        assert changed.ttl_changed
        target = CqlTarget(hosts=cql.hosts, keyspace=keyspace, server=cql.server)
        rows = await trio.to_thread.run_sync(
            raw_rows,
            target,
            "SELECT default_time_to_live FROM system_schema.tables WHERE keyspace_name = %s AND table_name = 'comments'",
            (keyspace,),
        )
        assert rows == [(86400,)]
    finally:
        await drop_keyspace(cql.hosts, keyspace)


async def test_queries_do_not_block_the_trio_loop(cql: CqlTarget, comments: Comments) -> None:
    """200 appends started at once overlap (a blocking driver call would run them one by
    one), and a ticker task keeps running meanwhile."""
    ticks = 0
    in_flight = 0
    most_in_flight = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.001)
            ticks += 1

    async with ScyllaStore.open(cql.hosts, cql.keyspace, bucket_s=TEST_BUCKET_S) as store:
        made = [comments.make(f"c{i}", step_ms=5) for i in range(200)]
        await store.append(made[0])  # the partition map row: written once, first

        async def put(c: Comment) -> None:
            nonlocal in_flight, most_in_flight
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
            try:
                await store.append(c)
            finally:
                in_flight -= 1

        async with trio.open_nursery() as outer:
            outer.start_soon(ticker)
            async with trio.open_nursery() as nursery:
                for c in made[1:]:
                    nursery.start_soon(put, c)
            outer.cancel_scope.cancel()
        assert await store.latest(comments.video_id, 500) == made
    assert most_in_flight >= 50
    assert ticks >= 5


async def test_unreachable_cluster_is_store_unavailable() -> None:
    port = _closed_port()
    store = ScyllaStore([f"127.0.0.1:{port}"], "nowhere", connect_timeout_s=1.0)
    with pytest.raises(StoreUnavailable):
        await store.connect()
    with pytest.raises(StoreUnavailable):
        await store.append(Comments("v").make())


async def test_an_unmigrated_keyspace_is_a_clear_error(cql: CqlTarget) -> None:
    with pytest.raises(RuntimeError, match="db migrate"):
        await ScyllaStore(cql.hosts, cql.keyspace + "_never_migrated").connect()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- outage: kill -9 the CQL server while posting ----------------------------------------------


@pytest.fixture
def killable(cql: CqlTarget) -> Iterator[CqlTarget]:
    if cql.server is None:
        pytest.skip(f"an external cluster ({cql.hosts}) is not ours to kill")
    yield cql
    if not cql.server.running():  # leave it up for the rest of the session, whatever happened
        cql.server.restart()


async def test_kill_9_maps_to_store_unavailable_and_loses_nothing_acknowledged(
    killable: CqlTarget, video: str
) -> None:
    server = killable.server
    assert server is not None
    gen = SnowflakeGenerator(worker=9)
    acked: list[Comment] = []
    failed: list[Comment] = []
    errors: collections.Counter[str] = collections.Counter()
    stop = trio.Event()
    enough_acked = trio.Event()
    enough_failed = trio.Event()
    n = 0

    def make() -> Comment:
        nonlocal n
        n += 1
        now = int(time.time() * 1000)
        return Comment(
            id=gen.next_id(now), video_id=video, author=Author("poster", "Poster"), text=f"#{n}", created_at=now
        )

    async with ScyllaStore.open(
        killable.hosts, killable.keyspace, bucket_s=TEST_BUCKET_S, request_timeout_s=2.0, max_reconnect_delay_s=1.0
    ) as store:

        async def poster() -> None:
            while not stop.is_set():
                c = make()
                try:
                    await store.append(c)
                except StoreUnavailable as e:  # anything else fails the test
                    failed.append(c)
                    errors[type(e.__cause__).__name__] += 1
                    if len(failed) >= 20:
                        enough_failed.set()
                    await trio.sleep(0.02)
                else:
                    acked.append(c)
                    if len(acked) >= 300:
                        enough_acked.set()

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(poster)
                await enough_acked.wait()
                await trio.to_thread.run_sync(server.kill9)
                acked_at_kill = len(acked)
                await enough_failed.wait()
                stop.set()
            # Reads fail the same way while it is down.
            with pytest.raises(StoreUnavailable):
                await store.latest(video, 10)
            with pytest.raises(StoreUnavailable):
                await store.remove(video, acked[0].id)
            assert len(acked) - acked_at_kill <= 4  # only writes in flight at the kill
            await trio.to_thread.run_sync(server.restart)
            # The driver finds the node again by itself (reconnection policy: <= 1 s here).
            while True:
                try:
                    await store.latest(video, 1)
                    break
                except StoreUnavailable:
                    await trio.sleep(0.2)

        stored = {c.id: c for c in await store.after(video, 0, 100_000)}
        missing = [c for c in acked if stored.get(c.id) != c]
        assert not missing, f"{len(missing)} acknowledged comments lost"
        # What failed is retried (appends are idempotent) and lands too.
        for c in failed:
            await store.append(c)
        assert await store.after(video, 0, 100_000) == sorted(acked + failed, key=lambda c: c.id)
    print(f"\nkill -9 after {acked_at_kill} acks; {len(failed)} StoreUnavailable ({dict(errors)}); restart {server.started_in_s:.1f} s")
