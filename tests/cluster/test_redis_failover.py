"""Redis beyond one process: a Redis Cluster (3 masters, 3 replicas) and a Sentinel setup
(a primary, a replica, 3 sentinels), each started once per session (``conftest``).

- In-process: every script and key of cluster mode runs on one slot of a real Redis
  Cluster (a cross-slot script, or an ``SPUBLISH`` to a channel outside the script's
  slot, is refused by Redis); the sharded bus hears videos on different masters;
  ``LIVECOMMENTS_REDIS_WAIT_REPLICAS`` refuses what no replica confirmed.
- The failure drill, for both topologies and both WAIT settings: a whole cluster
  (``livecomments cluster up --redis-url <topology>``), viewers and a poster through
  the edge; the master that owns the busy video is SIGKILLed under load; a replica is
  promoted, the rms node resubscribes and backfills; the dead server is started again
  and rejoins as a replica; every viewer ends with every comment Redis holds, in order,
  none twice. With WAIT, that is every acknowledged comment (and while the promoted
  master has no replica, nothing is acknowledged); without, acknowledged comments the
  old master had not replicated may be lost (docs/operations.md), so the test checks
  only what is guaranteed and reports the loss.
- ``cluster up --redis-cluster 3`` and ``--redis-sentinel`` start their own Redis.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest
import trio

from adapters.redis.bus import RedisBus
from adapters.redis.client import REDIS_ERRORS, open_redis
from adapters.redis.hotstore import HotStore, NotReplicated
from adapters.redis.keys import Keys, cluster_slot
from adapters.redis.moderation import RedisModerationStore
from adapters.redis.presence import Presence
from adapters.redis.ratelimit import RedisRateLimiter
from adapters.redis.snapshots import SnapshotPublisher
from domain.ids import SnowflakeGenerator
from domain.model import Author, Comment, ModeChange
from domain.moderation import GLOBAL, Ban, LogEntry
from livecomments.redis_local import LocalRedisCluster, LocalSentinel, RedisProcess, command
from policy.rate import Rate
from tests.cluster.harness import ClusterProcess, Poster, Viewer, wait_for

SHARDS = 16
SETTLE_S = 45  # bound on every wait
GEN = SnowflakeGenerator(9)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def comment(video: str, n: int) -> Comment:
    return Comment(id=GEN.next_id(now_ms()), video_id=video, author=Author("u1", "U1"), text=f"c{n}", created_at=now_ms())


@attrs.define
class Topology:
    """What a drill needs of either topology."""

    name: str
    servers: LocalRedisCluster | LocalSentinel

    @property
    def url(self) -> str:
        return self.servers.url

    def master_of(self, keys: Keys, video: str) -> RedisProcess:
        if isinstance(self.servers, LocalRedisCluster):
            return self.servers.master_of_key(keys.recent(video))
        return self.servers.primary()

    def wait_promoted(self, dead: RedisProcess, keys: Keys, video: str) -> RedisProcess:
        if isinstance(self.servers, LocalRedisCluster):
            return self.servers.wait_promoted(dead, cluster_slot(keys.recent(video)), SETTLE_S)
        return self.servers.wait_promoted(dead, SETTLE_S)


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    servers = request.getfixturevalue("redis_cluster" if request.param == "cluster" else "redis_sentinel")
    servers.wait_healthy()
    yield Topology(request.param, servers)
    # Whatever the test did, the next one finds the topology whole.
    for server in servers.processes():
        server.resume()
        if not server.alive:
            servers.start_again(server)
    servers.wait_healthy()


@pytest.fixture
def redis_cluster_healthy(redis_cluster: LocalRedisCluster) -> LocalRedisCluster:
    redis_cluster.wait_healthy()
    return redis_cluster


# -- in-process ----------------------------------------------------------------------------------


async def test_every_script_runs_on_one_slot_of_a_redis_cluster(redis_cluster_healthy: LocalRedisCluster, prefix: str) -> None:
    cluster = redis_cluster_healthy
    keys = Keys(prefix, SHARDS)
    videos = [f"video-{i}" for i in range(12)]
    masters = {cluster.master_of_key(keys.recent(v)).port for v in videos}
    assert len(masters) >= 2, "the test videos should spread over several masters"
    # Our slot function is Redis'.
    node = cluster.nodes[0].port
    for key in [keys.recent(videos[0]), keys.channel(videos[1]), keys.limiter("user:u1", "x"), keys.bans(), "foo{}{bar}"]:
        assert cluster_slot(key) == command(node, "CLUSTER", "KEYSLOT", key), key

    async with open_redis(cluster.url) as redis:
        # (A wide window: this test is about slots, and a loaded machine can take a while
        # to open the first connection to each master.)
        hot = HotStore(redis, keys, window_ms=60_000)
        presence = Presence(redis, keys, "rms-a", min_dwell_s=0)
        snapshots = SnapshotPublisher(redis, keys, "rms-a")
        limiter = RedisRateLimiter(redis, keys)
        moderation = RedisModerationStore(redis, keys)
        got: list[Any] = []
        bus = RedisBus(redis, keys, hold_ms=50)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await bus.wait_connected()
            for v in videos:
                await bus.subscribe(v, got.append)
            # append.lua (KEYS: recent, meta, stream, rate; SPUBLISH on the channel) and
            # remove.lua on each video's slot, whichever master owns it.
            posted = [comment(v, i) for i, v in enumerate(videos)]
            for c in posted:
                assert await hot.append(c) is True
            assert await hot.remove(videos[0], posted[0].id) is True
            # mode_propose.lua SPUBLISHes too; presence_report.lua, snapshot_write.lua.
            assert await presence.report(videos[1], 3) == 3
            assert await presence.agree_mode(videos[1], "push", "sampled") == "sampled"
            written = await snapshots._write(
                keys=[keys.snapshot_lease(videos[2]), keys.snapshot(videos[2])], args=["rms-a", 3000, '"e"', "{}"]
            )
            assert int(written) == 1 and await snapshots.fetch(videos[2]) == (b"{}", '"e"')
            # sliding_window.lua with several keys of one call; moderation_write.lua.
            assert (await limiter.acquire_many([("user:u1", Rate(5, 10)), ("slow:v:5:u1", Rate(1, 5))], 0)).allowed
            entry = LogEntry(GEN.next_id(now_ms()), GLOBAL, now_ms(), "mod", "ban", target_user="troll")
            await moderation.put_ban(Ban(GLOBAL, "troll", "overt", None, "mod", now_ms()), entry)
            assert [b.user_id for b in await moderation.bans()] == ["troll"]
            # The bus heard every video, from every master.
            await wait_for(lambda: {e.id for e in got if isinstance(e, Comment)} >= {c.id for c in posted}, 10, "comments")
            await wait_for(lambda: ModeChange(videos[1], "sampled") in got, 10, "the mode change")
            nursery.cancel_scope.cancel()


async def test_wait_replicas_refuses_what_no_replica_confirmed(topology: Topology, prefix: str) -> None:
    keys = Keys(prefix, SHARDS)
    video = "waiting"
    master = topology.master_of(keys, video)
    (replica,) = topology.servers.replicas_of(master)
    async with open_redis(topology.url) as redis:
        waiting = HotStore(redis, keys, wait_replicas=1, wait_timeout_ms=200)
        eager = HotStore(redis, keys)
        first = comment(video, 1)
        assert await waiting.append(first) is True  # the replica confirmed it
        replica.pause()
        try:
            late = comment(video, 2)
            with pytest.raises(NotReplicated):
                await waiting.append(late)
            assert waiting.not_replicated == 1
            # Not acknowledged, yet on the master (and published): it may still appear.
            assert await eager.get(video, late.id) == late
            # Without WAIT the master's word is enough.
            assert await eager.append(comment(video, 3)) is True
            # A removal waits too.
            with pytest.raises(NotReplicated):
                await waiting.remove(video, first.id)
        finally:
            replica.resume()
        assert await waiting.append(comment(video, 4)) is True


# -- the failure drill --------------------------------------------------------------------------------


def drill_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=60.0), limits=httpx.Limits(max_connections=50))


async def redis_ids(url: str, keys: Keys, video: str) -> list[int]:
    """The ids Redis holds for the video now (its hot store, oldest first)."""
    async with open_redis(url) as redis:
        with trio.fail_after(SETTLE_S):
            while True:
                try:
                    return [c.id for c in await HotStore(redis, keys).after(video, 0, 100_000)]
                except REDIS_ERRORS:  # the slot map may still be settling
                    await trio.sleep(0.2)


async def bus_reconnects(http: httpx.AsyncClient, node: dict[str, Any]) -> float:
    text = (await http.get(f"{node['url']}/metrics")).text
    line = next(ln for ln in text.splitlines() if ln.startswith("livecomments_bus_reconnects"))
    return float(line.split()[-1])


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["no-wait", "wait-1"])
async def test_master_of_a_busy_video_killed_under_load(topology: Topology, wait_replicas: int) -> None:
    prefix = f"drill{topology.name[0]}{wait_replicas}{os.getpid() % 1000}"
    keys = Keys(prefix, SHARDS)
    video = "busy"
    env = {
        "LIVECOMMENTS_RATE_LIMIT": "1000/1s",
        "LIVECOMMENTS_SHUTDOWN_GRACE_S": "2",
        "LIVECOMMENTS_REDIS_SHARDS": str(SHARDS),
        "LIVECOMMENTS_REDIS_WAIT_REPLICAS": str(wait_replicas),
        "LIVECOMMENTS_HOT_SIZE": "100000",
    }
    cluster = ClusterProcess(topology.url, prefix, rms=1, ingest=1, env=env).start()
    victim: RedisProcess | None = None
    try:
        async with drill_client() as http, trio.open_nursery() as nursery:
            viewers = [Viewer(cluster.edge, video, f"viewer{i}") for i in range(4)]
            for v in viewers:
                await nursery.start(v.run, http)
            rms = cluster.nodes("rms")[0]
            poster = Poster(cluster, video, rate=40)
            posting_done = trio.Event()

            async def post() -> None:
                await poster.run(http)
                posting_done.set()

            nursery.start_soon(post)
            await wait_for(lambda: min(len(v.ids) for v in viewers) >= 30, SETTLE_S, "comments before the kill")

            victim = topology.master_of(keys, video)
            victim.kill()  # SIGKILL, under load
            killed_at = trio.current_time()
            at_kill = len(poster.accepted)
            promoted = await trio.to_thread.run_sync(topology.wait_promoted, victim, keys, video)
            promotion_s = trio.current_time() - killed_at
            at_promotion = len(poster.accepted)
            if wait_replicas:
                # The promoted master has no replica yet: nothing can be acknowledged.
                refused = poster.statuses[503]
                await wait_for(lambda: poster.statuses[503] >= refused + 5, SETTLE_S, "503s without a replica")
                assert len(poster.accepted) == at_promotion
            # The dead server comes back (as a supervisor would restart it): a replica now.
            topology.servers.start_again(victim)
            await trio.to_thread.run_sync(topology.servers.wait_healthy)
            at_rejoin = len(poster.accepted)
            await wait_for(lambda: len(poster.accepted) >= at_rejoin + 40, SETTLE_S, "comments after the rejoin")
            poster.running = False
            with trio.fail_after(SETTLE_S):
                await posting_done.wait()

            kept = await redis_ids(topology.url, keys, video)
            await wait_for(lambda: all(set(kept) <= set(v.ids) for v in viewers), SETTLE_S, "every viewer to have every comment")
            reconnects = await bus_reconnects(http, rms)
            nursery.cancel_scope.cancel()

        acknowledged = set(poster.accepted)
        lost = acknowledged - set(kept)
        report = {
            "topology": topology.name,
            "wait_replicas": wait_replicas,
            "victim": victim.name,
            "promoted": promoted.name,
            "promotion_s": round(promotion_s, 2),
            "acknowledged": len(acknowledged),
            "acknowledged_before_kill": at_kill,
            "acknowledged_at_promotion": at_promotion,
            "lost": len(lost),
            "statuses": dict(poster.statuses),
            "bus_reconnects": reconnects,
            "viewer_connections": [len(v.connections) for v in viewers],
        }
        print("\n" + json.dumps(report))
        for v in viewers:
            assert v.ids == sorted(set(v.ids)), f"{v.name}: out of order or repeated"
            assert set(kept) <= set(v.ids)
        assert poster.statuses[500] == 0 and poster.statuses[502] == 0, poster.statuses
        assert reconnects >= 1, "the rms node's subscriber never reconnected"
        # Comments acknowledged once the replica was promoted are never at risk.
        assert set(poster.accepted[at_promotion:]) <= set(kept)
        if wait_replicas:
            # Acknowledged means on a replica too: the promoted one has all of them.
            assert not lost, f"{len(lost)} acknowledged comment(s) lost: {sorted(lost)[:5]}"
            assert all(acknowledged <= set(v.ids) for v in viewers)
        else:
            # Only what async replication can lose: what the old master acknowledged.
            assert lost <= set(poster.accepted[:at_promotion])
    finally:
        cluster.stop()
        cluster.cleanup()  # the topology fixture restarts a victim still down


# -- cluster up starts them ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", [("--redis-cluster", "3"), ("--redis-sentinel",)], ids=["redis-cluster", "redis-sentinel"])
async def test_cluster_up_starts_its_redis_topology(how: tuple[str, ...]) -> None:
    cluster = ClusterProcess("", "up", rms=1, ingest=1, args=list(how)).start()
    try:
        redis = cluster.info["redis"]
        roles = sorted(n["role"] for n in redis["nodes"])
        if how[0] == "--redis-cluster":
            assert redis["topology"] == "cluster" and redis["url"].startswith("redis+cluster://")
            assert roles == ["master"] * 3 + ["replica"] * 3
        else:
            assert redis["topology"] == "sentinel" and redis["url"].startswith("redis+sentinel://")
            assert roles == ["primary", "replica", "sentinel", "sentinel", "sentinel"]
        async with drill_client() as http, trio.open_nursery() as nursery:
            viewer = Viewer(cluster.edge, "lobby")
            await nursery.start(viewer.run, http)
            r = await http.post(f"{cluster.edge}/v1/videos/lobby/comments", json={"text": "hi"}, headers=cluster.auth("u1"))
            assert r.status_code == 201, r.text
            await wait_for(lambda: viewer.ids == [int(r.json()["id"])], SETTLE_S, "the comment to arrive")
            nursery.cancel_scope.cancel()
    finally:
        assert cluster.stop() == 0
        cluster.cleanup()
    for node in cluster.info["redis"]["nodes"]:
        assert not _alive(node["pid"]), f"{node['name']} left running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


async def test_bus_follows_a_manual_failover(redis_cluster_healthy: LocalRedisCluster, prefix: str) -> None:
    """CLUSTER FAILOVER: the old master lives on as a replica and tells its shard-channel
    subscribers ``sunsubscribe``; the bus resubscribes on the new master (and
    backfills), instead of going deaf to the video."""
    cluster = redis_cluster_healthy
    keys = Keys(prefix, SHARDS)
    video = "moving"
    got: list[Any] = []
    async with open_redis(cluster.url) as redis:
        hot = HotStore(redis, keys)
        bus = RedisBus(redis, keys, hold_ms=50, recent=hot.after)
        async with trio.open_nursery() as nursery:
            await nursery.start(bus.run)
            await bus.wait_connected()
            await bus.subscribe(video, got.append)
            before = comment(video, 1)
            await hot.append(before)
            await wait_for(lambda: [e.id for e in got] == [before.id], 10, "the first comment")
            old = cluster.master_of_key(keys.recent(video))
            (replica,) = cluster.replicas_of(old)
            assert command(replica.port, "CLUSTER", "FAILOVER") == "OK"
            await trio.to_thread.run_sync(cluster.wait_promoted, old, cluster_slot(keys.recent(video)), SETTLE_S)
            after = comment(video, 2)
            with trio.fail_after(SETTLE_S):
                while True:  # the client learns the new master from a MOVED
                    try:
                        await hot.append(after)
                        break
                    except REDIS_ERRORS:
                        await trio.sleep(0.1)
            await wait_for(lambda: [e.id for e in got] == [before.id, after.id], SETTLE_S, "the comment after the failover")
            assert bus.reconnects >= 1
            nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(cluster.wait_healthy)
