"""`make bench`: Control Tower and its peers measured in one run; JSON to bench/results, a table to stdout."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench import ingest, iot, peer_node_exporter, peer_prometheus, rpa

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
POSTGRES_URL = os.environ.get("CT_TEST_POSTGRES_URL", "postgresql+psycopg://ctower:ctower@127.0.0.1:5432/ctower_test")
BENCH_DATABASE = "ctower_bench"
NAMES = [
    "ingest-sqlite",
    "ingest-postgresql",
    "peer-prometheus",
    "agent-overhead",
    "peer-node-exporter",
    "checks",
    "dashboard-fleet",
    "dashboard-devices",
    "iot-embedded",
    "iot-mosquitto",
    "iot-backlog",
    "iot-commands",
    "iot-idle",
    "rpa",
]

Result = dict[str, Any]


def _durations(quick: bool) -> dict[str, float]:
    if quick:
        return {"ingest": 20, "prometheus": 20, "prometheus_warmup": 15, "agent": 20, "checks": 30, "dashboard": 20,
                "iot": 15, "commands": 200, "robots": 20}
    return {"ingest": 30, "prometheus": 60, "prometheus_warmup": 20, "agent": 300, "checks": 300, "dashboard": 60,
            "iot": 60, "commands": 1000, "robots": 200}


def python_speed_ms() -> float:
    """A fixed pure-Python workload (dict, string and float operations), best of five, in ms: this VM's
    speed for Python varies between sessions (twice as slow has been seen), so results carry it."""
    def work() -> float:
        totals: dict[str, float] = {}
        for i in range(200_000):
            key = f"k{i % 5000}"
            totals[key] = totals.get(key, 0.0) + i * 0.5
        return sum(totals.values())

    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    mem_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    os_name = platform.platform()
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"') + f", kernel {platform.release()}"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 2**20, 1),
        "os": os_name,
        "python": platform.python_version(),
    }


def _skipped(reason: str) -> Result:
    return {"skipped": reason}


def _bench_postgres_url() -> str | None:
    """A freshly recreated `ctower_bench` database on the test server; None when PostgreSQL is unreachable."""
    admin_url = make_url(POSTGRES_URL)
    try:
        engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)"))
            conn.execute(text(f"CREATE DATABASE {BENCH_DATABASE}"))
        engine.dispose()
    except Exception as exc:
        print(
            f"  PostgreSQL not reachable at {admin_url.render_as_string(hide_password=True)}: "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}",
            file=sys.stderr,
        )
        return None
    return admin_url.set(database=BENCH_DATABASE).render_as_string(hide_password=False)


def _ingest(database_url: str | None, seconds: float) -> Result:
    return ingest.run(database_url, agents=50, batch=1000, seconds=seconds, workers=8)


def _ingest_postgresql(seconds: float) -> Result:
    url = _bench_postgres_url()
    if url is None:
        return _skipped(
            f"PostgreSQL not reachable at {make_url(POSTGRES_URL).render_as_string()} (set CT_TEST_POSTGRES_URL)"
        )
    return _ingest(url, seconds)


def _peer_missing(binary: str) -> Result:
    return _skipped(f"/usr/bin/{binary} not installed; install with: sudo {peer_prometheus.INSTALL}")


def _prometheus(seconds: float, warmup: float) -> Result:
    if peer_prometheus.available() is None:
        return _peer_missing(peer_prometheus.BINARY)
    return peer_prometheus.run(seconds, warmup=warmup)


def _module(name: str) -> Any | None:
    if importlib.util.find_spec(f"bench.{name}") is None:
        return None
    return importlib.import_module(f"bench.{name}")


def _agent(seconds: float) -> Result:
    module = _module("agent_overhead")
    if module is None:
        return _skipped("bench/agent_overhead.py not present")
    return module.run(seconds=seconds, interval=10.0)


def _node_exporter(seconds: float) -> Result:
    if peer_node_exporter.available() is None:
        return _peer_missing(peer_node_exporter.BINARY)
    return peer_node_exporter.run(seconds, interval=10.0)


def _checks(seconds: float) -> Result:
    """bench/checks_lateness.py is a script printing one JSON line; it runs as one, from the repository root."""
    script = ROOT / "bench" / "checks_lateness.py"
    if not script.exists():
        return _skipped("bench/checks_lateness.py not present")
    cmd = [sys.executable, str(script), "--checks", "2000", "--interval", "10", "--duration", str(seconds)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[1:])} exited with {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def _dashboard(seconds: float) -> Result:
    module = _module("dashboard_fleet")
    if module is None:
        return _skipped("bench/dashboard_fleet.py not present")
    return module.run(hosts=500, window_s=seconds, loads=3)


def _dashboard_devices(seconds: float) -> Result:
    module = _module("dashboard_devices")
    if module is None:
        return _skipped("bench/dashboard_devices.py not present")
    return module.run(devices=1000, window_s=seconds, loads=3)


def _iot_mosquitto(seconds: float) -> Result:
    if not Path(iot.MOSQUITTO).exists():
        return _skipped("mosquitto is not installed; install with: sudo apt-get install mosquitto mosquitto-clients")
    # The lean generator (bench/mqtt_load.py): the paho simulator takes about a core to offer 20,000 msg/s, the
    # core the server and Mosquitto need on a 2-core machine; ready-made packets cost about a third of that.
    return iot.telemetry("mosquitto", devices=1000, rate=22, seconds=seconds, processes=1, generator="lean")


def _iot_backlog(seconds: float) -> Result:
    if not Path(iot.MOSQUITTO).exists():
        return _skipped("mosquitto is not installed; install with: sudo apt-get install mosquitto mosquitto-clients")
    return iot.backlog(devices=1000, rate=10, seconds=seconds / 2)


def _busy_seconds() -> float:
    """CPU seconds spent by the whole machine, all cores (guest time is already inside user)."""
    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


def _guarded(name: str, fn: Callable[[], Result]) -> Result:
    """One benchmark's failure is recorded and the run goes on."""
    started = time.monotonic()
    busy_before = _busy_seconds()
    load_before = os.getloadavg()[0]
    try:
        result = fn()
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{exc.__class__.__name__}: {str(exc)[:500]}"}
    wall = time.monotonic() - started
    result["bench_wall_s"] = round(wall, 1)
    # Everything that ran on the machine meanwhile, ours and the peers' included: a figure taken while
    # other work was running (a test suite, a build) is not comparable, and this says when that happened.
    result["machine_busy_percent"] = round((_busy_seconds() - busy_before) / wall / (os.cpu_count() or 1) * 100, 1)
    result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    status = "skipped: " + result["skipped"] if "skipped" in result else result.get("error", "ok")
    print(f"  {name}: {status} ({result['bench_wall_s']} s)", file=sys.stderr, flush=True)
    return result


