"""`ctower agent` as a real process against a real server: enrolment, heartbeats, metrics, outages."""

from __future__ import annotations

import datetime as dt
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import RunningServer, free_port, wait_for


def _enrolment_token(srv: RunningServer, labels: list[str] | None = None) -> str:
    with srv.client() as client:
        token = client.post("agents/enrollments", {"ttl_s": 600, "labels": labels or []})["token"]
    assert token.startswith("cte_")
    return token


def _agent_cmd(server_url: str, state_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "controltower",
        "agent",
        "--server",
        server_url,
        "--state-dir",
        str(state_dir),
        "--interval",
        "1",
        *args,
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CT_")}
    env["CT_AGENT_HEARTBEAT_S"] = "1"
    return env


@contextmanager
def _agent(server_url: str, state_dir: Path, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            _agent_cmd(server_url, state_dir, *args),
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=state_dir.parent,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def _agent_row(srv: RunningServer, name: str) -> dict | None:
    with srv.client() as client:
        return next((a for a in client.get("agents") if a["name"] == name), None)


def _last_seen(srv: RunningServer, name: str) -> dt.datetime | None:
    row = _agent_row(srv, name)
    return dt.datetime.fromisoformat(row["last_seen"]) if row and row["last_seen"] else None


def _latest_cpu(srv: RunningServer, name: str) -> list[dict]:
    with srv.client() as client:
        return client.get("series/latest", name="host.cpu.percent", label=f"host:{name}")


def _cpu_points(srv: RunningServer, name: str, start: float, end: float) -> list[list[float]]:
    with srv.client() as client:
        result = client.get(
            "series/query",
            name="host.cpu.percent",
            label=f"host:{name}",
            start=str(start),
            end=str(end),
            resolution="raw",
        )
    return [p for s in result["series"] for p in s["points"]]


def test_enrols_heartbeats_and_sends_host_metrics(server: RunningServer, tmp_path: Path) -> None:
    enrolment = _enrolment_token(server, labels=["from-token"])
    state = tmp_path / "agent-state"
    log = tmp_path / "agent.log"
    with _agent(server.url, state, log, "--token", enrolment, "--name", "web-1", "--labels", "edge, linux") as proc:
        row = wait_for(lambda: _agent_row(server, "web-1"), timeout=60, message="agent web-1 enrolled")
        assert row["labels"] == ["edge", "from-token", "linux"]
        assert row["facts"]["os"] and row["facts"]["cpu_cores"] >= 1 and row["facts"]["memory_total_bytes"] > 0
        assert row["version"]

        token_file = state / "agent-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        agent_token = token_file.read_text().strip()
        assert agent_token.startswith("ct_")

        first_seen = wait_for(lambda: _last_seen(server, "web-1"), message="last_seen set")
        wait_for(
            lambda: (_last_seen(server, "web-1") or first_seen) > first_seen,
            timeout=30,
            message="a heartbeat moved last_seen",
        )

        latest = wait_for(lambda: _latest_cpu(server, "web-1"), timeout=60, message="host.cpu.percent arrived")
        assert latest[0]["labels"]["host"] == "web-1"
        assert 0 <= latest[0]["value"] <= 100

        assert proc.poll() is None
        assert _stop(proc) == 0
    text = log.read_text()
    assert enrolment not in text and agent_token not in text
    assert "enrolled as web-1" in text


def test_restart_uses_the_stored_token(server: RunningServer, tmp_path: Path) -> None:
    enrolment = _enrolment_token(server)
    state = tmp_path / "state"
    log = tmp_path / "agent.log"
    with _agent(server.url, state, log, "--token", enrolment, "--name", "db-1") as proc:
        first = wait_for(lambda: _agent_row(server, "db-1"), timeout=60, message="enrolled")
        assert _stop(proc) == 0
    before = _last_seen(server, "db-1")
    assert before is not None

    # No token: the stored one is used.
    with _agent(server.url, state, log) as proc:
        wait_for(
            lambda: (_last_seen(server, "db-1") or before) > before,
            timeout=30,
            message="heartbeat after restart",
        )
        assert proc.poll() is None
        assert _stop(proc) == 0
    # The used enrolment token again (as a service manager would pass it on every start): a warning, then the
    # stored token.
    before = _last_seen(server, "db-1")
    with _agent(server.url, state, log, "--token", enrolment) as proc:
        wait_for(
            lambda: (_last_seen(server, "db-1") or before) > before,
            timeout=30,
            message="heartbeat after reuse",
        )
        assert _stop(proc) == 0
    with server.client() as client:
        rows = [a for a in client.get("agents") if a["name"] == "db-1"]
    assert [r["id"] for r in rows] == [first["id"]]
    assert "enrolment token was already used" in log.read_text()


def test_no_token_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        _agent_cmd(f"http://127.0.0.1:{free_port()}", tmp_path / "empty"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "no agent token" in result.stderr + result.stdout


def test_unknown_enrolment_token_is_a_clear_error(server: RunningServer, tmp_path: Path) -> None:
    result = subprocess.run(
        _agent_cmd(server.url, tmp_path / "s", "--token", "cte_not-a-real-one"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    output = result.stderr + result.stdout
    assert "enrolment refused (401)" in output and "unknown enrolment token" in output
    assert "cte_not-a-real-one" not in output


def test_samples_taken_while_the_server_is_down_arrive_after_it_returns(server: RunningServer, tmp_path: Path) -> None:
    enrolment = _enrolment_token(server)
    state = tmp_path / "state"
    with _agent(server.url, state, tmp_path / "agent.log", "--token", enrolment, "--name", "edge-1") as proc:
        wait_for(lambda: _latest_cpu(server, "edge-1"), timeout=60, message="metrics flowing before the outage")
        server.kill()
        down_at = time.time()
        time.sleep(5)  # five 1 s intervals sampled into the outbox with nobody to send to
        up_at = time.time()
        assert proc.poll() is None, "the agent must survive the server's death"
        server.start()

        points = wait_for(
            lambda: len(pts := _cpu_points(server, "edge-1", down_at + 0.5, up_at - 0.5)) >= 3 and pts,
            timeout=90,
            message="samples from the outage window",
        )
        assert all(down_at < ts < up_at for ts, _value in points)
        stamps = [ts for ts, _value in points]
        assert stamps == sorted(stamps)
        assert proc.poll() is None
        assert _stop(proc) == 0


@pytest.mark.parametrize("bad", ["xyz", "Bearer ct_x"])
def test_a_token_of_unknown_shape_is_refused(tmp_path: Path, bad: str) -> None:
    result = subprocess.run(
        _agent_cmd(f"http://127.0.0.1:{free_port()}", tmp_path / "s", "--token", bad),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "must be an enrolment token" in result.stderr + result.stdout
