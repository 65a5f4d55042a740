"""The agent's runner plug-in: an agent with CT_AGENT_CAPACITY=2 runs two robots at the same time."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controltower.rpa.archive import pack
from tests.rpa.invoice_robot import make_invoice_robot
from tests.support import RunningServer, start_server, wait_for

LABEL = "pair"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, env_cache_dir: Path) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("rpa-capacity")
    server = start_server(base / "data")
    root = make_invoice_robot(base / "invoice-bot")
    pushed = httpx.post(f"{server.url}/api/v1/rpa/robots", content=pack(root, artifacts="output"), timeout=120,
                        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/zip"})
    assert pushed.status_code == 201, pushed.text
    with server.client() as client:
        enrolment = client.post("agents/enrollments", {"ttl_s": 600, "labels": [LABEL]})["token"]
    state = base / "agent"
    state.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CT_")}, "CT_AGENT_TOKEN": enrolment,
           "CT_RPA_ENV_CACHE_DIR": str(env_cache_dir), "CT_AGENT_CAPACITY": "2"}
    with open(state / "agent.log", "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "controltower", "agent", "--server", server.url,
                                  "--name", "pair-agent", "--state-dir", str(state), "--labels", LABEL],
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
    yield server
    agent.terminate()
    agent.wait(30)
    server.stop()


def _at(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def test_an_agent_with_capacity_two_runs_two_robots_at_once(srv: RunningServer) -> None:
    with srv.client() as client:
        agent = wait_for(lambda: next((a for a in client.get("agents") if LABEL in a["labels"]), None),
                         timeout=60, message="the agent to enrol")
        assert agent["capacity"] == 2
        ids = [client.post("rpa/runs", {"robot": "invoice-bot", "labels": [LABEL],
                                        "input": {"id": n, "sleep": 4}})["id"] for n in (1, 2)]
        runs = [wait_for(lambda i=i: (r := client.get(f"rpa/runs/{i}"))["status"] not in ("queued", "running")
                         and r, timeout=180, interval=0.3, message=f"run {i}") for i in ids]
    assert [r["status"] for r in runs] == ["passed", "passed"], [r.get("message") for r in runs]
    assert {r["agent_id"] for r in runs} == {agent["id"]}
    first, second = sorted(runs, key=lambda r: r["started_at"])
    assert _at(second["started_at"]) < _at(first["finished_at"])  # the second began while the first ran
