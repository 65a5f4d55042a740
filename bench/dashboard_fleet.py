"""Dashboard benchmark: the fleet page with 500 simulated hosts in Chromium, load time and live-update CPU."""

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

from bench._browser import PUSH_INTERVAL_S, Pusher, admin_page, timed_loads, watch

METRICS_PATH = "/api/v1/monitor/hosts/metrics"
HEARTBEAT_PATH = "/api/v1/agents/heartbeat"
CARD = "[data-host]"
# True once `n` host cards are in the page and laid out (Playwright's "visible": a non-empty box).
ALL_CARDS_VISIBLE = """n => {
  const cards = document.querySelectorAll('[data-host]');
  if (cards.length < n) return false;
  let shown = 0;
  for (const c of cards) if (c.getClientRects().length > 0 && c.offsetWidth > 0) shown++;
  return shown >= n;
}"""


def _enrol(url: str, admin_token: str, name: str) -> str:
    headers = {"Authorization": f"Bearer {admin_token}"}
    enrolment = httpx.post(url + "/api/v1/agents/enrollments", json={"ttl_s": 600}, headers=headers, timeout=60)
    enrolment.raise_for_status()
    agent = httpx.post(url + "/api/v1/agents/enroll",
                       json={"enrolment_token": enrolment.json()["token"], "name": name}, timeout=60)
    agent.raise_for_status()
    return agent.json()["token"]


def _body(ts: float) -> dict[str, Any]:
    def value(hi: float) -> float:
        return round(random.uniform(0, hi), 2)

    eth0 = {"interface": "eth0"}
    return {"ts": ts, "dropped": 0, "samples": [
        {"name": "host.cpu.percent", "labels": {}, "value": value(100)},
        {"name": "host.memory.percent", "labels": {}, "value": value(100)},
        {"name": "host.disk.percent", "labels": {"mount": "/"}, "value": value(100)},
        {"name": "host.net.rx_bytes_per_s", "labels": eth0, "value": value(5e6)},
        {"name": "host.net.tx_bytes_per_s", "labels": eth0, "value": value(5e6)},
    ]}


def _push(client: httpx.Client, token: str, ts: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    client.post(METRICS_PATH, json=_body(ts), headers=headers).raise_for_status()
    client.post(HEARTBEAT_PATH, json={"interval_s": PUSH_INTERVAL_S}, headers=headers).raise_for_status()


def run(hosts: int = 500, window_s: float = 60.0, loads: int = 3) -> dict[str, Any]:
    reason = chromium_missing()
    if reason:
        return {"skipped": reason}
    with TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp) / "data")
        tokens: list[str] = []
        pusher = Pusher(srv.url, hosts, lambda client, i: _push(client, tokens[i], time.time()))
        try:
            started = time.monotonic()
            tokens += pusher.pool.map(lambda i: _enrol(srv.url, srv.token, f"sim-{i:04d}"), range(hosts))
            enrol_s = time.monotonic() - started
            now = time.time()
            for back in (20.0, 10.0, 0.0):  # a few samples each, so sparklines have points
                pusher.each(lambda client, i, back=back: _push(client, tokens[i], now - back))
            pusher.start()
            with admin_page(srv, "/monitor", "bench-dashboard-fleet") as page:
                page.wait_for_function(ALL_CARDS_VISIBLE, arg=hosts, timeout=120_000)  # warm-up load
                load_s = timed_loads(page, srv.url + "/monitor", ALL_CARDS_VISIBLE, hosts, loads)
                cards = page.locator(CARD).count()
                cpu_label = page.locator(f"{CARD} [data-metric=cpu]").first
                first_values = [cpu_label.inner_text()]  # the first card's value changes while watched
                browser_cpu, (server_cpu, load_gen_cpu) = watch(window_s, srv.proc.pid, psutil.Process().pid)
                first_values.append(cpu_label.inner_text())
        finally:
            pusher.close()
            srv.stop()
    return {
        "hosts": hosts,
        "cards_rendered": cards,
        "enrol_s": round(enrol_s, 1),
        "load_s": [round(s, 3) for s in load_s],
        "load_s_median": round(statistics.median(load_s), 3),
        "window_s": browser_cpu["wall_s"],
        "browser_cpu_percent": browser_cpu["cpu_percent"],
        "browser_cpu_s": browser_cpu["cpu_s"],
        "browser_processes": browser_cpu["processes"],
        "browser_processes_gone": browser_cpu["processes_gone"],
        "browser_rss_sum_mb": browser_cpu["rss_mb"],
        "server_cpu_percent": server_cpu["cpu_percent"],
        "server_rss_mb": server_cpu["rss_mb"],
        "load_generator_cpu_percent": load_gen_cpu["cpu_percent"],
        "push_rounds": pusher.rounds,
        "push_errors": pusher.errors[:5],
        "first_card_cpu_start_end": first_values,
        "targets": {"load_s": "< 2", "browser_cpu_percent": "< 20"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0, help="window with the page open")
    parser.add_argument("--loads", type=int, default=3, help="page loads timed (median reported)")
    args = parser.parse_args()
    print(json.dumps(run(args.hosts, args.seconds, args.loads)))


if __name__ == "__main__":
    main()
