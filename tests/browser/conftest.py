"""Fixtures for browser tests: the real server in a subprocess, Debian's chromium, axe-core.

Nothing here downloads a browser: Playwright drives ``/usr/bin/chromium`` (or
``IDCONTACT_TEST_CHROMIUM``) through ``executable_path``. ``bash scripts/browser`` installs
chromium and axe-core; without them the tests are skipped locally and fail in CI (``CI=true``),
like the real-service tests (``tests.services``).

The Playwright sync API marks its event loop as running between calls, so the browser must be
closed before any ``anyio`` test of another package runs: the browser fixtures are scoped to
this package and are torn down when its last test has run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.browser.support import (
    AXE_JS,
    PAGE_TIMEOUT_MS,
    Axe,
    AxeResult,
    LiveServer,
    run_axe,
    run_server,
)
from tests.services import _unavailable

CHROMIUM_ENV = "IDCONTACT_TEST_CHROMIUM"
DEFAULT_CHROMIUM = Path("/usr/bin/chromium")
INSTALL_HINT = "run `bash scripts/browser` (or `bash scripts/test`)"

BROWSER_ARGS = [
    "--no-sandbox",  # chromium refuses to start as root (CI) with its sandbox on
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# -- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="package")
def chromium_path() -> Path:
    """Debian's chromium, or the executable named by ``IDCONTACT_TEST_CHROMIUM``."""
    configured = os.environ.get(CHROMIUM_ENV, "").strip()
    path = Path(configured) if configured else DEFAULT_CHROMIUM
    if not (path.is_file() and os.access(path, os.X_OK)):
        where = f"{CHROMIUM_ENV}={configured!r}" if configured else str(DEFAULT_CHROMIUM)
        _unavailable(f"chromium not found at {where}; {INSTALL_HINT}")
    return path


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright, chromium_path: Path) -> Iterator[Browser]:
    """One headless chromium for the whole package; each test opens its own context."""
    browser = playwright.chromium.launch(
        executable_path=str(chromium_path), headless=True, args=BROWSER_ARGS
    )
    try:
        yield browser
    finally:
        browser.close()


def _context(browser: Browser, **options: Any) -> Iterator[BrowserContext]:
    ctx = browser.new_context(**options)
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh context (no cookies) that enforces the app's Content-Security-Policy."""
    yield from _context(browser)


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


# -- the server -----------------------------------------------------------------------------


@pytest.fixture(scope="package")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The embedded demo, served once for this package from a fresh temporary data dir.

    ``live_server.log_path`` is the server's stdout and stderr.
    """
    with run_server(tmp_path_factory.mktemp("live-server")) as server:
        yield server


# -- axe-core -------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def axe_script() -> Path:
    if not AXE_JS.is_file():
        _unavailable(f"axe-core not installed ({AXE_JS} is missing); {INSTALL_HINT}")
    return AXE_JS


@pytest.fixture
def axe_context(browser: Browser) -> Iterator[BrowserContext]:
    """A context for pages that axe scans.

    The app's Content-Security-Policy (``script-src 'self'``) blocks the inline script that
    ``add_script_tag`` injects, so this context, and only this one, bypasses CSP. Every other
    context (``context``, the no-JavaScript test) keeps the policy in force.
    """
    yield from _context(browser, bypass_csp=True)


@pytest.fixture
def axe_page(axe_context: BrowserContext) -> Page:
    return axe_context.new_page()


@pytest.fixture
def axe(axe_script: Path) -> Axe:
    """``axe(page)``: inject axe-core and run the WCAG 2.0/2.1 A and AA rules on the page."""

    def run(page: Page) -> AxeResult:
        return run_axe(page, axe_script)

    return run
