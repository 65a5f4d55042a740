"""Cron schedules through a real server and a real labelled agent: fires start runs once, pause stops them."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import select

from controltower.client import ApiError, Client
from controltower.core.db import Database, utcnow
from controltower.rpa.archive import pack
from controltower.rpa.models import RobotRun, RobotSchedule
from controltower.rpa.templates import create
from tests.conftest import POSTGRES_URL, _postgres_available, reset_postgres, skip_or_fail
from tests.support import RunningServer, start_server, wait_for

FINISHED = {"passed", "failed", "timed_out", "error", "lost", "cancelled"}


def _push_py_bot(server: RunningServer, root: Path) -> None:
    create(root, "python", "py-bot")
    response = httpx.post(f"{server.url}/api/v1/rpa/robots", content=pack(root), timeout=120,
                          headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/zip"})
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    base = tmp_path_factory.mktemp("schedules")
    server = start_server(base / "data")
    _push_py_bot(server, base / "py-bot")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def finance_agent(srv: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real `ctower agent` carrying the label `finance`; yields its agent id."""
    state_dir = tmp_path_factory.mktemp("agents") / "finance-desk"
    with srv.client() as client:
        enrolment = client.post("agents/enrollments", {"ttl_s": 600, "labels": ["finance"]})["token"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CT_")},
           "CT_AGENT_TOKEN": enrolment, "CT_RPA_ENV_CACHE_DIR": str(srv.data_dir.parent / "envs")}
    state_dir.mkdir(parents=True)
    with open(state_dir / "agent.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "controltower", "agent", "--server", srv.url, "--name",
                                 "finance-desk", "--state-dir", str(state_dir), "--labels", "finance"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    with srv.client() as client:
        agent = wait_for(lambda: next((a for a in client.get("agents") if a["name"] == "finance-desk"), None),
                         timeout=60, message="the finance agent to enrol")
    yield agent["id"]
    proc.terminate()
    proc.wait(30)


def _cli(srv: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CT_SERVER": srv.url, "CT_TOKEN": srv.token, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "controltower", "robot", "schedule", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def _make_due(srv: RunningServer, *schedule_ids: int, db_url: str | None = None) -> None:
    """The test hook: move the schedules' next fire time into the past, in one transaction."""
    database = Database(db_url or f"sqlite:///{srv.data_dir / 'ctower.db'}")
    try:
        with database.session() as session:
            for schedule_id in schedule_ids:
                session.get(RobotSchedule, schedule_id).next_fire_at = utcnow() - dt.timedelta(seconds=1)
    finally:
        database.dispose()


def _runs_of(srv: RunningServer, schedule_id: int, db_url: str | None = None) -> list[int]:
    """The ids of the runs the schedule started, straight from the database."""
    database = Database(db_url or f"sqlite:///{srv.data_dir / 'ctower.db'}")
    try:
        with database.read_session() as session:
            return list(session.scalars(select(RobotRun.id).where(RobotRun.schedule_id == schedule_id)))
    finally:
        database.dispose()


def _schedule(client: Client, **extra: object) -> dict:
    return client.post("rpa/schedules", {"robot": "py-bot", "cron": "0 6 * * *", "labels": ["finance"], **extra})


def test_bad_schedules_are_refused_naming_the_field(srv: RunningServer) -> None:
    cases = [
        ({"cron": "61 * * * *"}, "cron: '61 * * * *' is not a valid cron expression: "),
        ({"cron": "0 6 * *"}, "cron: '0 6 * *' must have 5 fields (minute hour day-of-month month day-of-week), not 4"),
        ({"cron": "0 6 * * * *"}, "cron: '0 6 * * * *' must have 5 fields"),
        ({"timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not an IANA time zone"),
        ({"robot": "ghost"}, "robot: no robot named 'ghost'"),
        ({"task": "Nope"}, "task: robot 'py-bot' has no task 'Nope'"),
        ({"secrets": ["erp_password"]}, "secrets: no secret named 'erp_password' in the vault"),
        ({"variables": {"bad name": "x"}}, "variables: 'bad name' is not a variable name"),
    ]
    with srv.client() as client:
        for extra, reason in cases:
            with pytest.raises(ApiError) as err:
                _schedule(client, **extra)
            assert err.value.status == 422, extra
            assert str(err.value.detail).startswith(reason), (extra, err.value.detail)
        assert client.get("rpa/schedules") == []
        viewer = client.post("tokens", {"name": "viewer", "role": "viewer"})["token"]
    with Client(srv.url, viewer) as client, pytest.raises(ApiError) as err:
        _schedule(client)
    assert err.value.status == 403
    bad = _cli(srv, "add", "py-bot", "--cron", "0 25 * * *", "--on", "finance")
    assert bad.returncode == 1 and "cron: '0 25 * * *' is not a valid cron expression" in bad.stderr


def test_a_due_schedule_starts_a_run_on_the_labelled_agent(srv: RunningServer, finance_agent: int,
                                                           tmp_path: Path) -> None:
    (tmp_path / "item.json").write_text('{"invoice": 7}')
    added = _cli(srv, "add", "py-bot", "--task", "Summarise", "--cron", "0 6 * * *", "--tz", "Europe/Berlin",
                 "--on", "finance", "--var", "WHO=schedule", "--input", str(tmp_path / "item.json"), "--json")
    assert added.returncode == 0, added.stderr
    schedule = json.loads(added.stdout)[0]
    berlin = [dt.datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Berlin")) for t in schedule["next_fires"]]
    assert len(berlin) == 5 and all((t.hour, t.minute) == (6, 0) for t in berlin)
    assert berlin == sorted(set(berlin))
    _make_due(srv, schedule["id"])
    with srv.client() as client:
        fired = wait_for(lambda: (s := client.get(f"rpa/schedules/{schedule['id']}"))["last_run_id"] and s,
                         timeout=60, message="the schedule to fire")
        run = wait_for(lambda: (r := client.get(f"rpa/runs/{fired['last_run_id']}"))["status"] in FINISHED and r,
                       timeout=300, interval=0.3, message="the scheduled run to finish")
        events = client.get("events", topic="rpa.schedule.fired")
        summary = client.http.get(f"/api/v1/rpa/runs/{run['id']}/files/artifacts/summary.json").json()
        listing = _cli(srv, "list")
    assert run["status"] == "passed", run
    assert run["schedule_id"] == schedule["id"] and run["agent_id"] == finance_agent
    assert run["task"] == "Summarise" and run["labels"] == ["finance"]
    assert summary == {"input_keys": ["invoice"], "variables": {"WHO": "schedule"}}
    assert fired["fires"] == 1 and fired["last_error"] is None
    assert dt.datetime.fromisoformat(fired["next_fire_at"]) > utcnow()  # on to the next 06:00 in Berlin
    assert dt.datetime.fromisoformat(fired["next_fire_at"]).astimezone(ZoneInfo("Europe/Berlin")).hour == 6
    assert [e["payload"]["run_id"] for e in events if e["payload"]["schedule_id"] == schedule["id"]] == [run["id"]]
    assert listing.returncode == 0 and "Europe/Berlin" in listing.stdout


def test_a_paused_schedule_does_not_fire(srv: RunningServer, finance_agent: int) -> None:
    with srv.client() as client:
        paused = _schedule(client, task="Summarise")
        witness = _schedule(client, task="Summarise")
    assert _cli(srv, "pause", str(paused["id"])).returncode == 0
    _make_due(srv, paused["id"], witness["id"])
    with srv.client() as client:
        wait_for(lambda: client.get(f"rpa/schedules/{witness['id']}")["fires"] == 1, timeout=60,
                 message="the witness schedule to fire")
        # Both were due in the same tick: the paused one was passed over, not merely not reached yet.
        after = client.get(f"rpa/schedules/{paused['id']}")
        assert after["paused"] is True and after["fires"] == 0 and after["last_run_id"] is None
        resumed = _cli(srv, "resume", str(paused["id"]))
        assert resumed.returncode == 0, resumed.stderr
        again = client.get(f"rpa/schedules/{paused['id']}")
    assert again["paused"] is False and dt.datetime.fromisoformat(again["next_fire_at"]) > utcnow()
    assert _runs_of(srv, paused["id"]) == []
    assert _cli(srv, "rm", str(paused["id"])).returncode == 0
    with srv.client() as client, pytest.raises(ApiError) as err:
        client.get(f"rpa/schedules/{paused['id']}")
    assert err.value.status == 404


@pytest.fixture(params=["sqlite", "postgres"])
def db_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningServer, str]]:
    """A server (no agent: fires only queue runs) with py-bot pushed, on each backend; and its database URL."""
    url = f"sqlite:///{tmp_path / 'data' / 'ctower.db'}"
    env: dict[str, str] = {}
    if request.param == "postgres":
        if reason := _postgres_available():
            skip_or_fail(reason)
        reset_postgres()
        env["CT_DATABASE_URL"] = url = POSTGRES_URL
    server = start_server(tmp_path / "data", env=env)
    _push_py_bot(server, tmp_path / "py-bot")
    yield server, url
    server.stop()


def test_a_restart_neither_repeats_nor_skips_a_fire(db_server: tuple[RunningServer, str]) -> None:
    srv, url = db_server
    with srv.client() as client:
        missed = _schedule(client, task="Summarise")
        witness = _schedule(client, task="Summarise")
    srv.stop()
    _make_due(srv, missed["id"], db_url=url)  # fell due while the server was down
    srv.start()
    with srv.client() as client:
        fired = wait_for(lambda: (s := client.get(f"rpa/schedules/{missed['id']}"))["fires"] == 1 and s,
                         timeout=60, message="the missed fire to be made up after the start")
    srv.restart()
    _make_due(srv, witness["id"], db_url=url)
    with srv.client() as client:
        wait_for(lambda: client.get(f"rpa/schedules/{witness['id']}")["fires"] == 1, timeout=60,
                 message="the witness schedule to fire after the second start")
        after = client.get(f"rpa/schedules/{missed['id']}")
        run = client.get(f"rpa/runs/{fired['last_run_id']}")
    assert after["fires"] == 1 and after["last_run_id"] == fired["last_run_id"]
    assert _runs_of(srv, missed["id"], db_url=url) == [fired["last_run_id"]]
    assert run["schedule_id"] == missed["id"] and run["status"] == "queued" and run["created_by"] == \
        f"schedule {missed['id']}"


def test_a_fire_whose_run_is_refused_keeps_the_reason_and_moves_on(srv: RunningServer) -> None:
    with srv.client() as client:
        client.put("rpa/vault/erp_password", {"value": "hunter22"})
        schedule = _schedule(client, task="Summarise", secrets=["erp_password"], cron="*/5 * * * *")
        changed = client.patch(f"rpa/schedules/{schedule['id']}", {"cron": "30 7 * * *", "timezone": "Asia/Tokyo"})
        client.delete("rpa/vault/erp_password")
    tokyo = [dt.datetime.fromisoformat(t).astimezone(ZoneInfo("Asia/Tokyo")) for t in changed["next_fires"]]
    assert all((t.hour, t.minute) == (7, 30) for t in tokyo) and changed["cron"] == "30 7 * * *"
    _make_due(srv, schedule["id"])
    with srv.client() as client:
        failed = wait_for(lambda: (s := client.get(f"rpa/schedules/{schedule['id']}"))["fires"] == 1 and s,
                          timeout=60, message="the schedule to fire")
        events = [e["payload"] for e in client.get("events", topic="rpa.schedule.failed")]
    assert failed["last_run_id"] is None
    assert failed["last_error"].startswith("secrets: no secret named 'erp_password' in the vault")
    assert dt.datetime.fromisoformat(failed["next_fire_at"]) > utcnow()
    assert any(e["schedule_id"] == schedule["id"] and e["error"] == failed["last_error"] for e in events)
    assert _runs_of(srv, schedule["id"]) == []
