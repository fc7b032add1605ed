"""The Scylla (CQL) comment store: time-bucketed, suffix-sharded partitions.

Layout (``store/cql/*.cql``, docs/storage.md): a comment lives in partition
``(video_id, bucket, shard)``, clustered by ``comment_id DESC``. ``bucket`` is the start of
the time bucket that the comment id's Snowflake time falls in; ``shard`` is 0 for an
ordinary video and ``shard_for(id, N)`` while the video is hot. ``comment_partitions``
records which (bucket, shard) partitions a video used, and every read starts there: it
scatters over those partitions in parallel, newest buckets first, and merges by id.
Cursors are comment ids, so a page boundary stays correct whatever the shard layout was
when each comment was written.

Driver calls run on scylla-driver's own I/O thread (``execute_async``); their callbacks
hand results back to Trio with ``TrioToken.run_sync_soon``, so the Trio loop never blocks.
Outage-type errors (no host, timeouts, unavailable, overloaded) become
``StoreUnavailable``; anything else (a bad query) propagates as a bug.
"""

from __future__ import annotations

import functools
import hashlib
import string
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import attrs
import trio
from cassandra import (
    ConsistencyLevel,
    CoordinationFailure,
    InvalidRequest,
    OperationTimedOut,
    Timeout,
    Unavailable,
)
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import (
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
)
from cassandra.query import BatchStatement, BatchType, tuple_factory

from domain.ids import snowflake_ms
from domain.model import Author, Comment, shown_to
from domain.ports import StoreUnavailable
from policy.shards import HotVideos, ShardingThresholds

DEFAULT_TTL_S = 14 * 86400
DEFAULT_BUCKET_S = 600
DEFAULT_SHARDS = 8
# Largest partition list one read looks at: 14 days of 10-minute buckets is 2,016 rows for
# an ordinary video; a video that was hot the whole time has N rows per bucket.
MAX_PARTITIONS_SCANNED = 20_000
# Partitions a read queries at once when it walks back over buckets (whole buckets only).
READ_FANOUT = 32
_MAX_BIGINT = 2**63 - 1
# How often a writer rewrites a partition's row in comment_partitions while it writes there.
RECORD_REFRESH_S = 3600.0
# ``append_many``: one partition's rows go in UNLOGGED batches of at most this many rows and
# about this many bytes (Cassandra warns above 5 KiB per batch by default, refuses above
# 50 KiB; a batch is for rows of one partition, which it writes as one mutation), with at
# most this many requests in flight.
BATCH_ROWS = 16
BATCH_BYTES = 4096
WRITES_IN_FLIGHT = 32

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    Timeout,
    CoordinationFailure,
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    ServerError,
    OSError,
)

_COLUMNS = (
    "comment_id, author_id, author_name, author_verified, text, created_at, "
    "client_id, shadow, streamer, removed"
)
_KEYSPACE_RE_CHARS = frozenset(string.ascii_letters + string.digits + "_")


# -- pure helpers ------------------------------------------------------------------------------


def bucket_of(comment_id: int, bucket_ms: int) -> int:
    """The start (Unix ms) of the time bucket holding ``comment_id``."""
    ms = snowflake_ms(comment_id)
    return ms - ms % bucket_ms


def shard_for(comment_id: int, shards: int) -> int:
    """The shard a hot video's comment goes to: a hash of its id, modulo ``shards``.

    Not ``comment_id % shards``: a Snowflake's low bits are the per-millisecond sequence,
    mostly 0 below a few thousand comments/s per writer, so that would pile up on shard 0.
    Deterministic, so a retried append lands in the same partition as the first attempt.
    """
    z = (comment_id + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF  # splitmix64 finaliser
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) % shards