def _run_into(holder: list[Result], name: str, fn: Callable[[], Result]) -> None:
    holder.append(_guarded(name, fn))


def run(selected: list[str], quick: bool, agent_seconds: float | None = None) -> dict[str, Result]:
    d = _durations(quick)
    if agent_seconds is not None:
        d["agent"] = agent_seconds
    plan: dict[str, Callable[[], Result]] = {
        "ingest-sqlite": lambda: _ingest(None, d["ingest"]),
        "ingest-postgresql": lambda: _ingest_postgresql(d["ingest"]),
        "peer-prometheus": lambda: _prometheus(d["prometheus"], d["prometheus_warmup"]),
        "agent-overhead": lambda: _agent(d["agent"]),
        "peer-node-exporter": lambda: _node_exporter(d["agent"]),
        "checks": lambda: _checks(d["checks"]),
        "dashboard-fleet": lambda: _dashboard(d["dashboard"]),
        "dashboard-devices": lambda: _dashboard_devices(d["dashboard"]),
        "iot-embedded": lambda: iot.telemetry("embedded", devices=1000, rate=5, seconds=d["iot"]),
        "iot-mosquitto": lambda: _iot_mosquitto(d["iot"]),
        "iot-backlog": lambda: _iot_backlog(d["iot"]),
        "iot-commands": lambda: iot.commands(devices=1000, count=int(d["commands"])),
        "iot-idle": lambda: iot.idle(devices=1000),
        "rpa": lambda: rpa.run(items=100, robots=int(d["robots"])),
    }
    results: dict[str, Result] = {}
    for name in NAMES:
        if name not in selected or name in results:
            continue
        print(f"running {name} …", file=sys.stderr, flush=True)
        if name == "agent-overhead" and "peer-node-exporter" in selected:
            # Same window, same scrape interval: each figure is that process's own CPU time, and both are
            # far below one core on a 2-core machine, so they do not compete (docs/benchmarks.md shows it).
            print("running peer-node-exporter concurrently …", file=sys.stderr, flush=True)
            holder: list[Result] = []
            peer_name = "peer-node-exporter"
            peer = threading.Thread(target=_run_into, args=(holder, peer_name, plan[peer_name]))
            peer.start()
            results[name] = _guarded(name, plan[name])
            peer.join()
            results["peer-node-exporter"] = holder[0]
            results[name]["concurrent_with"] = "peer-node-exporter"
            results["peer-node-exporter"]["concurrent_with"] = "agent-overhead"
            continue
        results[name] = _guarded(name, plan[name])
    return results


