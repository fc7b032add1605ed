"""The hot/cold path of a cluster against a real CQL server (Cassandra, tests/conftest.py).

- ``test_posting_survives_a_cql_outage_and_everything_lands_after``: a whole cluster
  (``livecomments cluster up`` with ``LIVECOMMENTS_STORE=scylla``) takes posts through its
  edge while the CQL server is killed with SIGKILL and later restarted. Every post is
  answered 201 the whole time (the hot store takes them; the persist worker queues), and
  afterwards every acknowledged comment is in the CQL table exactly once.
- ``test_persist_feeds_viewers_into_the_sharding_switch``: the persist role (in-process,
  real Redis and Cassandra, low thresholds from the settings) spreads the writes of a video
  with many viewers over the shards, from its first comment, and switches a video whose
  audience grows while it is being written.

Both use a keyspace of this module's own, migrated with ``livecomments db migrate``.
"""

from __future__ import annotations

import collections
import functools
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from adapters.redis.hotstore import HotStore
from adapters.redis.keys import Keys
from adapters.redis.presence import Presence
from adapters.scylla.store import ScyllaStore, _make_cluster, consistency_level, parse_hosts, shard_for
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment
from domain.ports import StoreUnavailable
from livecomments import config
from livecomments.cluster_nodes import run_persist
from tests.cluster.conftest import RedisServer
from tests.cluster.harness import ClusterProcess, Poster, wait_for
from tests.conftest import CqlTarget, drop_keyspace


