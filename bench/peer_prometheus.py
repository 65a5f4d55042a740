"""Peer for ingest: Prometheus scraping synthetic targets every 1 s; samples/s appended and per core used."""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from bench._meter import ProcessMeter, free_port

BINARY = "prometheus"
INSTALL = "apt-get install -y prometheus prometheus-node-exporter"
APPENDED = "prometheus_tsdb_head_samples_appended_total"
VARIANTS = 16  # bodies per target, served in turn, so every scrape brings new values


def available() -> str | None:
    """The binary's path, or None when the peer is not installed."""
    return shutil.which(BINARY)


def _bodies(target: int, series: int) -> list[bytes]:
    rng = random.Random(target)
    head = "# HELP synth_value A synthetic gauge.\n# TYPE synth_value gauge\n"
    return [
        (
            head
            + "".join(
                f'synth_value{{series="{s:05d}",group="g{s % 50:02d}"}} {rng.uniform(0, 100):.2f}\n'
                for s in range(series)
            )
        ).encode()
        for _ in range(VARIANTS)
    ]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """Prometheus closing its connections on shutdown is not worth a traceback."""


def serve_targets(ports: list[int], series: int) -> None:
    """Serve /metrics on each port, `series` gauges each, values changing every scrape; runs until killed."""
    servers = []
    for index, port in enumerate(ports):
        bodies = _bodies(index, series)
        turn = [0]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            _bodies = bodies
            _turn = turn

            def do_GET(self) -> None:
                body = self._bodies[self._turn[0] % VARIANTS]
                self._turn[0] += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = _QuietServer(("127.0.0.1", port), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _appended(client: httpx.Client, url: str) -> float:
    """Sum of the counter over its label sets (2.4x adds a `type` label)."""
    total = 0.0
    for line in client.get(url).text.splitlines():
        if line.startswith(APPENDED) and line[len(APPENDED)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def _query(client: httpx.Client, base: str, promql: str) -> float | None:
    response = client.get(f"{base}/api/v1/query", params={"query": promql})
    result = response.json()["data"]["result"] if response.status_code == 200 else []
    return float(result[0]["value"][1]) if result else None


def _health(client: httpx.Client, base: str, seconds: float) -> dict[str, float | None]:
    """From the series Prometheus stores about its own scrapes: how many failed, and how long they took."""
    window = f"{max(1, int(seconds))}s"
    return {
        "scrapes_failed_ratio": _query(client, base, f"1 - avg(avg_over_time(up[{window}]))"),
        "scrape_duration_avg_s": _query(client, base, f"avg(avg_over_time(scrape_duration_seconds[{window}]))"),
        "scrape_duration_max_s": _query(client, base, f"max(max_over_time(scrape_duration_seconds[{window}]))"),
    }


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(seconds: float, targets: int = 50, series: int = 20000, warmup: float = 20.0) -> dict[str, object]:
    """Offer `targets` x `series` samples/s; after `warmup` s, measure what it appends in `seconds` s."""
    binary = available()
    if binary is None:
        raise FileNotFoundError(f"{BINARY} not found; install it with: {INSTALL}")
    # Distinct ports: the kernel may hand the same free port out twice in a row.
    distinct: set[int] = set()
    while len(distinct) < targets + 1:
        distinct.add(free_port())
    *ports, web_port = sorted(distinct)
    with TemporaryDirectory() as tmp:
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: synth\n    static_configs:\n      - targets: ["
            + ", ".join(f"'127.0.0.1:{p}'" for p in ports)
            + "]\n"
        )
        gen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.peer_prometheus",
                "--serve-targets",
                ",".join(map(str, ports)),
                "--series",
                str(series),
            ],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        prom: subprocess.Popen[bytes] | None = None
        try:
            assert gen.stdout is not None
            if gen.stdout.readline().strip() != b"ready":
                raise RuntimeError("synthetic targets did not start")
            log = Path(tmp) / "prometheus.log"
            with log.open("wb") as log_file:
                prom = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={Path(tmp) / 'data'}",
                        f"--web.listen-address=127.0.0.1:{web_port}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                )
            url = f"http://127.0.0.1:{web_port}/metrics"
            with httpx.Client(timeout=10) as client:
                deadline = time.monotonic() + 60
                while True:
                    if prom.poll() is not None:
                        raise RuntimeError(f"prometheus exited with {prom.returncode}: " + log.read_text()[-2000:])
                    try:
                        if client.get(f"http://127.0.0.1:{web_port}/-/ready").status_code == 200:
                            break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise
                    time.sleep(0.2)
                time.sleep(warmup)  # series creation and the first head chunks happen here
                before = _appended(client, url)
                prom_meter = ProcessMeter(prom.pid)
                gen_meter = ProcessMeter(gen.pid)
                time.sleep(seconds)
                after = _appended(client, url)
                prom_figures = prom_meter.stop()
                gen_figures = gen_meter.stop()
                health = _health(client, f"http://127.0.0.1:{web_port}", seconds)
        finally:
            if prom is not None:
                _stop(prom)
            gen.kill()
            gen.wait(10)
    rate = (after - before) / prom_figures["wall_s"]
    cores = prom_figures["cpu_percent"] / 100
    return {
        "benchmark": "peer_prometheus",
        "peer": _version(binary),
        "targets": targets,
        "series_per_target": series,
        "scrape_interval_s": 1,
        "offered_samples_per_s": targets * series,
        "seconds": prom_figures["wall_s"],
        "samples_appended": int(after - before),
        "samples_per_s": round(rate),
        "prometheus_cpu_percent": prom_figures["cpu_percent"],
        "samples_per_s_per_core": round(rate / cores) if cores else None,
        "prometheus_rss_mb": prom_figures["rss_mb"],
        "load_generator_cpu_percent": gen_figures["cpu_percent"],
        **health,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--targets", type=int, default=50)
    parser.add_argument("--series", type=int, default=20000, help="series per target")
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--serve-targets", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_targets:
        serve_targets([int(p) for p in args.serve_targets.split(",")], args.series)
        return
    print(json.dumps(run(args.seconds, args.targets, args.series, args.warmup)))


if __name__ == "__main__":
    main()
