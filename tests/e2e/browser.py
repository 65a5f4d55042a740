"""Playwright in Debian's Chromium for the end-to-end tests: launch, log in, screenshots, console errors."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def chromium_missing() -> str | None:
    """None when the browser and the Playwright package are there, else why not."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package 'playwright' is not installed (pip install -e '.[dev]')"
    return None


@dataclass
class Tab:
    """A page plus what its browser console said; every test fails on a console error."""

    page: object
    test_name: str
    errors: list[str] = field(default_factory=list)
    shots: int = 0

    def shot(self, what: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.shots += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.test_name}-{self.shots:02d}-{what}")
        path = SCREENSHOTS / f"{safe}.png"
        self.page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        return path


@contextmanager
def open_tab(browser: object, test_name: str, width: int = 1280, height: int = 900) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
    page = context.new_page()
    page.set_default_timeout(float(os.environ.get("CT_E2E_TIMEOUT_MS", "30000")))
    tab = Tab(page=page, test_name=test_name)
    page.on("console", lambda msg: tab.errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error"
            else None)
    page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))
    try:
        yield tab
    finally:
        context.close()
    assert not tab.errors, "browser console errors:\n" + "\n".join(tab.errors)


def log_in(tab: Tab, base_url: str, name: str, password: str, path: str = "/") -> None:
    page = tab.page
    page.goto(base_url + path)  # type: ignore[attr-defined]
    page.get_by_label("User name").fill(name)  # type: ignore[attr-defined]
    page.get_by_label("Password").fill(password)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Log in").click()  # type: ignore[attr-defined]
    page.get_by_test_id("whoami").wait_for()  # type: ignore[attr-defined]
