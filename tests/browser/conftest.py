"""Browser fixtures: Debian's Chromium driven by Playwright's sync API.

The browser is started once per session and each test gets fresh, isolated contexts
(own cookies and localStorage, so every page signs in as its own guest). The sync API
is used from plain ``def`` tests: it runs its own event loop and must not share a thread
with a running trio or asyncio loop.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("LIVECOMMENTS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPECT_TIMEOUT_MS = 10_000


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    playwright_sync.expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """``new_page(url=None, **context_options)``: a page in its own browser context."""
    contexts: list[Any] = []

    def make(url: str | None = None, *, init_script: str | None = None, **options: Any) -> Any:
        options.setdefault("viewport", {"width": 720, "height": 560})
        context = browser.new_context(**options)
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        contexts.append(context)
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # uncaught exceptions in the page, checked by tests
        if url is not None:
            page.goto(url)
        return page

    yield make
    for context in contexts:
        context.close()
