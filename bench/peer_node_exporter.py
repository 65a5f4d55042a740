"""Peer for agent overhead: node_exporter (default collectors) scraped every 10 s; its CPU % and RSS."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time

import httpx

from bench._meter import ProcessMeter, free_port

BINARY = "prometheus-node-exporter"
INSTALL = "apt-get install -y prometheus prometheus-node-exporter"


def available() -> str | None:
    """The binary's path, or None when the peer is not installed."""
    return shutil.which(BINARY)


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def run(seconds: float, interval: float = 10.0) -> dict[str, object]:
    """Scrape every `interval` s for `seconds` s, as Prometheus would; measure only the exporter."""
    binary = available()
    if binary is None:
        raise FileNotFoundError(f"{BINARY} not found; install it with: {INSTALL}")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{BINARY} exited with {proc.returncode}")
                try:
                    if client.get(url).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)
            # The readiness scrape above is the warm-up; the window starts now, after startup costs.
            meter = ProcessMeter(proc.pid)
            started = time.monotonic()
            scrapes = 0
            series = 0
            while True:
                elapsed = time.monotonic() - started
                if elapsed >= seconds:
                    break
                body = client.get(url).text
                series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
                scrapes += 1
                meter.sample()
                time.sleep(max(0.0, min(interval * scrapes, seconds) - (time.monotonic() - started)))
            figures = meter.stop()
        return {
            "benchmark": "peer_node_exporter",
            "peer": _version(binary),
            "interval_s": interval,
            "scrapes": scrapes,
            "series_per_scrape": series,
            **figures,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--interval", type=float, default=10)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.interval)))


if __name__ == "__main__":
    main()
