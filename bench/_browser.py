"""What the dashboard benchmarks share: a fleet that keeps pushing while the page is open, a logged-in page in
Chromium, timed page loads, and the browser's and the server's CPU over a watched window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import psutil
from tests.e2e.browser import CHROMIUM, CHROMIUM_ARGS, log_in, open_tab
from tests.support import RunningServer

from bench._meter import ProcessMeter

PUSH_INTERVAL_S = 10.0


class Pusher(threading.Thread):
    """Calls `push(client, i)` for every member of a fleet of `size`, every 10 s as real agents and devices
    would, over a pool of HTTP clients, until `stopped` is set. Errors are recorded, the window goes on."""

    def __init__(self, base_url: str, size: int, push: Callable[[httpx.Client, int], None], senders: int = 8) -> None:
        super().__init__(daemon=True)
        self.size, self.push = size, push
        self.pool = ThreadPoolExecutor(senders)
        self.clients = [httpx.Client(base_url=base_url, timeout=60) for _ in range(senders)]
        self.stopped = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []

    def each(self, call: Callable[[httpx.Client, int], None]) -> None:
        """`call(client, i)` for every member of the fleet, over the pool."""
        list(self.pool.map(lambda i: call(self.clients[i % len(self.clients)], i), range(self.size)))

    def push_all(self) -> None:
        self.each(self.push)

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                self.push_all()
                self.rounds += 1
            except Exception as exc:  # recorded in the result, the window goes on
                self.errors.append(f"{exc.__class__.__name__}: {str(exc)[:200]}")
            self.stopped.wait(max(0.0, PUSH_INTERVAL_S - (time.monotonic() - started)))

    def close(self) -> None:
        self.stopped.set()
        if self.is_alive():
            self.join(60)
        self.pool.shutdown()
        for client in self.clients:
            client.close()


@contextmanager
def admin_page(srv: RunningServer, path: str, tab_name: str) -> Iterator[Any]:
    """A Chromium page logged in as the admin, at `path`; the browser is closed afterwards."""
    from playwright.sync_api import sync_playwright

    password = (srv.data_dir / "admin-password").read_text().strip()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            with open_tab(browser, tab_name) as tab:
                log_in(tab, srv.url, "admin", password, path)
                yield tab.page
        finally:
            browser.close()


def watch(window_s: float, server_pid: int, *other_pids: int) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The browser's CPU and each process's (the server first) over `window_s`, sampling RSS every 5 s
    without busy-polling."""
    meters = [ProcessMeter(pid) for pid in (server_pid, *other_pids)]
    chromium = chromium_meter()
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        meters[0].sample()
    return chromium(), [m.stop() for m in meters]


def timed_loads(page: Any, url: str, ready_js: str, arg: int, loads: int) -> list[float]:
    """Seconds from navigation until `ready_js(arg)` holds, for each of `loads` page loads."""
    times = []
    for _ in range(loads):
        t0 = time.monotonic()
        page.goto(url)
        page.wait_for_function(ready_js, arg=arg, timeout=120_000)
        times.append(time.monotonic() - t0)
    return times


def _chromium_processes() -> list[psutil.Process]:
    """The browser process Playwright started (a chromium whose parent is not one) and all its children."""
    found: list[psutil.Process] = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "chrom" in proc.name().lower() and "chrom" not in proc.parent().name().lower():
                found += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def _cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return t.user + t.system


def chromium_meter() -> Callable[[], dict[str, Any]]:
    """CPU of the browser and its children over a window; children born during it count from zero.
    A child that exits within the window loses its CPU time (none did in our runs: see `processes`)."""
    before = {p.pid: (p, _cpu_s(p)) for p in _chromium_processes()}
    t0 = time.monotonic()

    def stop() -> dict[str, Any]:
        wall = time.monotonic() - t0
        now = {p.pid: p for p in _chromium_processes()}
        cpu = sum(_cpu_s(p) - (before[pid][1] if pid in before else 0.0) for pid, p in now.items())
        return {
            "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 3),
            "cpu_percent": round(cpu / wall * 100, 2),
            "processes": len(now),
            "processes_gone": len(set(before) - set(now)),
            "rss_mb": round(sum(p.memory_info().rss for p in now.values()) / 2**20, 1),
        }

    return stop
