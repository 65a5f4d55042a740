"""A robot using rpaframework (RPA.Tables, RPA.FileSystem), its environment built from PyPI by the real agent."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from controltower.rpa.archive import pack
from tests.conftest import skip_or_fail
from tests.support import RunningServer, start_server, wait_for

ROBOT_YAML = """\
name: rpaframework-bot
description: Totals invoices with rpaframework's table and file system libraries
tasks:
  Total invoices:
    robot: tasks.robot
environment:
  python: ">=3.11"
  requirements: ["rpaframework>=28"]
artifacts: output
timeout: 10m
"""

SUITE = """\
*** Settings ***
Library           RPA.Tables
Library           RPA.FileSystem

*** Variables ***
${OUTPUT}         ${CURDIR}/output

*** Tasks ***
Total invoices
    ${rows}=    Evaluate    [{"invoice": "A-1", "amount": 10.5}, {"invoice": "A-2", "amount": 32}]
    ${table}=    Create Table    ${rows}
    ${amounts}=    Get Table Column    ${table}    amount
    ${total}=    Evaluate    sum($amounts)
    Create Directory    ${OUTPUT}
    Write Table To Csv    ${table}    ${OUTPUT}/invoices.csv
    Create File    ${OUTPUT}/total.txt    ${total}
    Log    invoices total ${total}
"""


def _index_reachable() -> str | None:
    host = urlsplit("https://pypi.org/simple/").hostname or "pypi.org"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        return f"the package index {host} is not reachable ({exc}): rpaframework cannot be installed"
    return None


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    reason = _index_reachable()
    if reason:
        skip_or_fail(reason)
    base = tmp_path_factory.mktemp("rpaframework")
    server = start_server(base / "data", env={"CT_RPA_ENV_CACHE_DIR": str(base / "envs")}, args=[])
    with server.client() as client:
        wait_for(lambda: any("local" in a["labels"] for a in client.get("agents")), timeout=60,
                 message="the local agent to enrol")
    yield server
    server.stop()


def test_an_rpaframework_robot_runs_on_the_agent(srv: RunningServer, tmp_path: Path) -> None:
    root = tmp_path / "rpaframework-bot"
    root.mkdir()
    (root / "robot.yaml").write_text(ROBOT_YAML)
    (root / "tasks.robot").write_text(SUITE)
    pushed = httpx.post(f"{srv.url}/api/v1/rpa/robots", content=pack(root, artifacts="output"), timeout=120,
                        headers={"Authorization": f"Bearer {srv.token}", "Content-Type": "application/zip"})
    assert pushed.status_code == 201, pushed.text
    with srv.client() as client:
        run = client.post("rpa/runs", {"robot": "rpaframework-bot", "labels": ["local"]})
        run = wait_for(lambda: (r := client.get(f"rpa/runs/{run['id']}"))["status"] not in ("queued", "running")
                       and r, timeout=600, interval=0.5, message="the rpaframework run")
        assert run["status"] == "passed", run.get("message")
        assert run["env_built"] is True
        total = client.http.get(f"/api/v1/rpa/runs/{run['id']}/files/artifacts/total.txt")
        assert total.text == "42.5"
        csv = client.http.get(f"/api/v1/rpa/runs/{run['id']}/files/artifacts/invoices.csv")
        assert csv.text.splitlines() == ["invoice,amount", "A-1,10.5", "A-2,32"]
