"""Start and stop a real `ctower up` process for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from controltower.client import Client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1, message: str = "condition"):
    """Poll until predicate() returns a truthy value; return it, or fail with `message` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # polling through transient errors is the point
            last_exc = exc
        time.sleep(interval)
    detail = f" (last error: {last_exc})" if last_exc else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")


@dataclass
class RunningServer:
    data_dir: Path
    port: int
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"server-{self.port}.log"

    def client(self, token: str | None = None) -> Client:
        return Client(self.url, token or self.token)

    def start(self, wait_ready: bool = True) -> None:
        """Start and wait for /readyz (or only /healthz when the test expects the server unready)."""
        env = {**os.environ, **self.env, "CT_DATA_DIR": str(self.data_dir)}
        cmd = [sys.executable, "-m", "controltower", "up", "--port", str(self.port), "--data-dir", str(self.data_dir),
               *self.args]
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + ("/readyz" if wait_ready else "/healthz"), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in 60s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None,
                 wait_ready: bool = True) -> RunningServer:
    """A real server on a free port; `--no-agent` unless args say otherwise."""
    args = args if args is not None else ["--no-agent"]
    env = {"CT_MQTT_PORT": str(free_port()), **(env or {})}  # never the shared default 1883
    srv = RunningServer(data_dir=data_dir, port=free_port(), env=env, args=args)
    srv.start(wait_ready)
    return srv