def _get(result: Result | None, key: str) -> Any:
    if not result:
        return None
    return result.get(key)


def _num(value: Any, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "—"
    text_value = f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)
    return text_value + unit


def _status(result: Result | None) -> str | None:
    if result is None:
        return "not run"
    if "skipped" in result:
        return "skipped"
    if "error" in result:
        return "error"
    return None


def _cell(result: Result | None, render: Callable[[Result], str]) -> str:
    return _status(result) or render(result)  # type: ignore[arg-type]


def _per_core(result: Result, rate_key: str, cpu_key: str) -> str:
    rate, cpu = result.get(rate_key), result.get(cpu_key)
    per_core = f" ({_num(rate / cpu * 100)} per core)" if rate and cpu else ""
    return _num(rate) + per_core


def table(results: dict[str, Result]) -> str:
    prom = results.get("peer-prometheus")
    node = results.get("peer-node-exporter")
    agent = results.get("agent-overhead")
    checks = results.get("checks")
    fleet = results.get("dashboard-fleet")
    prom_cell = _cell(prom, lambda r: _per_core(r, "samples_per_s", "prometheus_cpu_percent") + " Prometheus")
    sqlite, postgresql = results.get("ingest-sqlite"), results.get("ingest-postgresql")
    ours_ingest: Callable[[Result], str] = lambda r: _per_core(r, "samples_per_s", "server_cpu_percent")  # noqa: E731
    rows = [
        ("Ingest, SQLite: samples/s stored", _cell(sqlite, ours_ingest), prom_cell, "≥ 100,000"),
        ("Ingest, PostgreSQL: samples/s stored", _cell(postgresql, ours_ingest), prom_cell, "—"),
        (
            "Agent CPU, % of one core (10 s interval)",
            _cell(agent, lambda r: _num(r.get("cpu_percent"), 3, " %")),
            _cell(node, lambda r: _num(r.get("cpu_percent"), 3, " % node_exporter")),
            "≤ 0.3 %",
        ),
        (
            "Agent RSS",
            _cell(agent, lambda r: _num(r.get("rss_mb"), 1, " MB")),
            _cell(node, lambda r: _num(r.get("rss_mb"), 1, " MB node_exporter")),
            "—",
        ),
        (
            "Checks: p99 lateness of starts (2,000 HTTP, 10 s)",
            _cell(checks, lambda r: _num(r.get("lateness_ms_p99"), 1, " ms")),
            "—",
            "< 1 s",
        ),
        (
            "Checks: server CPU, % of one core",
            _cell(checks, lambda r: _num(r.get("server_cpu_percent"), 1, " %")),
            "—",
            "—",
        ),
        (
            "Fleet page, 500 hosts: load to all cards, median of 3",
            _cell(fleet, lambda r: _num(r.get("load_s_median"), 2, " s")),
            "—",
            "< 2 s",
        ),
        (
            "Fleet page open: Chromium CPU, % of one core",
            _cell(fleet, lambda r: _num(r.get("browser_cpu_percent"), 1, " %")
                  + f" (server {_num(r.get('server_cpu_percent'), 1, ' %')})"),
            "—",
            "< 20 %",
        ),
    ]
    rows += _iot_rows(results) + _rpa_rows(results.get("rpa"))
    lines = ["| Benchmark | Control Tower | Peer | Target |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    notes = [f"- {name}: {r['skipped']}" for name, r in results.items() if "skipped" in r]
    notes += [f"- {name}: ERROR {r['error']}" for name, r in results.items() if "error" in r]
    busy = ", ".join(f"{name} {r['machine_busy_percent']} %" for name, r in results.items() if "skipped" not in r)
    if busy:
        notes.append(f"- whole machine busy (all cores, all processes) during: {busy}")
    return "\n".join(lines + (["", *notes] if notes else []))


def _iot_rows(results: dict[str, Result]) -> list[tuple[str, str, str, str]]:
    embedded, mosquitto = results.get("iot-embedded"), results.get("iot-mosquitto")
    backlog = results.get("iot-backlog")
    commands, idle = results.get("iot-commands"), results.get("iot-idle")
    devices = results.get("dashboard-devices")
    thingsboard = "ThingsBoard (documented): 1,111 msg/s at 20 % of 4 vCPU"

    def telemetry(r: Result) -> str:
        return (f"{_num(r.get('messages_per_s'))} msg/s, server {_num(r.get('server_cpu_percent'), 0, ' %')} CPU, "
                f"{_num(r.get('server_rss_mb'), 0, ' MB')}")

    return [
        ("IoT telemetry, 1,000 devices, embedded broker: stored end to end", _cell(embedded, telemetry),
         thingsboard, "≥ 3,000 msg/s"),
        ("IoT telemetry, 1,000 devices, Mosquitto: stored end to end", _cell(mosquitto, telemetry),
         thingsboard, "≥ 20,000 msg/s"),
        ("IoT server alone, Mosquitto: a 1,000-device backlog drained, stored end to end", _cell(backlog, telemetry),
         "—", "—"),
        ("IoT command round trip p50 / p99 (1,000 commands)",
         _cell(commands, lambda r: f"{_num(r.get('rtt_ms_p50'), 1)} / {_num(r.get('rtt_ms_p99'), 1)} ms"), "—",
         "p99 < 50 ms"),
        ("IoT idle devices on the embedded broker: memory per device",
         _cell(idle, lambda r: f"{_num(r.get('kb_per_device'), 1, ' KB')} ({_num(r.get('devices'))} devices)"), "—",
         "—"),
        ("Devices page, 1,000 devices: load, median of 3",
         _cell(devices, lambda r: _num(r.get("load_s_median"), 2, " s")), "—", "< 2 s"),
    ]


def _rpa_rows(r: Result | None) -> list[tuple[str, str, str, str]]:
    return [
        ("Robot environment: cold build (robotframework / rpaframework) / cached start to first keyword",
         _cell(r, lambda x: f"{_num(x.get('cold_env_build_s'), 1, ' s')} / "
                            f"{_num(x.get('cold_env_build_rpaframework_s'), 1, ' s')} / "
                            f"{_num(x.get('cached_to_first_keyword_s_median'), 2, ' s')}"),
         "RCC (documented): 1 to 5 min cold", "cached < 1 s"),
        ("Work item to task process, p50 / p99",
         _cell(r, lambda x: f"{_num(x.get('dispatch_ms_p50'))} / {_num(x.get('dispatch_ms_p99'))} ms"), "—", "—"),
        ("200 one-second robots on 2 agents",
         _cell(r, lambda x: f"{_num(x.get('wall_s'), 1, ' s')} ({_num(x.get('efficiency_percent'), 0, ' %')} "
                            "of ideal)"), "—", "—"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short durations (~20 s each), for a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=NAMES,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(NAMES)}",
    )
    parser.add_argument("--agent-seconds", type=float, default=None, help="window of agent and node_exporter")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON results go")
    args = parser.parse_args()
    selected = args.only or NAMES
    started = datetime.now(UTC)
    speed = python_speed_ms()  # before the benchmarks, on an idle machine
    results = run(selected, args.quick, args.agent_seconds)
    report = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "machine": {**machine(), "python_speed_ms": speed},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    kind = "QUICK run (smoke durations, not the reference figures)" if args.quick else "Full run"
    print(
        f"\n{kind}, {report['date']} — {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['os']}, "
        f"Python {m['python']}; Python speed probe {m['python_speed_ms']} ms (lower is faster)\n"
    )
    print(table(results))
    print(f"\nJSON: {args.output}")


if __name__ == "__main__":
    main()
