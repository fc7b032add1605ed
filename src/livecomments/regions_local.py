"""``livecomments cluster up --regions N``: N local regions and the delayed links between them.

Each region is a whole ``Cluster`` (its own Redis, ingest and rms nodes, persist,
moderate and nginx edge) under ``run_dir/region-<name>`` (names a, b, ...), plus a
``forward`` process that sends the region's comments to the other regions that have
viewers of them (``adapters.redis.regions``). Region r's ingest nodes have Snowflake
worker ids 100 (r - 1) + 1, ... so ids never collide across regions. Every link from
region A to region B is a ``DelayProxy`` (``--region-delay-ms`` one way) in front of B's
Redis, owned by this process' nursery: A's forwarder reads B's presence and appends into
B's hot store through it, and nothing else crosses regions.

``run_dir/cluster.json`` describes every region (each region's own ``cluster.json`` is in
its directory; ``cluster status --run-dir run_dir`` shows every region) and the links
with the bytes they carried (rewritten every ``LINK_REPORT_S`` while they or the pids
change). A file ``run_dir/links.down``
cuts every link (open connections are closed, new ones refused) until it is removed: the
link-loss drill of docs/operations.md (Regions).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs
import trio

from domain.identity import KEY_FILE, signing_key
from livecomments.cluster import Child, Cluster
from livecomments.delay_proxy import DelayProxy

WORKERS_PER_REGION = 100  # Snowflake worker ids: region r uses 100 (r - 1) + 1, ...
OUTBOX_MAX = "100000"  # LIVECOMMENTS_REGION_OUTBOX_MAX unless set
LINK_REPORT_S = 0.5
LINK_POLL_S = 0.2


@attrs.define
class Link:
    source: str  # the region whose forwarder uses it
    target: str  # the region whose Redis it leads to
    proxy: DelayProxy


class RegionsCluster:
    def __init__(self, args: argparse.Namespace) -> None:
        n = int(args.regions)
        if not 2 <= n <= 10:
            raise ValueError("--regions must be between 1 and 10")
        if args.redis_url or getattr(args, "redis_cluster", 0) or getattr(args, "redis_sentinel", False):
            raise ValueError("--regions starts a Redis per region: not with --redis-url/--redis-cluster/--redis-sentinel")
        if args.ingest >= WORKERS_PER_REGION:
            raise ValueError(f"--regions allows at most {WORKERS_PER_REGION - 1} ingest nodes per region")
        self.delay_s = float(args.region_delay_ms) / 1000
        if self.delay_s < 0:
            raise ValueError("--region-delay-ms must not be negative")
        self.run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="livecomments-cluster-")).resolve()
        env = {"LIVECOMMENTS_REGION_OUTBOX_MAX": os.environ.get("LIVECOMMENTS_REGION_OUTBOX_MAX", OUTBOX_MAX)}
        self.regions = [
            Cluster(
                args,
                region=chr(ord("a") + i),
                run_dir=self.run_dir / f"region-{chr(ord('a') + i)}",
                worker_base=WORKERS_PER_REGION * i,
                edge_port=(args.edge_port + i) if args.edge_port else 0,
                env=env,
            )
            for i in range(n)
        ]
        self.links: list[Link] = []

    def _share_signing_key(self) -> None:
        """One token signing key for every region (a token works at any edge): the
        configured secret, else a key made once and copied into each region's data dir."""
        if os.environ.get("LIVECOMMENTS_JWT_SECRET"):
            return
        first = self.regions[0].run_dir / "data"
        key = signing_key("", str(first))
        for region in self.regions[1:]:
            data = region.run_dir / "data"
            data.mkdir(parents=True, exist_ok=True)
            path = data / KEY_FILE
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(key)

    async def start(self, nursery: trio.Nursery) -> None:
        for region in self.regions:
            (region.run_dir / "data").mkdir(parents=True, exist_ok=True)
        self._share_signing_key()
        for region in self.regions:
            await region.start()
        for source in self.regions:
            remotes = []
            for target in self.regions:
                if target is source:
                    continue
                assert target.redis is not None
                proxy = DelayProxy("127.0.0.1", target.redis.port, self.delay_s)
                await nursery.start(proxy.run)
                self.links.append(Link(source.region, target.region, proxy))
                remotes.append(f"{target.region}=redis://127.0.0.1:{proxy.port}")
            child = source._node("forward", 1, LIVECOMMENTS_REGION_REMOTES=",".join(remotes))
            source.children.append(child)
            child.start()

    def describe(self) -> dict[str, Any]:
        regions = {r.region: r.describe() for r in self.regions}
        return {
            "run_dir": str(self.run_dir),
            "edge": self.regions[0].edge_url,
            "region_delay_ms": self.delay_s * 1000,
            "regions": regions,
            "links": [
                {
                    "from": link.source, "to": link.target, "port": link.proxy.port, "bytes": link.proxy.bytes,
                    "connections": link.proxy.connections, "down": link.proxy.down,
                }
                for link in self.links
            ],
            "nodes": [{**node, "region": name} for name, d in regions.items() for node in d["nodes"]],
        }

    def save(self) -> None:
        for region in self.regions:
            region.save()
        path = self.run_dir / "cluster.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2))
        os.replace(tmp, path)

    def report(self) -> None:
        for region in self.regions:
            print(f"region {region.region}:", flush=True)
            region.report()
        for link in self.links:
            print(
                f"  link {link.source} -> {link.target}: 127.0.0.1:{link.proxy.port}"
                f" ({self.delay_s * 1000:.0f} ms one way)",
                flush=True,
            )
        print(f"  cut the links: touch {self.run_dir / 'links.down'}; restore: remove it", flush=True)
        print(f"edge: {self.regions[0].edge_url}", flush=True)

    async def _watch_links(self) -> None:
        """Follow ``links.down``; rewrite cluster.json while the links' counts change."""
        flag = self.run_dir / "links.down"
        last: tuple[Any, ...] = ()
        next_report = trio.current_time()
        while True:
            down = flag.exists()
            for link in self.links:
                if link.proxy.down != down:
                    link.proxy.set_down(down)
            now = trio.current_time()
            state = (
                tuple((link.proxy.bytes, link.proxy.down) for link in self.links),
                tuple(c.pid for r in self.regions for c in r.children),  # restarts
            )
            if state != last and now >= next_report:
                self.save()
                last, next_report = state, now + LINK_REPORT_S
            await trio.sleep(LINK_POLL_S)

    async def run(self) -> int:
        failed: list[str] = []
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                async with trio.open_nursery() as nursery:

                    async def until_signal() -> None:
                        async for _ in signals:
                            for region in self.regions:
                                region.stopping = True
                            nursery.cancel_scope.cancel()
                            return

                    nursery.start_soon(until_signal)
                    await self.start(nursery)
                    self.save()
                    self.report()
                    for region in self.regions:
                        supervised: list[Child] = [c for c in [region.redis, *region.children, region.nginx] if c is not None]
                        region._waiters = trio.CapacityLimiter(len(supervised) + 1)
                        for c in supervised:
                            nursery.start_soon(region._supervise, c)
                    nursery.start_soon(self._watch_links)
            except* (RuntimeError, OSError, subprocess.CalledProcessError) as group:
                failed = [str(e) for e in group.exceptions]
            finally:
                with trio.CancelScope(shield=True):
                    print("livecomments cluster: stopping", flush=True)
                    for region in self.regions:
                        region.stopping = True
                    for region in self.regions:
                        await region.stop()
        for text in failed:
            print(f"livecomments cluster: {text}", file=sys.stderr, flush=True)
        print("livecomments cluster: stopped", flush=True)
        return 1 if failed else 0
