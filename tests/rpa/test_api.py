"""RPA through a real server and the real local agent that `ctower up` starts (label `local`)."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controltower.client import ApiError, Client
from controltower.rpa.archive import pack
from controltower.rpa.templates import create
from tests.support import RunningServer, start_server, wait_for

FAILING_SUITE = """\
*** Tasks ***
Process files
    Log    starting
    Should Be Equal    ${{1 + 1}}    3    msg=invoice total does not add up
"""

SLOW_SUITE = """\
*** Tasks ***
Process files
    Log To Console    before the long sleep
    Sleep    120s
"""

FINISHED = {"passed", "failed", "timed_out", "error", "lost", "cancelled"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the module, with its local agent and an environment cache of its own."""
    base = tmp_path_factory.mktemp("rpa-server")
    server = start_server(base / "data", env={"CT_RPA_ENV_CACHE_DIR": str(base / "envs"),
                                              "CT_AGENT_HEARTBEAT_S": "1"}, args=[])
    with server.client() as client:
        wait_for(lambda: any("local" in a["labels"] for a in client.get("agents")), timeout=60,
                 message="the local agent to enrol")
    yield server
    server.stop()


def _push_bytes(srv: RunningServer, data: bytes, token: str | None = None) -> httpx.Response:
    return httpx.post(f"{srv.url}/api/v1/rpa/robots", content=data, timeout=120,
                      headers={"Authorization": f"Bearer {token or srv.token}", "Content-Type": "application/zip"})


def _robot(tmp_path: Path, name: str, suite: str | None = None, timeout: str | None = None) -> bytes:
    root = tmp_path / name
    create(root, "files", name)
    if suite is not None:
        (root / "tasks.robot").write_text(suite)
    if timeout is not None:
        yaml = root / "robot.yaml"
        yaml.write_text(yaml.read_text().replace("timeout: 10m", f"timeout: {timeout}"))
    return pack(root, artifacts="output")


def _run(client: Client, robot: str, **extra: object) -> dict:
    run = client.post("rpa/runs", {"robot": robot, "labels": ["local"], **extra})
    assert run["status"] == "queued"
    return wait_for(lambda: (r := client.get(f"rpa/runs/{run['id']}"))["status"] in FINISHED and r,
                    timeout=180, interval=0.3, message=f"run {run['id']} to finish")


def _zip_with(name: str, symlink_to: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("robot.yaml", "name: x\ntasks:\n  T:\n    python: bot:main\n")
        info = zipfile.ZipInfo(name)
        if symlink_to is not None:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, symlink_to or "x")
    return buf.getvalue()


def test_unsafe_or_failing_packages_are_refused_with_the_reason(srv: RunningServer, tmp_path: Path) -> None:
    cases = {
        "/etc/evil": "package: '/etc/evil': absolute path",
        "../evil": "package: '../evil': path leaves the package ('..')",
    }
    for name, reason in cases.items():
        response = _push_bytes(srv, _zip_with(name))
        assert response.status_code == 422, response.text
        assert response.json()["detail"] == reason
    response = _push_bytes(srv, _zip_with("link", symlink_to="../../etc/passwd"))
    assert response.status_code == 422
    assert "symlink points outside the package" in response.json()["detail"]
    bad = FAILING_SUITE.replace("Log    starting", "Make Coffee")
    response = _push_bytes(srv, _robot(tmp_path, "bad-bot", suite=bad))
    assert response.status_code == 422
    assert "tasks.robot:3: error: task 'Process files': No keyword with name 'Make Coffee' found." in \
        response.json()["detail"]
    with srv.client() as client:
        assert all(r["name"] != "bad-bot" for r in client.get("rpa/robots"))
        viewer = client.post("tokens", {"name": "look", "role": "viewer"})["token"]
    response = _push_bytes(srv, _robot(tmp_path, "ok-bot"), token=viewer)
    assert response.status_code == 403
    with Client(srv.url, viewer) as client, pytest.raises(ApiError) as err:
        client.post("rpa/runs", {"robot": "ok-bot"})
    assert err.value.status == 403


def test_a_template_runs_on_the_local_agent(srv: RunningServer, tmp_path: Path) -> None:
    response = _push_bytes(srv, _robot(tmp_path, "files-bot"))
    assert response.status_code == 201, response.text
    assert response.json()["number"] == 1
    with srv.client() as client:
        run = _run(client, "files-bot")
        assert run["status"] == "passed", run
        assert run["stats"]["passed"] == 1 and run["stats"]["failed"] == 0
        assert run["env_built"] is True and run["env_build_s"] > 0
        assert run["duration_s"] > 0 and run["agent_id"] is not None
        assert {"output.xml", "log.html", "report.html", "artifacts/report.txt"} <= set(run["files"])
        log = [line["line"] for line in client.get(f"rpa/runs/{run['id']}/log")]
        assert any("1 task, 1 passed, 0 failed" in line for line in log)
        assert client.get(f"work/{run['work_item_id']}")["status"] == "completed"
        events = client.get("events", topic="rpa.run.finished")
        assert any(e["payload"]["run_id"] == run["id"] and e["payload"]["status"] == "passed" for e in events)
        report = client.http.get(f"/api/v1/rpa/runs/{run['id']}/files/artifacts/report.txt")
        assert report.text.startswith("invoice-001.txt: ")
        html = client.http.get(f"/api/v1/rpa/runs/{run['id']}/files/log.html")
        assert html.headers["content-type"].startswith("text/html") and "<html" in html.text[:500].lower()

        again = _run(client, "files-bot")  # same spec: the environment is reused, nothing is built
        assert again["status"] == "passed"
        assert again["env_built"] is False and again["env_hash"] == run["env_hash"]


