"""Fixtures shared by the whole suite: real servers on ephemeral ports."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.support.server import ServerProcess

_video_counter = itertools.count()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """One server for the session: tests that do not restart it share it (own videos)."""
    srv = ServerProcess({"LIVECOMMENTS_GUEST_RATE_LIMIT": "10000/1s"}).start()
    yield srv
    srv.close()


@pytest.fixture
def live_server() -> Iterator[ServerProcess]:
    """A server of the test's own, which the test may stop and start again."""
    srv = ServerProcess({"LIVECOMMENTS_GUEST_RATE_LIMIT": "10000/1s"}).start()
    yield srv
    srv.close()


@pytest.fixture
def server_factory() -> Iterator[object]:
    """Start servers with extra ``LIVECOMMENTS_*`` settings: ``server_factory(env)``."""
    started: list[ServerProcess] = []

    def make(env: dict[str, str] | None = None) -> ServerProcess:
        srv = ServerProcess({"LIVECOMMENTS_GUEST_RATE_LIMIT": "10000/1s", **(env or {})}).start()
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