def parse_hosts(hosts: Iterable[str], default_port: int = 9042) -> list[tuple[str, int]]:
    """``["10.0.0.1:9042", "db2"]`` -> contact points; ``[::1]:9042`` for IPv6."""
    out: list[tuple[str, int]] = []
    for raw in hosts:
        h = raw.strip()
        if not h:
            continue
        if h.startswith("["):
            addr, _, rest = h[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else default_port
        elif h.count(":") == 1:
            addr, _, p = h.partition(":")
            port = int(p)
        else:
            addr, port = h, default_port
        out.append((addr, port))
    if not out:
        raise ValueError("no CQL hosts given")
    return out


def consistency_level(name: str) -> int:
    """``"LOCAL_QUORUM"`` -> the driver's constant (case-insensitive)."""
    try:
        return int(ConsistencyLevel.name_to_value[name.strip().upper()])
    except KeyError:
        names = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"unknown consistency level {name!r} (one of {names})") from None


def _check_keyspace(keyspace: str) -> None:
    if not keyspace or len(keyspace) > 48 or not keyspace[0].isalpha() or set(keyspace) - _KEYSPACE_RE_CHARS:
        raise ValueError(f"bad keyspace name {keyspace!r}: 1-48 of [A-Za-z0-9_], starting with a letter")


# -- the Trio bridge -----------------------------------------------------------------------


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _UNAVAILABLE)


async def _await_future(start: Callable[[], Any]) -> Any:
    """Run ``start()`` (returns a driver ResponseFuture) and wait for it without blocking Trio.

    The driver calls back on its I/O thread; ``run_sync_soon`` is thread-safe and never
    blocks that thread. If this task is cancelled the request still completes in the
    driver; its result is dropped.
    """
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    box: list[tuple[bool, Any]] = []

    def deliver(ok: bool, value: Any) -> None:
        box.append((ok, value))
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass

    try:
        future = start()
    except Exception as e:
        if _is_unavailable(e):
            raise StoreUnavailable(f"CQL: {e!r}") from e
        raise
    future.add_callbacks(lambda rows: deliver(True, rows), lambda exc: deliver(False, exc))
    await done.wait()
    ok, value = box[0]
    if ok:
        return value
    if _is_unavailable(value):
        raise StoreUnavailable(f"CQL: {value!r}") from value
    raise value


