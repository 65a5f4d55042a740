"""Fixtures for the browser tests: one server with its local agent and one Chromium per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import skip_or_fail
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, chromium_missing
from tests.support import RunningServer, start_server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Module-scoped: Playwright's sync API keeps an asyncio loop running in this thread while it is open,
    which would break every later test that calls asyncio.run()."""
    reason = chromium_missing()
    if reason:
        skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`ctower up` WITH its local agent (sampling every 2 s), so the pages show this machine's real data."""
    if chromium_missing():
        skip_or_fail(chromium_missing() or "")
    srv = start_server(tmp_path_factory.mktemp("dashboard") / "data", env={"CT_AGENT_INTERVAL_S": "2"}, args=[])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def admin_password(dashboard: RunningServer) -> str:
    path = dashboard.data_dir / "admin-password"
    assert path.stat().st_mode & 0o777 == 0o600
    return path.read_text().strip()