@pytest.fixture(scope="module")
def keyspace(cql: CqlTarget) -> Iterator[str]:
    """A keyspace of this module's own, migrated as an operator would (the CLI)."""
    ks = f"lc_cluster_{secrets.token_hex(4)}"
    env = {
        **os.environ,
        "LIVECOMMENTS_SCYLLA_HOSTS": ",".join(cql.hosts),
        "LIVECOMMENTS_SCYLLA_KEYSPACE": ks,
        "LIVECOMMENTS_COMMENT_TTL_S": "3600",
    }
    out = subprocess.run(
        [sys.executable, "-m", "livecomments", "db", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    yield ks
    if cql.server is None or cql.server.running():
        trio.run(drop_keyspace, cql.hosts, ks)


def raw_rows(hosts: list[str], keyspace: str, video: str) -> list[tuple[int, int, int, bool]]:
    """Every stored copy of the video's comments, tombstoned or not: (id, bucket, shard,
    removed), from the partitions that ``comment_partitions`` lists."""
    cluster = _make_cluster(parse_hosts(hosts), consistency=consistency_level("ONE"), request_timeout_s=20)
    try:
        session = cluster.connect(keyspace)
        parts = list(session.execute("SELECT bucket, shard FROM comment_partitions WHERE video_id = %s", (video,)))
        out: list[tuple[int, int, int, bool]] = []
        for bucket, shard in parts:
            rows = session.execute(
                "SELECT comment_id, removed FROM comments WHERE video_id = %s AND bucket = %s AND shard = %s",
                (video, bucket, shard),
            )
            out.extend((int(cid), int(bucket), int(shard), bool(removed)) for cid, removed in rows)
        return out
    finally:
        cluster.shutdown()


# -- kill -9 the CQL server under a posting cluster ------------------------------------------------


async def test_posting_survives_a_cql_outage_and_everything_lands_after(
    cql: CqlTarget, keyspace: str, redis_server: RedisServer, redis: Any, prefix: str
) -> None:
    server = cql.server
    if server is None:
        pytest.skip(f"an external cluster ({cql.hosts}) is not ours to kill")
    video = "cqloutage"
    stream = Keys(prefix).stream_of(video)
    cluster = ClusterProcess(
        redis_server.url,
        prefix,
        rms=1,
        ingest=1,
        env={
            "LIVECOMMENTS_STORE": "scylla",
            "LIVECOMMENTS_SCYLLA_HOSTS": ",".join(cql.hosts),
            "LIVECOMMENTS_SCYLLA_KEYSPACE": keyspace,
            "LIVECOMMENTS_COMMENT_TTL_S": "3600",
            "LIVECOMMENTS_RATE_LIMIT": "1000/1s",
            "LIVECOMMENTS_SHUTDOWN_GRACE_S": "2",
        },
    )
    t0 = time.monotonic()
    cluster.start()
    times: dict[str, float] = {"cluster up": time.monotonic() - t0}
    ok = False
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http,
            ScyllaStore.open(cql.hosts, keyspace, request_timeout_s=2.0, max_reconnect_delay_s=1.0) as store,
        ):

            async def persisted() -> set[int]:
                try:
                    return {c.id for c in await store.after(video, 0, 100_000)}
                except StoreUnavailable:
                    return set()

            poster = Poster(cluster, video, rate=40)
            with trio.fail_after(150):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poster.run, http)

                    # The path works before the outage: comments reach the CQL table.
                    async def some_persisted() -> bool:
                        return len(poster.accepted) >= 30 and set(poster.accepted[:20]) <= await persisted()

                    await wait_for(some_persisted, 30, "the first comments to reach the CQL table")

                    t_kill = time.monotonic()
                    await trio.to_thread.run_sync(server.kill9)
                    at_kill = len(poster.accepted)

                    async def queued_while_down() -> bool:
                        return len(poster.accepted) >= at_kill + 80 and int(await redis.xlen(stream)) >= 60

                    await wait_for(queued_while_down, 30, "posts accepted and queued while the CQL server is down")
                    # Posting goes on while Cassandra starts again (replaying its commitlog).
                    await trio.to_thread.run_sync(server.restart)
                    times["down (kill -9 to listening again)"] = time.monotonic() - t_kill
                    times["restart"] = server.started_in_s
                    after_restart = len(poster.accepted)
                    await wait_for(lambda: len(poster.accepted) >= after_restart + 40, 30, "posts after the restart")
                    poster.running = False  # it returns after its request in hand

            # Everything acknowledged reaches Cassandra: the worker retries and drains the backlog.
            t_back = time.monotonic()
            accepted = set(poster.accepted)

            async def drained() -> bool:
                return int(await redis.xlen(stream)) == 0 and accepted <= await persisted()

            await wait_for(drained, 60, "every acknowledged comment to reach the CQL table")
            times["drain after restart"] = time.monotonic() - t_back

            rows = await trio.to_thread.run_sync(raw_rows, cql.hosts, keyspace, video)
            copies = collections.Counter(cid for cid, _b, _s, _r in rows)
            stored = await store.after(video, 0, 100_000)
        # Every post was answered 201, before, during and after the outage: no 503, no 5xx,
        # no transport error.
        assert set(poster.statuses) == {201}, dict(poster.statuses)
        assert poster.statuses[201] == len(poster.accepted)
        down = after_restart - at_kill  # accepted between the kill and CQL listening again
        assert down >= 80
        assert not [cid for cid, n in copies.items() if n > 1], "a comment stored twice"
        assert not [r for r in rows if r[3]], "a comment was removed"
        assert set(copies) == accepted  # nothing lost, nothing unacknowledged
        assert [c.id for c in stored] == sorted(accepted)
        persist_log = "".join(p.read_text(errors="replace") for p in (cluster.run_dir / "logs").glob("persist*.log"))
        assert "cold store unavailable" in persist_log  # the worker did see the outage
        ok = True
    finally:
        cluster.stop()
        if not ok:
            print(cluster.logs())
        cluster.cleanup()
    print(
        f"\n{len(accepted)} comments, {down} accepted while the CQL server was down; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    )


# -- the viewer feed drives write sharding ------------------------------------------------------------


async def test_persist_feeds_viewers_into_the_sharding_switch(
    cql: CqlTarget, keyspace: str, redis_server: RedisServer, redis: Any, prefix: str, tmp_path: Path
) -> None:
    shards = 4
    settings = config.load(
        environ={},
        redis_url=redis_server.url,
        redis_prefix=prefix,
        store="scylla",
        scylla_hosts=",".join(cql.hosts),
        scylla_keyspace=keyspace,
        comment_ttl_s=3600,
        scylla_shards=shards,
        shard_hot_viewers=100,  # cool below 80
        shard_hot_comments_per_s=1e6,  # velocity never decides here
        presence_interval_s=0.2,  # the persist worker's feed reads totals this often
        node_id="persist-shards",
        data_dir=str(tmp_path),
    )
    keys = Keys(prefix)
    hot = HotStore(redis, keys)
    gen = SnowflakeGenerator(worker=21)
    rms_a = Presence(redis, keys, "rms-a", ttl_s=60)
    rms_b = Presence(redis, keys, "rms-b", ttl_s=60)
    crowded, quiet = f"crowded_{prefix}", f"quiet_{prefix}"
    posted: dict[str, list[int]] = {crowded: [], quiet: []}

    async def post(video: str, n: int) -> None:
        now = time.time_ns() // 1_000_000
        c = Comment(
            id=gen.next_id(now), video_id=video, author=Author("u1", "U1"), text=f"#{n}", created_at=now
        )
        assert await hot.append(c)
        posted[video].append(c.id)

    def where(video: str) -> dict[int, int]:
        """comment id -> shard, from the CQL table."""
        return {cid: shard for cid, _b, shard, _r in raw_rows(cql.hosts, keyspace, video)}

    # Viewers as rms nodes report them: the crowded video's total is over the line only
    # summed over both nodes (60 + 60 >= 100); the quiet one has 3.
    await rms_a.report(crowded, 60)
    await rms_b.report(crowded, 60)
    await rms_a.report(quiet, 3)

    stop = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(run_persist, settings, until=stop.wait))
            for n in range(40):
                await post(crowded, n)
                await post(quiet, n)

            async def landed() -> bool:
                got = await trio.to_thread.run_sync(lambda: {v: where(v) for v in posted})
                return all(set(posted[v]) <= set(got[v]) for v in posted)

            await wait_for(landed, 30, "both videos' comments in the CQL table")
            placed = {v: await trio.to_thread.run_sync(where, v) for v in posted}
            # Sharded from the first comment (the worker reads a video's viewers before its
            # first write); each comment where its id hashes, over all the shards.
            assert all(placed[crowded][cid] == shard_for(cid, shards) for cid in posted[crowded])
            assert set(placed[crowded].values()) == set(range(shards))
            assert set(placed[quiet].values()) == {0}

            # The quiet video's audience grows while it is being written: the periodic
            # feed turns its writes hot.
            await rms_b.report(quiet, 500)
            n = 40

            async def spread() -> bool:
                nonlocal n
                await post(quiet, n)
                n += 1
                return any(s != 0 for s in (await trio.to_thread.run_sync(where, quiet)).values())

            await wait_for(spread, 15, "the quiet video's writes to spread over shards")
            stop.set()
    after = await trio.to_thread.run_sync(where, quiet)
    assert {cid for cid, s in after.items() if s != 0} <= set(posted[quiet][40:])