async def _gather(tasks: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run ``tasks`` concurrently (one alone runs inline).

    Several outage errors from the scatter become one ``StoreUnavailable``, not an
    exception group, so callers see the same error whether one query or eight failed.
    """
    if len(tasks) == 1:
        await tasks[0]()
        return
    try:
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(task)
    except BaseExceptionGroup as group:
        unavailable, rest = group.split(StoreUnavailable)
        if rest is None and unavailable is not None:
            first = unavailable.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise StoreUnavailable(str(first)) from group
        raise


# -- reading ------------------------------------------------------------------------------


@attrs.define
class _Row:
    comment_id: int
    author_id: str
    author_name: str
    author_verified: bool
    text: str
    created_at: int
    client_id: str | None
    shadow: bool
    streamer: bool
    removed: bool

    @classmethod
    def from_tuple(cls, t: Sequence[Any]) -> _Row:
        return cls(
            comment_id=int(t[0]),
            author_id=t[1] or "",
            author_name=t[2] or "",
            author_verified=bool(t[3]),
            text=t[4] or "",
            created_at=int(t[5] or 0),
            client_id=t[6],
            shadow=bool(t[7]),
            streamer=bool(t[8]),
            removed=bool(t[9]),
        )

    def comment(self, video_id: str) -> Comment:
        return Comment(
            id=self.comment_id,
            video_id=video_id,
            author=Author(id=self.author_id, name=self.author_name, verified=self.author_verified),
            text=self.text,
            created_at=self.created_at,
            client_id=self.client_id,
            shadow=self.shadow,
            streamer=self.streamer,
        )


@attrs.define
class _PartitionReader:
    """One partition's rows in read order, fetched a page at a time on demand."""

    bucket: int
    shard: int
    buf: deque[_Row] = attrs.field(factory=deque)
    last_id: int | None = None
    exhausted: bool = False


def _visible(copies: list[_Row], viewer_id: str | None, every_author: bool = False) -> bool:
    # A comment is normally in one partition; a retry that straddled a hot/cold switch can
    # leave a copy in another shard. Removed if any copy is.
    if any(c.removed for c in copies):
        return False
    first = copies[0]
    return shown_to(first.shadow, first.author_id, viewer_id, every_author=every_author)


class _PartitionIndex:
    """Walks a video's ``comment_partitions`` rows a bucket at a time, paging lazily.

    Newest first (``descending``, buckets <= ``bound``) or oldest first (buckets >=
    ``bound``). A page of index rows can end in the middle of a bucket's shard list; that
    bucket is held back and fetched again whole with the next page.
    """

    def __init__(self, run: Callable[[str, Sequence[Any]], Any], video_id: str, descending: bool, bound: int) -> None:
        self._run = run
        self._video_id = video_id
        self._descending = descending
        self._bound = bound
        self._page = 64  # most reads need one or two buckets: start small
        self._buckets: deque[tuple[int, list[int]]] = deque()
        self._done = False
        self.scanned = 0

    async def take(self, max_buckets: int, max_partitions: int) -> list[tuple[int, int]]:
        """The next whole buckets' (bucket, shard) pairs: at least one bucket if any are left,
        at most ``max_buckets``, and no more than ``max_partitions`` pairs unless the first
        bucket alone has more."""
        out: list[tuple[int, int]] = []
        taken = 0
        while taken < max_buckets:
            if not self._buckets and not await self._fetch():
                break
            bucket, shards = self._buckets[0]
            if out and len(out) + len(shards) > max_partitions:
                break
            self._buckets.popleft()
            out.extend((bucket, s) for s in shards)
            taken += 1
        return out

    async def _fetch(self) -> bool:
        while not self._done and not self._buckets:
            if self.scanned >= MAX_PARTITIONS_SCANNED:
                self._done = True
                break
            stmt = "partitions_desc" if self._descending else "partitions_asc"
            rows = [(int(b), int(s)) for b, s in await self._run(stmt, (self._video_id, self._bound, self._page))]
            full = len(rows) == self._page
            groups: list[tuple[int, list[int]]] = []
            for b, s in rows:
                if groups and groups[-1][0] == b:
                    groups[-1][1].append(s)
                else:
                    groups.append((b, [s]))
            if full:
                if len(groups) == 1:
                    # One bucket filled the whole page: ask again for more rows at once.
                    self._page *= 4
                    continue
                # The last bucket may be cut short: fetch it again, whole, next time.
                self._bound = groups.pop()[0]
            else:
                self._done = True
            self._buckets.extend(groups)
            self.scanned += sum(len(g[1]) for g in groups)
            self._page = min(self._page * 4, 4096)
        return bool(self._buckets)


# -- the store ----------------------------------------------------------------------------


class ScyllaStore:
    """The ``Store`` protocol on Scylla/Cassandra. ``await connect()`` first, ``aclose()`` last.

    ``hosts``: contact points as ``"host:port"``. ``bucket_s`` must stay the same for the
    life of a keyspace (it decides which partition an id lives in). ``shards`` is N for
    hot videos. ``ttl_s`` is the comments' TTL (the table default set by ``migrate``; used
    here to expire the partition map a bucket later than the comments).
    """

    def __init__(
        self,
        hosts: Sequence[str],
        keyspace: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        consistency: str = "LOCAL_QUORUM",
        bucket_s: int = DEFAULT_BUCKET_S,
        shards: int = DEFAULT_SHARDS,
        thresholds: ShardingThresholds | None = None,
        local_dc: str | None = None,
        request_timeout_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        max_reconnect_delay_s: float = 10.0,
        read_fanout: int = READ_FANOUT,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        _check_keyspace(keyspace)
        if bucket_s < 1 or shards < 1 or read_fanout < 1:
            raise ValueError("bucket_s, shards and read_fanout must be positive")
        self.hosts = parse_hosts(hosts)
        self.keyspace = keyspace
        self.ttl_s = ttl_s
        self.consistency = consistency_level(consistency)
        self.bucket_ms = bucket_s * 1000
        self.shards = shards
        self.hot = HotVideos(thresholds or ShardingThresholds())
        self._local_dc = local_dc
        self._request_timeout_s = request_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_reconnect_delay_s = max_reconnect_delay_s
        self._read_fanout = read_fanout
        self._clock = clock
        self._cluster: Any = None
        self._session: Any = None
        self._stmts: dict[str, Any] = {}
        # (video, bucket, shard) -> when this process last wrote its comment_partitions row.
        self._recorded: dict[tuple[str, int, int], float] = {}
        self._next_sweep = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the driver session and prepare statements (the schema must be migrated)."""
        if self._session is not None:
            return
        cluster, session, stmts = await trio.to_thread.run_sync(self._connect_sync)
        self._cluster, self._session, self._stmts = cluster, session, stmts

    @classmethod
    @asynccontextmanager
    async def open(cls, hosts: Sequence[str], keyspace: str, **kw: Any) -> AsyncIterator[ScyllaStore]:
        """``async with ScyllaStore.open(hosts, keyspace, ...) as store:`` connects and closes."""
        store = cls(hosts, keyspace, **kw)
        await store.connect()
        try:
            yield store
        finally:
            await store.aclose()

    async def aclose(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await trio.to_thread.run_sync(cluster.shutdown)

    async def __aenter__(self) -> ScyllaStore:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _connect_sync(self) -> tuple[Any, Any, dict[str, Any]]:
        cluster = _make_cluster(
            self.hosts,
            consistency=self.consistency,
            local_dc=self._local_dc,
            request_timeout_s=self._request_timeout_s,
            connect_timeout_s=self._connect_timeout_s,
            max_reconnect_delay_s=self._max_reconnect_delay_s,
        )
        try:
            session = cluster.connect()
            if self.keyspace not in cluster.metadata.keyspaces:
                raise InvalidRequest(f"keyspace {self.keyspace} does not exist")
            session.set_keyspace(self.keyspace)
            stmts = {name: session.prepare(cql) for name, cql in _STATEMENTS.items()}
        except BaseException as e:
            cluster.shutdown()
            if _is_unavailable(e):
                raise StoreUnavailable(f"CQL connect: {e!r}") from e
            if isinstance(e, InvalidRequest):
                raise RuntimeError(
                    f"CQL keyspace {self.keyspace!r} is missing or not migrated (run `livecomments db migrate`): {e}"
                ) from e
            raise
        for stmt in stmts.values():
            # Every write here is idempotent (fixed write timestamps or pure upserts), so the
            # driver may retry any of them.
            stmt.is_idempotent = True
            stmt.fetch_size = None  # reads carry their own LIMIT; one page, one callback
        return cluster, session, stmts

    async def _run(self, name: str, params: Sequence[Any]) -> Any:
        session = self._session
        if session is None:
            raise StoreUnavailable("CQL store is not connected")
        stmt = self._stmts[name]
        return await _await_future(lambda: session.execute_async(stmt, params))

    # -- sharding inputs ---------------------------------------------------------------------
    def note_viewers(self, video_id: str, viewers: int) -> bool:
        """Feed the video's total viewers (all nodes) into the sharding switch."""
        return self.hot.observe_viewers(video_id, viewers, self._clock())

    # -- writes ------------------------------------------------------------------------------
    async def append(self, comment: Comment) -> None:
        now = self._clock()
        if now >= self._next_sweep:
            self.hot.sweep(now, idle_s=600.0)
            self._next_sweep = now + 60.0
        hot = self.hot.observe_comment(comment.video_id, now)
        bucket = bucket_of(comment.id, self.bucket_ms)
        shard = shard_for(comment.id, self.shards) if hot else 0
        await self._record_partition(comment.video_id, bucket, shard, now)
        await self._run("insert", _insert_params(comment, bucket, shard))

    async def append_many(self, comments: Sequence[Comment]) -> None:
        """The batch grouped by partition; each partition's rows in UNLOGGED batches (one
        mutation of one partition each, never a batch across partitions), the batches
        sent concurrently after the partitions are recorded. Every statement is bound
        before anything is sent, so a comment the driver cannot encode fails the call
        with nothing written; an outage may leave some batches written, and a retry
        rewrites them as no-ops (fixed write timestamps)."""
        if not comments:
            return
        now = self._clock()
        if now >= self._next_sweep:
            self.hot.sweep(now, idle_s=600.0)
            self._next_sweep = now + 60.0
        parts: dict[tuple[str, int, int], list[Comment]] = {}
        for c in comments:
            hot = self.hot.observe_comment(c.video_id, now)
            bucket = bucket_of(c.id, self.bucket_ms)
            parts.setdefault((c.video_id, bucket, shard_for(c.id, self.shards) if hot else 0), []).append(c)
        stmt = self._stmts.get("insert")
        if stmt is None or self._session is None:
            raise StoreUnavailable("CQL store is not connected")
        requests: list[Any] = []
        for (_video, bucket, shard), rows in parts.items():
            for chunk in batch_chunks(rows, BATCH_ROWS, BATCH_BYTES):
                bound = [stmt.bind(_insert_params(c, bucket, shard)) for c in chunk]
                if len(bound) == 1:
                    requests.append(bound[0])
                    continue
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for b in bound:
                    batch.add(b)
                batch.is_idempotent = True
                requests.append(batch)
        await _gather(
            [functools.partial(self._record_partition, v, b, s, now) for v, b, s in parts]
        )
        limiter = trio.CapacityLimiter(WRITES_IN_FLIGHT)

        async def send(request: Any) -> None:
            async with limiter:
                await self._execute(request)

        await _gather([functools.partial(send, r) for r in requests])

    async def _execute(self, statement: Any) -> Any:
        session = self._session
        if session is None:
            raise StoreUnavailable("CQL store is not connected")
        return await _await_future(lambda: session.execute_async(statement))

    async def _record_partition(self, video_id: str, bucket: int, shard: int, now: float) -> None:
        """Write the partition-map row before the partition's first comment (from this
        process), so no reader misses a partition that holds an acknowledged comment.

        The row's TTL is the comments' TTL plus a bucket plus an hour, and it is rewritten
        at least hourly while the partition takes writes, so it outlives every comment in
        the partition, even one written late (a persist worker catching up).
        """
        key = (video_id, bucket, shard)
        last = self._recorded.get(key)
        if last is not None and now - last < RECORD_REFRESH_S:
            return
        ttl = self.ttl_s + self.bucket_ms // 1000 + int(RECORD_REFRESH_S) if self.ttl_s > 0 else 0
        await self._run("record_partition", (video_id, bucket, shard, ttl))
        if len(self._recorded) >= 100_000:
            self._recorded.clear()  # re-recording is an idempotent write
        self._recorded[key] = now

    async def remove(self, video_id: str, comment_id: int) -> bool:
        copies = await self._find(video_id, comment_id)
        if not copies:
            return False
        was_visible = not any(row.removed for _shard, row in copies)
        ts = max(time.time_ns() // 1000, _write_timestamp(comment_id) + 1)
        bucket = bucket_of(comment_id, self.bucket_ms)
        await _gather(
            [
                functools.partial(self._run, "remove", (ts, video_id, bucket, shard, comment_id))
                for shard, row in copies
                if not row.removed
            ]
        )
        return was_visible

    # -- reads -------------------------------------------------------------------------------
    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        copies = await self._find(video_id, comment_id)
        rows = [row for _shard, row in copies]
        if not rows or any(r.removed for r in rows):
            return None
        return rows[0].comment(video_id)

    async def latest(
        self, video_id: str, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        page = await self.before(video_id, None, limit, viewer_id, every_author=every_author)
        page.reverse()
        return page

    async def before(
        self,
        video_id: str,
        before_id: int | None,
        limit: int,
        viewer_id: str | None = None,
        *,
        every_author: bool = False,
    ) -> list[Comment]:
        if limit <= 0 or (before_id is not None and before_id <= 0):
            return []
        if before_id is not None:
            before_id = min(before_id, _MAX_BIGINT)
        upto = bucket_of(before_id, self.bucket_ms) if before_id is not None else _MAX_BIGINT
        index = _PartitionIndex(self._run, video_id, True, upto)
        return await self._scan(video_id, index, before_id, limit, viewer_id, every_author, descending=True)

    async def after(
        self, video_id: str, after_id: int, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        if limit <= 0:
            return []
        if after_id >= _MAX_BIGINT:
            return []
        after_id = max(after_id, -1)
        start = bucket_of(after_id, self.bucket_ms) if after_id > 0 else -_MAX_BIGINT
        index = _PartitionIndex(self._run, video_id, False, start)
        return await self._scan(video_id, index, after_id, limit, viewer_id, every_author, descending=False)

    async def _find(self, video_id: str, comment_id: int) -> list[tuple[int, _Row]]:
        """Every stored copy of one comment (normally one): (shard, row)."""
        bucket = bucket_of(comment_id, self.bucket_ms)
        shard_rows = await self._run("partition_shards", (video_id, bucket))
        shards = sorted({int(r[0]) for r in shard_rows})
        found: list[tuple[int, _Row]] = []

        async def one(shard: int) -> None:
            rows = await self._run("get", (video_id, bucket, shard, comment_id))
            found.extend((shard, _Row.from_tuple(r)) for r in rows)

        await _gather([functools.partial(one, shard) for shard in shards])
        found.sort(key=lambda x: x[0])
        return found

    async def _scan(
        self,
        video_id: str,
        index: _PartitionIndex,
        cursor: int | None,
        limit: int,
        viewer_id: str | None,
        every_author: bool,
        *,
        descending: bool,
    ) -> list[Comment]:
        """k-way merge over partitions, newest (or oldest) buckets first.

        Buckets are disjoint id ranges, so each batch of whole buckets is merged on its own
        and the batches are concatenated. The first batch is one bucket (a busy video fills
        its page there); each next batch takes twice as many buckets, up to
        ``read_fanout`` partitions, so a sparse video's page costs a few round trips, not
        one per bucket.
        """
        out: list[Comment] = []
        width = 1
        while len(out) < limit:
            batch = await index.take(width, self._read_fanout)
            if not batch:
                break
            readers = [_PartitionReader(bucket=b, shard=s) for b, s in batch]
            await self._scan_batch(video_id, readers, cursor, limit, viewer_id, every_author, descending, out)
            width *= 2
        return out

    async def _scan_batch(
        self,
        video_id: str,
        readers: list[_PartitionReader],
        cursor: int | None,
        limit: int,
        viewer_id: str | None,
        every_author: bool,
        descending: bool,
        out: list[Comment],
    ) -> None:
        async def refill(r: _PartitionReader) -> None:
            # Ask for what the page still needs: rows hidden from this viewer (shadow,
            # removed) are why a partition may be asked twice.
            want = max(limit - len(out), 1) + 4
            bound = r.last_id if r.last_id is not None else cursor
            if descending:
                if bound is None:
                    rows = await self._run("page_newest", (video_id, r.bucket, r.shard, want))
                else:
                    rows = await self._run("page_before", (video_id, r.bucket, r.shard, bound, want))
            else:
                rows = await self._run("page_after", (video_id, r.bucket, r.shard, bound, want))
            got = [_Row.from_tuple(t) for t in rows]
            r.buf.extend(got)
            if got:
                r.last_id = got[-1].comment_id
            if len(got) < want:
                r.exhausted = True

        async def refill_empty() -> None:
            empty = [r for r in readers if not r.buf and not r.exhausted]
            if empty:
                await _gather([functools.partial(refill, r) for r in empty])

        await refill_empty()
        pick = max if descending else min
        while len(out) < limit:
            live = [r for r in readers if r.buf]
            if not live:
                return
            top = pick(r.buf[0].comment_id for r in live)
            copies = [r.buf.popleft() for r in live if r.buf[0].comment_id == top]
            if _visible(copies, viewer_id, every_author):
                out.append(copies[0].comment(video_id))
            if any(not r.buf and not r.exhausted for r in live):
                await refill_empty()


def _insert_params(comment: Comment, bucket: int, shard: int) -> tuple[Any, ...]:
    """The ``insert`` statement's parameters for one comment."""
    a = comment.author
    return (
        comment.video_id, bucket, shard, comment.id,
        a.id, a.name, a.verified, comment.text, comment.created_at,
        comment.client_id, comment.shadow, comment.streamer,
        _write_timestamp(comment.id),
    )  # fmt: skip


def batch_chunks(rows: Sequence[Comment], max_rows: int, max_bytes: int) -> list[list[Comment]]:
    """``rows`` in order, cut into runs of at most ``max_rows`` rows and about ``max_bytes``
    (a row's text, author and client id in UTF-8, plus 48 for the other columns); a row
    larger than ``max_bytes`` alone is a run of its own."""
    if max_rows < 1:
        raise ValueError("max_rows must be positive")
    out: list[list[Comment]] = []
    run: list[Comment] = []
    size = 0
    for c in rows:
        n = len(c.text.encode()) + len(c.author.id.encode()) + len(c.author.name.encode())
        n += len((c.client_id or "").encode()) + 48
        if run and (len(run) >= max_rows or size + n > max_bytes):
            out.append(run)
            run, size = [], 0
        run.append(c)
        size += n
    if run:
        out.append(run)
    return out


def _write_timestamp(comment_id: int) -> int:
    """The CQL write timestamp (µs) of a comment's cells: fixed by its id.

    Re-appending the same comment writes the same cells at the same timestamp (a no-op),
    and a removal, written later with a larger timestamp, always wins over a replay.
    """
    return snowflake_ms(comment_id) * 1000


_SELECT = f"SELECT {_COLUMNS} FROM comments WHERE video_id = ? AND bucket = ? AND shard = ?"
_STATEMENTS: dict[str, str] = {
    "insert": (
        "INSERT INTO comments (video_id, bucket, shard, comment_id, author_id, author_name,"
        " author_verified, text, created_at, client_id, shadow, streamer)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
    ),
    "record_partition": (
        "INSERT INTO comment_partitions (video_id, bucket, shard) VALUES (?, ?, ?) USING TTL ?"
    ),
    "remove": (
        "UPDATE comments USING TIMESTAMP ? SET removed = true"
        " WHERE video_id = ? AND bucket = ? AND shard = ? AND comment_id = ?"
    ),
    "get": _SELECT + " AND comment_id = ?",
    "page_newest": _SELECT + " LIMIT ?",
    "page_before": _SELECT + " AND comment_id < ? LIMIT ?",
    "page_after": _SELECT + " AND comment_id > ? ORDER BY comment_id ASC LIMIT ?",
    "partitions_desc": "SELECT bucket, shard FROM comment_partitions WHERE video_id = ? AND bucket <= ? LIMIT ?",
    "partitions_asc": (
        "SELECT bucket, shard FROM comment_partitions WHERE video_id = ? AND bucket >= ?"
        " ORDER BY bucket ASC, shard DESC LIMIT ?"
    ),
    "partition_shards": "SELECT shard FROM comment_partitions WHERE video_id = ? AND bucket = ?",
}


def _make_cluster(
    hosts: list[tuple[str, int]],
    *,
    consistency: int,
    local_dc: str | None = None,
    request_timeout_s: float = 5.0,
    connect_timeout_s: float = 5.0,
    max_reconnect_delay_s: float = 10.0,
) -> Any:
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=local_dc)),
        consistency_level=consistency,
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        request_timeout=request_timeout_s,
        row_factory=tuple_factory,
    )
    return Cluster(
        contact_points=hosts,
        # Peers found through system tables get this port (Cassandra does not publish it).
        port=hosts[0][1],
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=connect_timeout_s,
        control_connection_timeout=connect_timeout_s,
        # After an outage, find the node again within seconds, not the default 10 minutes.
        reconnection_policy=ExponentialReconnectionPolicy(0.5, max_reconnect_delay_s),
    )


# -- migrations -----------------------------------------------------------------------------


@attrs.frozen
class MigrationReport:
    keyspace: str
    applied: tuple[str, ...]
    skipped: tuple[str, ...]
    ttl_changed: bool


def schema_files() -> list[tuple[str, str]]:
    """The CQL files shipped in ``livecomments/store/cql``, in order: (name, text)."""
    root = resources.files("adapters.scylla") / "cql"
    files = sorted((p.name, p.read_text("utf-8")) for p in root.iterdir() if p.name.endswith(".cql"))
    return files


def split_statements(text: str) -> list[str]:
    """A CQL file -> its statements (full-line ``--`` comments dropped, split on ``;``)."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def replication_for(replication: Mapping[str, int] | int | None) -> str:
    """RF 1 SimpleStrategy by default; an int is SimpleStrategy RF; a mapping is per-DC RF."""
    if replication is None:
        replication = 1
    if isinstance(replication, int):
        if replication < 1:
            raise ValueError(f"replication factor {replication} must be at least 1")
        return f"{{'class': 'SimpleStrategy', 'replication_factor': {int(replication)}}}"
    for dc, rf in replication.items():
        if set(dc) - _KEYSPACE_RE_CHARS - set("-."):
            raise ValueError(f"bad datacenter name {dc!r}")
        if int(rf) < 0:
            raise ValueError(f"replication factor {rf} of {dc!r} must not be negative")
    dcs = ", ".join(f"'{dc}': {int(rf)}" for dc, rf in replication.items())
    return f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"


async def migrate(
    hosts: Sequence[str],
    keyspace: str,
    ttl_s: int = DEFAULT_TTL_S,
    *,
    replication: Mapping[str, int] | int | None = None,
    connect_timeout_s: float = 10.0,
) -> MigrationReport:
    """Create the keyspace and apply the CQL files not applied yet; idempotent.

    Applied files are recorded in ``schema_migrations`` (name, sha256); a recorded file
    whose text changed is an error (add a new file instead). The comments' TTL is the
    configured one after this returns (altered when the configuration changed).
    """
    _check_keyspace(keyspace)
    if ttl_s < 0:
        raise ValueError("ttl_s must be >= 0")
    contact = parse_hosts(hosts)
    clause = replication_for(replication)
    files = schema_files()
    return await trio.to_thread.run_sync(
        lambda: _migrate_sync(contact, keyspace, ttl_s, clause, files, connect_timeout_s)
    )


def _migrate_sync(
    hosts: list[tuple[str, int]],
    keyspace: str,
    ttl_s: int,
    replication: str,
    files: list[tuple[str, str]],
    connect_timeout_s: float,
) -> MigrationReport:
    cluster = _make_cluster(
        hosts,
        consistency=ConsistencyLevel.LOCAL_QUORUM,
        request_timeout_s=60.0,
        connect_timeout_s=connect_timeout_s,
    )
    try:
        try:
            session = cluster.connect()
        except NoHostAvailable as e:
            raise StoreUnavailable(f"CQL connect: {e!r}") from e
        session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication} AND durable_writes = true"
        )
        session.set_keyspace(keyspace)
        session.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, sha256 text, applied_at timestamp)"
        )
        done = {r[0]: r[1] for r in session.execute("SELECT name, sha256 FROM schema_migrations")}
        applied: list[str] = []
        skipped: list[str] = []
        for name, text in files:
            digest = hashlib.sha256(text.encode()).hexdigest()
            if name in done:
                if done[name] != digest:
                    raise RuntimeError(f"{name} changed after it was applied to {keyspace}: add a new file instead")
                skipped.append(name)
                continue
            rendered = string.Template(text).substitute(ttl_s=int(ttl_s))
            for stmt in split_statements(rendered):
                session.execute(stmt)
            session.execute(
                "INSERT INTO schema_migrations (name, sha256, applied_at) VALUES (%s, %s, toTimestamp(now()))",
                (name, digest),
            )
            applied.append(name)
        current = session.execute(
            "SELECT default_time_to_live FROM system_schema.tables WHERE keyspace_name = %s AND table_name = 'comments'",
            (keyspace,),
        ).one()
        ttl_changed = current is not None and int(current[0]) != int(ttl_s)
        if ttl_changed:
            session.execute(f"ALTER TABLE comments WITH default_time_to_live = {int(ttl_s)}")
        return MigrationReport(keyspace, tuple(applied), tuple(skipped), ttl_changed)
    finally:
        cluster.shutdown()
