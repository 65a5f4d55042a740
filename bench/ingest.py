"""Ingest benchmark: samples/s stored end to end, from many simulated agents over HTTP into the series."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import psutil
from sqlalchemy import create_engine, text
from tests.support import start_server

METRICS_PATH = "/api/v1/monitor/hosts/metrics"
METRIC = "host.cpu.core.percent"


def _enrol_agents(url: str, admin_token: str, count: int) -> list[str]:
    tokens = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30) as admin:
        for i in range(count):
            enrolment = admin.post("/api/v1/agents/enrollments", json={"ttl_s": 600}).json()["token"]
            agent = httpx.post(url + "/api/v1/agents/enroll",
                               json={"enrolment_token": enrolment, "name": f"bench-{i:04d}"}, timeout=30)
            agent.raise_for_status()
            tokens.append(agent.json()["token"])
    return tokens


def _template(agent: int, batch: int) -> bytes:
    """One agent's message of `batch` samples, with a placeholder for its timestamp."""
    samples = [{"name": METRIC, "labels": {"host": f"bench-{agent:04d}", "core": str(c)},
                "value": float(c % 100)} for c in range(batch)]
    body = json.dumps({"ts": "__TS__", "samples": samples, "dropped": 0}).encode()
    return body.replace(b'"__TS__"', b"%.3f")


def run(database_url: str | None, agents: int, batch: int, seconds: float, workers: int) -> dict[str, object]:
    with TemporaryDirectory() as tmp:
        env = {"CT_DATABASE_URL": database_url} if database_url else {}
        srv = start_server(Path(tmp) / "data", env=env)
        try:
            tokens = _enrol_agents(srv.url, srv.token, agents)
            # Each agent drains a backlog (as after an outage), a push a second of it after another: more
            # messages than can be sent in `seconds`, made as they are taken (any batch size, no queue up front).
            start_ts = time.time() - 86_400
            templates = [_template(i, batch) for i in range(agents)]
            backlog = ((tokens[i], templates[i], start_ts + n) for n in itertools.count() for i in range(agents))
            taking = threading.Lock()
            sent = [0] * workers
            errors: list[str] = []
            deadline = time.monotonic() + seconds

            def worker(slot: int) -> None:
                with httpx.Client(base_url=srv.url, timeout=60) as client:
                    while time.monotonic() < deadline:
                        with taking:
                            token, template, ts = next(backlog)
                        response = client.post(METRICS_PATH, content=template % ts, headers={
                            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                        if response.status_code >= 300:
                            errors.append(f"{response.status_code} {response.text[:200]}")
                            return
                        sent[slot] += batch

            proc = psutil.Process(srv.proc.pid)
            cpu_before = proc.cpu_times()
            load_before = psutil.Process().cpu_times()
            started = time.monotonic()
            threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
            cpu_after = proc.cpu_times()
            load_after = psutil.Process().cpu_times()
            load_s = load_after.user + load_after.system - load_before.user - load_before.system
            cpu_s = cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system
            server_cpu = cpu_s / elapsed * 100
            if errors:
                raise RuntimeError(f"ingest errors: {errors[:3]}")
            stored = _count_samples(database_url or f"sqlite:///{Path(tmp) / 'data' / 'ctower.db'}")
            acknowledged = sum(sent)
            return {
                "benchmark": "ingest",
                "database": "postgresql" if database_url else "sqlite",
                "agents": agents,
                "batch": batch,
                "workers": workers,
                "seconds": round(elapsed, 1),
                "samples_acknowledged": acknowledged,
                "samples_stored": stored,
                "samples_per_s": round(stored / elapsed),
                "server_cpu_percent": round(server_cpu, 1),
                # The simulated agents run in this process, on the same cores as the server.
                "load_generator_cpu_percent": round(load_s / elapsed * 100, 1),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                           f"Python {platform.python_version()}",
            }
        finally:
            srv.stop()


def _count_samples(url: str) -> int:
    """Only the benchmark's metric: the server writes series of its own meanwhile (host.up per host)."""
    engine = create_engine(url)
    with engine.connect() as conn:
        count = conn.execute(
            text("SELECT count(*) FROM samples JOIN series ON series.id = samples.series_id WHERE series.name = :n"),
            {"n": METRIC},
        ).scalar_one()
    engine.dispose()
    return int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL; default SQLite")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000, help="samples per HTTP request")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=8, help="concurrent HTTP senders")
    args = parser.parse_args()
    print(json.dumps(run(args.database_url, args.agents, args.batch, args.seconds, args.workers)))


if __name__ == "__main__":
    main()