def test_a_failing_suite_fails_the_run_with_robot_frameworks_message(srv: RunningServer, tmp_path: Path) -> None:
    assert _push_bytes(srv, _robot(tmp_path, "failing-bot", suite=FAILING_SUITE)).status_code == 201
    with srv.client() as client:
        run = _run(client, "failing-bot")
    assert run["status"] == "failed"
    assert run["message"] == "Process files: invoice total does not add up: 2 != 3"
    assert (run["stats"]["passed"], run["stats"]["failed"]) == (0, 1)
    assert "log.html" in run["files"]


def test_a_robot_past_its_timeout_is_killed(srv: RunningServer, tmp_path: Path) -> None:
    assert _push_bytes(srv, _robot(tmp_path, "slow-bot", suite=SLOW_SUITE, timeout="3s")).status_code == 201
    with srv.client() as client:
        run = _run(client, "slow-bot")
        assert run["status"] == "timed_out"
        assert run["message"] == "killed after the timeout of 3s"
        log = [line["line"] for line in client.get(f"rpa/runs/{run['id']}/log")]
    assert any("before the long sleep" in line for line in log)  # the partial log is kept


def test_action_waits_for_the_result_and_versions_are_managed(srv: RunningServer, tmp_path: Path) -> None:
    root = tmp_path / "py-bot"
    create(root, "python", "py-bot")
    assert _push_bytes(srv, pack(root)).status_code == 201
    (root / "bot.py").write_text((root / "bot.py").read_text().replace("summary written", "summary saved"))
    assert _push_bytes(srv, pack(root)).status_code == 201
    assert _push_bytes(srv, pack(root)).status_code == 409  # identical to version 2
    with srv.client() as client:
        diff = client.get("rpa/robots/py-bot/diff", a=1, b=2)
        assert diff["changed"] == ["bot.py"] and '+    print(f"summary saved' in diff["diff"]
        assert client.post("rpa/robots/py-bot/promote", {"version": 1})["production"] is True
        result = client.post("actions/rpa.run_robot", {"robot": "py-bot", "labels": ["local"], "wait": True,
                                                       "variables": {"WHO": "action"}, "input": {"a": 1}})["result"]
        assert result["status"] == "passed" and result["version"] == 1  # production, not latest
        summary = client.http.get(f"/api/v1/rpa/runs/{result['id']}/files/artifacts/summary.json").json()
        assert summary == {"input_keys": ["a"], "variables": {"WHO": "action"}}
        client.post("rpa/robots/py-bot/promote", {"version": 2})
        assert client.post("rpa/robots/py-bot/rollback")["number"] == 1
        history = [(h["action"], h["version"]) for h in client.get("rpa/robots/py-bot/history")]
        assert history == [("push", 1), ("push", 2), ("promote", 1), ("promote", 2), ("rollback", 1)]
        with pytest.raises(ApiError) as err:
            client.post("rpa/runs", {"robot": "py-bot", "task": "Nope"})
        assert err.value.status == 422 and "task: robot 'py-bot' has no task 'Nope'" in str(err.value.detail)
        with pytest.raises(ApiError) as err:
            client.post("rpa/runs", {"robot": "ghost"})
        assert err.value.status == 404


def test_a_lost_agent_makes_the_run_retry_then_lost(srv: RunningServer, tmp_path: Path) -> None:
    suite = SLOW_SUITE.replace("Sleep    120s", "Sleep    15s")
    assert _push_bytes(srv, _robot(tmp_path, "lost-bot", suite=suite)).status_code == 201
    with srv.client() as client:
        run_id = client.post("rpa/runs", {"robot": "lost-bot", "labels": ["doomed"], "lease_s": 3,
                                          "retries": 1})["id"]
        for attempt in (1, 2):
            agent = _start_agent(srv, client, tmp_path / f"agent-{attempt}", "doomed")
            try:
                wait_for(lambda n=attempt: (r := client.get(f"rpa/runs/{run_id}"))["status"] == "running"
                         and r["attempts"] == n, timeout=120, message=f"attempt {attempt} to start")
                agent.send_signal(signal.SIGKILL)  # dies mid-run: no chance to report
                agent.wait(10)
            finally:
                if agent.poll() is None:
                    agent.kill()
                    agent.wait(10)
            expected = "queued" if attempt == 1 else "lost"
            run = wait_for(lambda e=expected: (r := client.get(f"rpa/runs/{run_id}"))["status"] == e and r,
                           timeout=60, message=f"the run to become {expected}")
        assert run["message"].endswith("lost: its lease expired and no retries remain")
        log = [line["line"] for line in client.get(f"rpa/runs/{run_id}/log")]
        assert any("lost (lease expired); the run is queued again" in line for line in log)
        events = client.get("events", topic="rpa.run.finished")
        assert any(e["payload"]["run_id"] == run_id and e["payload"]["status"] == "lost" for e in events)


def _start_agent(srv: RunningServer, client: Client, state_dir: Path, label: str) -> subprocess.Popen[bytes]:
    enrolment = client.post("agents/enrollments", {"ttl_s": 600, "labels": [label]})["token"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CT_")},
           "CT_AGENT_TOKEN": enrolment, "CT_RPA_ENV_CACHE_DIR": str(srv.data_dir.parent / "envs")}
    cmd = [sys.executable, "-m", "controltower", "agent", "--server", srv.url, "--name", state_dir.name,
           "--state-dir", str(state_dir), "--labels", label]
    state_dir.mkdir(parents=True)
    with open(state_dir / "agent.log", "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
