"""Opening the configured comment store, the same way in every process."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from adapters.retry import Retry
from domain.model import Comment
from domain.ports import Store, StoreUnavailable
from domain.settings import Settings
from policy.backoff import Backoff
from policy.shards import ShardingThresholds

if TYPE_CHECKING:
    from adapters.scylla.store import ScyllaStore

log = logging.getLogger("livecomments.stores")

# Connecting to a CQL cluster that is not up yet: 0.5 s doubling up to 10 s. Not jittered:
# a handful of processes each try once per delay, too few to need spreading out.
CQL_CONNECT = Backoff(initial_s=0.5, max_s=10.0, jitter=0.0)


class LazyStore:
    """A store that may not be reachable yet: calls raise ``StoreUnavailable`` until
    ``connect`` succeeded (a CQL cluster that is down when a process starts must not
    stop it from starting: the hot store carries on without it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.inner: Store | None = None

    def _get(self) -> Store:
        if self.inner is None:
            raise StoreUnavailable(f"the {self.name} store is not connected yet")
        return self.inner

    async def append(self, comment: Comment) -> None:
        await self._get().append(comment)

    async def append_many(self, comments: Sequence[Comment]) -> None:
        await self._get().append_many(comments)

    async def remove(self, video_id: str, comment_id: int) -> bool:
        return await self._get().remove(video_id, comment_id)

    async def get(self, video_id: str, comment_id: int) -> Comment | None:
        return await self._get().get(video_id, comment_id)

    async def latest(
        self, video_id: str, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        return await self._get().latest(video_id, limit, viewer_id, every_author=every_author)

    async def after(
        self, video_id: str, after_id: int, limit: int, viewer_id: str | None = None, *, every_author: bool = False
    ) -> list[Comment]:
        return await self._get().after(video_id, after_id, limit, viewer_id, every_author=every_author)

    async def before(
        self,
        video_id: str,
        before_id: int | None,
        limit: int,
        viewer_id: str | None = None,
        *,
        every_author: bool = False,
    ) -> list[Comment]:
        return await self._get().before(video_id, before_id, limit, viewer_id, every_author=every_author)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()


def sqlite_path(settings: Settings) -> str:
    return os.path.join(settings.data_dir, "comments.sqlite3")


def scylla_store(settings: Settings) -> ScyllaStore:
    """A CQL store as configured (not connected). Every process must use the configured
    bucket size, which decides where an id lives; the thresholds drive the sharding
    switch of the process that writes (``serve``, or ``persist`` in a cluster)."""
    from adapters.scylla.store import ScyllaStore

    hot_v, hot_n = settings.shard_hot_comments_per_s, settings.shard_hot_viewers
    return ScyllaStore(
        [h.strip() for h in settings.scylla_hosts.split(",") if h.strip()],
        settings.scylla_keyspace,
        ttl_s=settings.comment_ttl_s,
        consistency=settings.scylla_consistency,
        bucket_s=settings.scylla_bucket_s,
        shards=settings.scylla_shards,
        thresholds=ShardingThresholds(
            hot_velocity=hot_v, cool_velocity=hot_v / 2, hot_viewers=hot_n, cool_viewers=int(hot_n * 0.8)
        ),
    )


@asynccontextmanager
async def open_store(settings: Settings, *, wait_for_cql: bool = True) -> AsyncIterator[Store]:
    """The configured comment store, open for the duration of the block: the SQLite file
    in the data dir, or (``store=scylla``) a CQL session. ``wait_for_cql=False`` (the
    cluster's processes) yields at once a store that answers ``StoreUnavailable`` until a
    background task has connected: a CQL cluster that is down when a process starts must
    not stop it from starting, since the hot store carries on without it."""
    if settings.store != "scylla":
        from adapters.sqlite.store import SqliteStore

        async with SqliteStore.open(sqlite_path(settings), durable=settings.sqlite_synchronous == "full") as sqlite:
            yield sqlite
        return
    if wait_for_cql:
        async with scylla_store(settings) as store:
            yield store
        return
    lazy = LazyStore("CQL")

    async def connect() -> None:
        retry = Retry(CQL_CONNECT)
        while True:
            store = scylla_store(settings)
            try:
                await store.connect()
            except Exception as e:  # the driver raises several kinds; all mean "not yet"
                delay = retry.next_delay()
                log.warning("CQL store at %s not reachable (%s); retrying in %.1f s", settings.scylla_hosts, e, delay)
                await retry.sleep(delay)
                continue
            lazy.inner = store
            log.info("CQL store connected: %s/%s", settings.scylla_hosts, settings.scylla_keyspace)
            return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        try:
            yield lazy
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await lazy.aclose()
