"""Supervision by ``livecomments cluster up``: a SIGKILL of each role under load (ingest,
rms, persist, moderate, and the Redis that cluster up started, with ``appendfsync
always``) is survived with nothing acknowledged lost, the process is restarted (log
line, new pid in ``cluster status --json``), and stopping the cluster restarts nothing.

One cluster (2 rms, 2 ingest, its own Redis, a 50 ms first restart delay) serves the
module; each kill drill uses a video of its own. Viewers resume with Last-Event-ID and
the poster retries (``harness.py``); in the end every viewer has every acknowledged
comment in id order, once, and so does the cold store.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from livecomments.cluster_status import gather
from tests.cluster.harness import ClusterProcess, Poster, check_complete_in_order, client, has_all, wait_for, watch

VIEWERS = 4
SETTLE_S = 30  # bound on every wait
ROLES = ["ingest", "rms", "persist", "moderate", "redis"]


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterProcess]:
    c = ClusterProcess(
        None,  # cluster up starts (and supervises) its own Redis
        "sup",
        rms=2,
        ingest=2,
        env={"LIVECOMMENTS_RATE_LIMIT": "1000/1s", "LIVECOMMENTS_SHUTDOWN_GRACE_S": "2"},
        args=["--restart-backoff-s", "0.05", "--restart-backoff-max-s", "1"],
    ).start()
    failed = request.session.testsfailed
    yield c
    c.stop()
    if request.session.testsfailed > failed:
        print("".join(c.output[-40:]))
        print(c.logs())
    c.cleanup()


def row(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in status["processes"] if p["name"] == name)


def cold_ids(cluster: ClusterProcess, video: str) -> set[int]:
    path = Path(cluster.info["data_dir"]) / "comments.sqlite3"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return {int(r[0]) for r in conn.execute("SELECT id FROM comments WHERE video_id = ?", (video,))}
    except sqlite3.OperationalError:  # not created yet
        return set()
    finally:
        conn.close()


def victim_of(cluster: ClusterProcess, role: str, hosting: dict[str, Any]) -> dict[str, Any]:
    """The process to kill: the rms node hosting the video, the first of other roles."""
    info = cluster.refresh()
    if role == "redis":
        return {"name": "redis", **info["redis"]}
    if role == "rms":
        return cluster.node(hosting["name"])
    return cluster.nodes(role)[0]


@pytest.mark.parametrize("role", ROLES)
async def test_sigkill_under_load_is_restarted_and_loses_nothing_acknowledged(cluster: ClusterProcess, role: str) -> None:
    video = f"supervise-{role}"
    async with client() as http, trio.open_nursery() as nursery:
        viewers = await watch(nursery, http, cluster, video, VIEWERS)
        poster = Poster(cluster, video, rate=40)
        nursery.start_soon(poster.run, http)
        await wait_for(lambda: min(len(v.ids) for v in viewers) >= 10, SETTLE_S, "comments before the kill")

        victim = victim_of(cluster, role, cluster.node_at(viewers[0].upstream))
        name, old_pid, restarts = victim["name"], victim["pid"], victim["restarts"]
        os.kill(old_pid, signal.SIGKILL)
        at_kill = len(poster.accepted)

        # cluster up says so, in one line: which process, pid, signal, restart count, delay.
        line = re.compile(
            rf"livecomments cluster: {name} \(pid {old_pid}\) killed by SIGKILL after [\d.]+ s;"
            rf" restart {restarts + 1} in [\d.]+ s"
        )
        await wait_for(lambda: any(line.search(out) for out in cluster.output), SETTLE_S, "the restart log line")

        # ... and `cluster status --json` shows the new process, healthy, on the same port.
        async def restarted() -> bool:
            status = await cluster.status()
            me = row(status, name)
            return bool(me["pid"] != old_pid and me["alive"] and me["health"]["ok"] and me["restarts"] == restarts + 1)

        await wait_for(restarted, SETTLE_S, f"{name} to be back in cluster status")
        info = cluster.refresh()
        back = {"name": "redis", **info["redis"]} if role == "redis" else cluster.node(name)
        assert back["pid"] != old_pid and back["port"] == victim["port"] and back["last_exit"] == "killed by SIGKILL"

        if role == "rms":
            # The edge's upstream list is still right: once nginx' fail_timeout (3 s) is
            # over, new streams of the video go to the restarted node again.
            async def hashed_back() -> bool:
                async with http.stream("GET", f"{cluster.edge}/v1/videos/{video}/events") as r:
                    return bool(r.status_code == 200 and cluster.node_at(r.headers["x-edge-upstream"])["name"] == name)

            await wait_for(hashed_back, SETTLE_S, f"new streams of {video} to reach {name} again")

        await wait_for(lambda: len(poster.accepted) >= at_kill + 30, SETTLE_S, "comments after the restart")
        poster.running = False
        await wait_for(lambda: has_all(viewers, poster.accepted), SETTLE_S, "every viewer to have every comment")
        nursery.cancel_scope.cancel()

    check_complete_in_order(viewers, poster)
    assert poster.statuses[500] == 0, poster.statuses
    # The cold store gets every acknowledged comment too, and the workers catch up.
    await wait_for(lambda: set(poster.accepted) <= cold_ids(cluster, video), SETTLE_S, "the cold store to have them all")

    async def drained() -> bool:
        status = await gather(cluster.refresh())  # what `cluster status` prints, in-process
        return all(row(status, f"{r}-1")["load"].get("pending") == 0 for r in ("persist", "moderate"))

    await wait_for(drained, SETTLE_S, "persist and moderate to have nothing pending")


def test_stopping_the_cluster_restarts_nothing(cluster: ClusterProcess) -> None:
    info = cluster.refresh()
    pids = [n["pid"] for n in info["nodes"]] + [info["redis"]["pid"], info["nginx"]["pid"]]
    lines_before = len(cluster.output)
    assert cluster.stop() == 0
    after = cluster.output[lines_before:]
    assert any("stopping" in ln for ln in after) and not any("restart" in ln for ln in after), after
    final = cluster.refresh()
    assert [n["pid"] for n in final["nodes"]] + [final["redis"]["pid"], final["nginx"]["pid"]] == pids
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
