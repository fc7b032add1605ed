"""Moderation fixtures: a server with automod rules and a classifier, an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.moderation.clients import WAIT_S
from tests.support.server import ServerProcess

RULES = """\
# blocked words and phrases (whole words, any case), then patterns
spamword
buy followers
re:free\\s+v-?bucks
"""

AUTOMOD_ENV = {
    "LIVECOMMENTS_GUEST_RATE_LIMIT": "10000/1s",
    "LIVECOMMENTS_GUEST_POST_RATE_LIMIT": "10000/1s",
    "LIVECOMMENTS_RATE_LIMIT": "1000/1s",
    "LIVECOMMENTS_CLASSIFIER": "tests.moderation.fake_classifier:MarkerClassifier",
    "LIVECOMMENTS_MODERATION_REPEAT": "3/60s",
    "LIVECOMMENTS_MODERATION_FLOOD": "3/60s",
    "LIVECOMMENTS_MODERATION_NEW_ACCOUNT_MIN": "10",
}


@pytest.fixture(scope="session")
def automod_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a rules file, the test classifier and a high per-user limit."""
    rules: Path = tmp_path_factory.mktemp("automod") / "rules.txt"
    rules.write_text(RULES, encoding="utf-8")
    srv = ServerProcess({**AUTOMOD_ENV, "LIVECOMMENTS_MODERATION_RULES": str(rules)}).start()
    yield srv
    srv.close()


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as c:
        yield c


@pytest.fixture
async def auto_client(automod_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=automod_server.url, timeout=WAIT_S) as c:
        yield c
