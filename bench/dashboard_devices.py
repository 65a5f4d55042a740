"""Dashboard benchmark: the devices list with 1,000 devices pushing telemetry, load time and live-update CPU."""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import psutil
from tests.e2e.browser import chromium_missing
from tests.support import start_server

from bench._browser import Pusher, admin_page, timed_loads, watch

# True once the page says it lists all `n` devices and the table shows its first page of rows.
ALL_LISTED = """n => {
  const count = document.querySelector('[data-testid=device-count]');
  return !!count && count.textContent.startsWith(n + ' of ' + n)
    && document.querySelectorAll('tbody tr').length >= Math.min(n, 50);
}"""


def _import(url: str, admin_token: str, n: int) -> list[dict[str, str]]:
    rows = "\n".join(f"sensor-{i:04d},s{i:04d},sensor,aisle-{i % 10}" for i in range(n))
    response = httpx.post(url + "/api/v1/devices/import", content=f"name,id,type,labels\n{rows}\n",
                          headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "text/csv"},
                          timeout=300)
    response.raise_for_status()
    return response.json()["created"]


def _push(client: httpx.Client, device: dict[str, str]) -> None:
    body = {"values": {"temperature": round(random.uniform(15, 30), 2), "humidity": round(random.uniform(30, 60), 1)}}
    client.post(f"/api/v1/devices/{device['id']}/telemetry", json=body,
                headers={"Authorization": f"Bearer {device['token']}"}).raise_for_status()


def run(devices: int = 1000, window_s: float = 60.0, loads: int = 3) -> dict[str, Any]:
    reason = chromium_missing()
    if reason:
        return {"skipped": reason}
    with TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp) / "data")
        created: list[dict[str, str]] = []
        pusher = Pusher(srv.url, devices, lambda client, i: _push(client, created[i]))
        try:
            started = time.monotonic()
            created += _import(srv.url, srv.token, devices)
            import_s = time.monotonic() - started
            pusher.push_all()
            pusher.start()
            with admin_page(srv, "/devices", "bench-dashboard-devices") as page:
                page.wait_for_function(ALL_LISTED, arg=devices, timeout=120_000)  # warm-up load
                load_s = timed_loads(page, srv.url + "/devices", ALL_LISTED, devices, loads)
                t0 = time.monotonic()
                page.get_by_label("Search").fill(f"sensor-{devices - 1:04d}")
                page.wait_for_function("() => document.querySelector('[data-testid=device-count]')"
                                       ".textContent.startsWith('1 of')", timeout=60_000)
                search_s = time.monotonic() - t0
                page.get_by_label("Search").fill("")
                page.wait_for_function(ALL_LISTED, arg=devices, timeout=120_000)
                browser_cpu, (server_cpu,) = watch(window_s, srv.proc.pid)
        finally:
            pusher.close()
            srv.stop()
    return {
        "devices": devices,
        "import_s": round(import_s, 1),
        "load_s": [round(s, 3) for s in load_s],
        "load_s_median": round(statistics.median(load_s), 3),
        "search_s": round(search_s, 3),
        "window_s": browser_cpu["wall_s"],
        "browser_cpu_percent": browser_cpu["cpu_percent"],
        "browser_rss_sum_mb": browser_cpu["rss_mb"],
        "server_cpu_percent": server_cpu["cpu_percent"],
        "server_rss_mb": server_cpu["rss_mb"],
        "push_rounds": pusher.rounds,
        "push_errors": pusher.errors[:5],
        "machine_cpus": psutil.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="window with the page open")
    parser.add_argument("--loads", type=int, default=3, help="page loads timed (median reported)")
    args = parser.parse_args()
    print(json.dumps(run(args.devices, args.seconds, args.loads)))


if __name__ == "__main__":
    main()
