"""Agent overhead: a real `ctower agent` against a real server, its CPU time as % of one core, and its RSS."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench._meter import ProcessMeter, free_port

TARGET_CPU_PERCENT = 0.3
AGENT_NAME = "bench-agent"


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {what}:\n{tail}")
        try:
            value = predicate()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CT_")}
    env.update(extra)
    return env


def run(
    seconds: float = 300.0, interval: float = 10.0, server: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """Measure an agent for `seconds` after its first metrics arrived; starts a server unless given one."""
    workdir = Path(tempfile.mkdtemp(prefix="ctower-bench-agent-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if server is None:
            port = free_port()
            data_dir = workdir / "data"
            server = f"http://127.0.0.1:{port}"
            server_log = workdir / "server.log"
            with open(server_log, "wb") as out:
                srv = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "controltower",
                        "up",
                        "--no-agent",
                        "--port",
                        str(port),
                        "--data-dir",
                        str(data_dir),
                    ],
                    env=_clean_env({"CT_DATA_DIR": str(data_dir), "CT_LOG_LEVEL": "warning",
                                    "CT_MQTT_PORT": str(free_port())}),  # 1883 may be a Mosquitto's
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                )
            procs.append(srv)
            _wait(
                lambda: httpx.get(f"{server}/readyz", timeout=2).status_code == 200,
                90,
                "server ready",
                srv,
                server_log,
            )
            token = (data_dir / "admin-token").read_text().strip()
        if token is None:
            raise ValueError("an admin token is needed with --server (--token or CT_TOKEN)")
        admin = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        enrolment = admin.post("/api/v1/agents/enrollments", json={"ttl_s": 600, "labels": ["bench"]})
        enrolment.raise_for_status()
        agent_log = workdir / "agent.log"
        with open(agent_log, "wb") as out:
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controltower",
                    "agent",
                    "--server",
                    server,
                    "--state-dir",
                    str(workdir / "agent"),
                    "--name",
                    AGENT_NAME,
                    "--interval",
                    str(interval),
                ],
                env=_clean_env(
                    {
                        "CT_AGENT_TOKEN": enrolment.json()["token"],
                        "CT_LOG_LEVEL": "warning",
                        "CT_AGENT_HEARTBEAT_S": str(interval),
                    }
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        procs.append(agent)

        def latest() -> list[dict[str, Any]]:
            response = admin.get(
                "/api/v1/series/latest", params={"name": "host.cpu.percent", "label": f"host:{AGENT_NAME}"}
            )
            return response.json() if response.status_code == 200 else []

        # Warm-up: enrolment, imports and the first sample are startup costs, outside the window.
        _wait(latest, interval * 3 + 60, "the agent's first metrics", agent, agent_log)
        times = psutil.Process(agent.pid).cpu_times()
        startup_cpu = round(times.user + times.system, 3)
        meter = ProcessMeter(agent.pid)
        first_ts = latest()[0]["ts"]
        started = time.monotonic()
        while (left := seconds - (time.monotonic() - started)) > 0:
            time.sleep(min(interval, left))
            if agent.poll() is not None:
                raise RuntimeError(f"agent exited with {agent.returncode}:\n{agent_log.read_text()[-3000:]}")
            meter.sample()
        figures = meter.stop()
        last_ts = latest()[0]["ts"]
        query = admin.get(
            "/api/v1/series/query",
            params={
                "name": "host.cpu.percent",
                "label": f"host:{AGENT_NAME}",
                "start": str(first_ts),
                "end": str(last_ts),
                "resolution": "raw",
            },
        )
        admin.close()
        points = sum(len(s["points"]) for s in query.json()["series"]) if query.status_code == 200 else None
        return {
            "benchmark": "agent_overhead",
            "interval_s": interval,
            "plugins": _plugins(agent_log),
            "startup_cpu_s": startup_cpu,
            "batches_in_window": points,
            "target_cpu_percent": TARGET_CPU_PERCENT,
            "meets_target": figures["cpu_percent"] <= TARGET_CPU_PERCENT,
            **figures,
        }
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _plugins(log: Path) -> str | None:
    for line in log.read_text(errors="replace").splitlines():
        if "with plug-ins:" in line:
            return line.split("with plug-ins:", 1)[1].split("(", 1)[0].strip()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds",
        "--duration",
        dest="seconds",
        type=float,
        default=300,
        help="Measured window after warm-up, seconds (default 300)",
    )
    parser.add_argument("--interval", type=float, default=10, help="Sample and heartbeat interval, s")
    parser.add_argument("--server", help="Use this server instead of starting one (needs an admin --token)")
    parser.add_argument("--token", default=os.environ.get("CT_TOKEN"), help="Admin token for --server")
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.interval, args.server, args.token)))


if __name__ == "__main__":
    main()
