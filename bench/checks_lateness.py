"""Check-scheduling lateness: N HTTP checks against a fast local target; p50/p99 start lateness and server CPU.

Run from the repository root: `.venv/bin/python bench/checks_lateness.py --checks 2000 --interval 10 --duration 60`.
Prints one JSON line. Lateness is how long after its deadline a run started (the runner records it in each
result's detail as `lateness_ms`), read from the server's SQLite database for the measured window.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import free_port, start_server

TARGET_APP = """
import sys, uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off", access_log=False)
"""


def start_target(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", TARGET_APP, str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("target did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def read_window(db_path: Path, start: dt.datetime, end: dt.datetime) -> tuple[list[float], int, int]:
    """Lateness (ms) of every scheduled run that started in [start, end), and ok / failed counts."""
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT json_extract(detail, '$.lateness_ms'), ok FROM monitor_check_results WHERE ts >= ? AND ts < ?",
            (start.strftime(fmt), end.strftime(fmt)),
        ).fetchall()
    finally:
        conn.close()
    lateness = [float(r[0]) for r in rows if r[0] is not None]
    ok = sum(1 for r in rows if r[1])
    return lateness, ok, len(rows) - ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=10.0, help="check interval, seconds")
    parser.add_argument("--duration", type=float, default=60.0, help="measured window, seconds")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ctower-bench-"))
    target_port = free_port()
    target = start_target(target_port)
    server = start_server(work / "data")
    try:
        url = f"http://127.0.0.1:{target_port}/"
        added_at = time.monotonic()
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}, timeout=60
        ) as client:

            def add(i: int) -> None:
                body = {
                    "name": f"bench-{i:05d}",
                    "type": "http",
                    "target": url,
                    "interval": args.interval,
                    "timeout": min(5.0, args.interval),
                }
                client.post("/api/v1/monitor/checks", json=body).raise_for_status()

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(add, range(args.checks)))
        add_s = time.monotonic() - added_at
        time.sleep(args.interval)  # one full interval so every check is on its cadence

        proc = psutil.Process(server.proc.pid)
        proc.cpu_percent(None)
        start = dt.datetime.now(dt.UTC)
        time.sleep(args.duration)
        end = dt.datetime.now(dt.UTC)
        cpu = proc.cpu_percent(None)
        rss_mb = proc.memory_info().rss / 2**20
        time.sleep(2)  # let the last results flush
        lateness, ok, failed = read_window(work / "data" / "ctower.db", start, end)
    finally:
        server.stop()
        target.kill()
        target.wait(10)
    expected = args.checks * args.duration / args.interval
    print(
        json.dumps(
            {
                "bench": "checks_lateness",
                "checks": args.checks,
                "interval_s": args.interval,
                "duration_s": args.duration,
                "add_checks_s": round(add_s, 2),
                "runs": ok + failed,
                "runs_expected": round(expected),
                "runs_failed": failed,
                "lateness_ms_p50": round(percentile(lateness, 0.50), 2) if lateness else None,
                "lateness_ms_p99": round(percentile(lateness, 0.99), 2) if lateness else None,
                "lateness_ms_max": round(max(lateness), 2) if lateness else None,
                "lateness_ms_mean": round(statistics.fmean(lateness), 2) if lateness else None,
                "server_cpu_percent": round(cpu, 1),
                "server_rss_mb": round(rss_mb, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
