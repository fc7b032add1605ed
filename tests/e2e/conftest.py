"""End-to-end fixtures: an httpx client on the shared server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.e2e.sse import WAIT_S
from tests.support.server import ServerProcess


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A keep-alive client on the shared server (requests go through the ASGI app)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as c:
        yield c
