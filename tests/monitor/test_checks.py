"""Health checks: validation, CRUD, uptime, the runner on a real database, and the API on a real server."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from controltower.client import ApiError
from controltower.core.events import recent
from controltower.monitor import checks
from controltower.monitor.check_runner import CheckRunner
from controltower.monitor.checks import CheckExists, CheckInvalid
from controltower.monitor.models import Check, CheckResult, CheckStateChange
from controltower.monitor.schemas import CheckCreate, CheckUpdate, parse_duration
from tests.monitor.check_targets import HttpTarget, TcpTarget, closed_port, make_ctx
from tests.support import wait_for


def create(db, **fields: Any) -> Check:
    body = {"name": "web", "type": "http", "target": "http://127.0.0.1:9/", "interval": 10, **fields}
    with db.session() as session:
        return checks.create_check(session, CheckCreate(**body))


def invalid_field(db, **fields: Any) -> str:
    with pytest.raises(CheckInvalid) as info:
        create(db, **fields)
    return f"{info.value.field}: {info.value.reason}"


# -- durations and validation ---------------------------------------------------------------------


def test_durations():
    assert parse_duration("10s") == 10
    assert parse_duration("5m") == 300
    assert parse_duration("1h") == 3600
    assert parse_duration("250ms") == 0.25
    assert parse_duration(7) == 7.0
    for bad in ("10x", "", "-1s", True, None):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_validation_names_the_field(db):
    assert invalid_field(db, type="smtp").startswith("type: unknown check type 'smtp'")
    assert invalid_field(db, target="ftp://x/").startswith("target:")
    assert invalid_field(db, type="tcp", target="127.0.0.1").startswith("target: a TCP check needs host:port")
    assert invalid_field(db, type="tcp", target="127.0.0.1:80", params={"keyword": "x"}) == (
        "params.keyword: not a parameter of tcp checks (known: none)"
    )
    assert invalid_field(db, params={"expect_status": "abc"}).startswith("params.expect_status:")
    assert (
        invalid_field(db, params={"follow_redirects": "no"})
        == "params.follow_redirects: must be true or false"
    )
    assert invalid_field(db, type="dns", target="web.test", params={"record_type": "XYZ"}).startswith(
        "params.record_type:"
    )
    assert invalid_field(db, type="dns", target="web.test", params={"nameserver": "dns.example"}).startswith(
        "params.nameserver:"
    )
    assert invalid_field(db, type="icmp", target="bad host").startswith("target:")
    assert invalid_field(db, type="tls", target="127.0.0.1:443", params={"min_days": -1}).startswith(
        "params.min_days:"
    )
    assert invalid_field(db, interval=5, timeout=6) == "timeout: 6s is longer than the interval (5s)"
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Check)) == 0


def test_create_normalizes_and_rejects_duplicates(db):
    check = create(db, interval="5s", params={"expect_status": [200, "300-302"]})
    assert (check.interval_s, check.timeout_s, check.state) == (5.0, 5.0, "unknown")
    assert check.params == {"expect_status": "200,300-302"}
    tls = create(db, name="cert", type="tls", target="https://127.0.0.1:8443/path")
    assert tls.target == "127.0.0.1:8443"
    dns_check = create(db, name="dns", type="dns", target="web.test", params={"record_type": "mx"})
    assert dns_check.params == {"record_type": "MX"}
    with pytest.raises(CheckExists):
        create(db)


def test_update_revalidates_and_disabling_pauses_uptime(db):
    create(db, params={"keyword": "hello"})
    with db.session() as session:
        check = checks.update_check(session, "web", CheckUpdate(type="tcp", target="127.0.0.1:80"))
        assert (check.type, check.params) == ("tcp", {})
    with db.session() as session, pytest.raises(CheckInvalid, match="target"):
        checks.update_check(session, "web", CheckUpdate(type="http"))
    with db.session() as session:
        check = checks.read_check(session, "web")
        check.state = "up"
    with db.session() as session:
        check = checks.update_check(session, "web", CheckUpdate(enabled=False))
        assert (check.enabled, check.state) == (False, "unknown")
        history = checks.read_history(session, check)
        assert [(h.from_state, h.to_state, h.error) for h in history] == [("up", "unknown", "check disabled")]
    with db.session() as session, pytest.raises(checks.CheckNotFound):
        checks.update_check(session, "nope", CheckUpdate(retries=1))


def test_uptime_is_time_weighted_over_the_window(db):
    check = create(db)
    now = dt.datetime(2031, 5, 1, 12, 0, tzinfo=dt.UTC)
    hours = [(-30, "unknown", "up"), (-12, "up", "down"), (-6, "down", "up")]
    with db.session() as session:
        for h, from_state, to_state in hours:
            session.add(
                CheckStateChange(
                    check_id=check.id,
                    ts=now + dt.timedelta(hours=h),
                    from_state=from_state,
                    to_state=to_state,
                )
            )
    with db.session() as session:
        day = checks.uptime(session, dt.timedelta(days=1), [check.id], now=now)
        assert day[check.id] == pytest.approx(75.0)  # down 6 h of 24
        week = checks.uptime(session, dt.timedelta(days=7), [check.id], now=now)
        assert week[check.id] == pytest.approx(100 * 24 / 30)  # known for 30 h, down 6
        before = checks.uptime(session, dt.timedelta(days=1), [check.id], now=now - dt.timedelta(days=3))
        assert before[check.id] is None  # nothing known yet


# -- the runner on a real database ----------------------------------------------------------------


async def _until(
    predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _states(db) -> dict[str, tuple[str, str | None, int]]:
    with db.session() as session:
        rows = session.execute(select(Check.id, Check.name, Check.state, Check.last_error)).all()
        counts = dict(
            session.execute(select(CheckResult.check_id, func.count()).group_by(CheckResult.check_id)).all()
        )
    return {name: (state, error, counts.get(cid, 0)) for cid, name, state, error in rows}


def test_runner_runs_checks_and_survives_a_dead_target(db, tmp_path):
    ctx = make_ctx(db, tmp_path)
    http = HttpTarget()
    tcp = TcpTarget()
    dead = closed_port()
    create(db, name="web", target=http.url(), interval=1)
    create(db, name="dead", type="tcp", target=f"127.0.0.1:{dead}", interval=1)

    async def scenario() -> None:
        await ctx.events.start()
        await ctx.scheduler.start()
        runner = CheckRunner(ctx, flush_interval_s=0.2)
        task = asyncio.create_task(runner.run())
        try:

            async def both_ran_twice() -> bool:
                states = await asyncio.to_thread(_states, db)
                return states["web"][2] >= 2 and states["dead"][2] >= 2

            await _until(both_ran_twice, what="two results of each check")
            states = _states(db)
            assert states["web"][:2] == ("up", None)
            assert states["dead"][0] == "down"
            assert states["dead"][1] == f"connection to 127.0.0.1:{dead} refused"

            # A check added while running is picked up without a restart.
            create(db, name="port", type="tcp", target=f"127.0.0.1:{tcp.port}", interval=1)
            runner.notify_changed()

            async def port_up() -> bool:
                return (await asyncio.to_thread(_states, db))["port"][0] == "up"

            await _until(port_up, what="the new check to come UP")

            # So is a change: the web target goes away.
            with db.session() as session:
                checks.update_check(session, "web", CheckUpdate(target=f"http://127.0.0.1:{dead}/"))
            runner.notify_changed()

            async def web_down() -> bool:
                return (await asyncio.to_thread(_states, db))["web"][0] == "down"

            await _until(web_down, what="the changed check to go DOWN")
            latest = ctx.series.latest(name="check.up")
            assert {s.labels["check"]: s.value for s in latest} == {"web": 0.0, "dead": 0.0, "port": 1.0}
            with db.session() as session:
                topics = [
                    (e.topic, e.payload["check"]) for e in recent(session, "monitor.check.*", limit=100)
                ]
                result = session.scalars(select(CheckResult).order_by(CheckResult.id.desc()).limit(1)).first()
            assert ("monitor.check.down", "dead") in topics
            assert ("monitor.check.up", "web") in topics and ("monitor.check.down", "web") in topics
            assert "lateness_ms" in result.detail
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ctx.scheduler.stop()
            await ctx.events.stop()

    try:
        asyncio.run(scenario())
    finally:
        http.stop()
        tcp.stop()


def test_retries_delay_down_and_transitions_are_recorded(db, tmp_path):
    ctx = make_ctx(db, tmp_path)
    dead = closed_port()
    create(db, name="flaky", type="tcp", target=f"127.0.0.1:{dead}", retries=2)
    tcp = TcpTarget()

    async def scenario() -> list[str]:
        runner = CheckRunner(ctx)
        states = [(await runner.run_now("flaky")).state for _ in range(3)]
        with db.session() as session:
            checks.update_check(session, "flaky", CheckUpdate(target=f"127.0.0.1:{tcp.port}"))
        states.append((await runner.run_now("flaky")).state)
        with pytest.raises(checks.CheckNotFound):
            await runner.run_now("missing")
        return states

    try:
        assert asyncio.run(scenario()) == ["unknown", "unknown", "down", "up"]
    finally:
        tcp.stop()
    with db.session() as session:
        check = checks.read_check(session, "flaky")
        history = [(h.from_state, h.to_state) for h in reversed(checks.read_history(session, check))]
        assert history == [("unknown", "down"), ("down", "up")]
        assert len(checks.read_results(session, check)) == 4
        events = [(e.topic, e.payload["error"]) for e in recent(session, "monitor.check.*")]
    assert events == [
        ("monitor.check.down", f"connection to 127.0.0.1:{dead} refused"),
        ("monitor.check.up", None),
    ]


# -- the API on a real server ---------------------------------------------------------------------


def api_error(fn: Callable[..., Any], *args: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


def test_api_check_goes_up_then_down_when_the_target_stops(server):
    target = HttpTarget()
    client = server.client()
    try:
        created = client.post(
            "monitor/checks",
            {
                "name": "web",
                "type": "http",
                "target": target.url(),
                "interval": "1s",
                "params": {"keyword": "hello"},
            },
        )
        assert created["state"] == "unknown" and created["interval_s"] == 1.0
        wait_for(lambda: client.get("monitor/checks/web")["state"] == "up", message="check UP")
    finally:
        target.stop()
    check = wait_for(
        lambda: (c := client.get("monitor/checks/web"))["state"] == "down" and c, message="check DOWN"
    )
    assert check["last_error"].startswith(f"GET {target.url()} failed")
    assert [(h["from_state"], h["to_state"]) for h in check["history"]] == [("up", "down"), ("unknown", "up")]
    assert 0 < check["uptime_24h"] < 100
    listed = client.get("monitor/checks")
    assert [(c["name"], c["state"]) for c in listed] == [("web", "down")]
    results = client.get("monitor/checks/web/results", limit=5)
    assert results[0]["ok"] is False and results[-1]["ts"] <= results[0]["ts"]
    down_events = client.get("events", topic="monitor.check.down")
    assert down_events[-1]["payload"]["check"] == "web"


def test_api_errors_run_now_patch_delete_and_action(server):
    client = server.client()
    target = TcpTarget()
    try:
        body = {"name": "db", "type": "tcp", "target": f"127.0.0.1:{target.port}", "interval": "1h"}
        client.post("monitor/checks", body)
        dup = api_error(client.post, "monitor/checks", body)
        assert dup.status == 409 and dup.detail == "name: a check named 'db' already exists"
        bad_type = api_error(client.post, "monitor/checks", {**body, "name": "x", "type": "smtp"})
        assert bad_type.status == 422 and bad_type.detail.startswith("type: unknown check type 'smtp'")
        bad_target = api_error(client.post, "monitor/checks", {**body, "name": "x", "target": "nohost"})
        assert bad_target.status == 422 and bad_target.detail.startswith("target:")
        bad_interval = api_error(client.post, "monitor/checks", {**body, "name": "x", "interval": "soon"})
        assert bad_interval.status == 422 and bad_interval.detail.startswith("interval:")
        assert api_error(client.get, "monitor/checks/nope").status == 404

        run = client.post("monitor/checks/db/run")
        assert run["ok"] is True and run["state"] == "up" and run["latency_ms"] is not None
        assert len(client.get("monitor/checks/db/results")) >= 1

        patched = client.patch("monitor/checks/db", {"target": f"127.0.0.1:{closed_port()}"})
        assert patched["target"] != body["target"]
        assert api_error(client.patch, "monitor/checks/db", {"params": {"keyword": "x"}}).status == 422
        action = client.post("actions/monitor.run_check", {"name": "db"})["result"]
        assert action["ok"] is False and action["state"] == "down" and "refused" in action["error"]
        assert api_error(client.post, "actions/monitor.run_check", {"name": "nope"}).status == 502

        client.delete("monitor/checks/db")
        assert client.get("monitor/checks") == []
        assert api_error(client.delete, "monitor/checks/db").status == 404
        anonymous = httpx.get(server.url + "/api/v1/monitor/checks")
        assert anonymous.status_code == 401
    finally:
        target.stop()


def test_checks_resume_after_sigkill_and_results_survive(server):
    client = server.client()
    target = HttpTarget()
    try:
        client.post("monitor/checks", {"name": "web", "type": "http", "target": target.url(), "interval": 1})
        before = wait_for(
            lambda: len(r := client.get("monitor/checks/web/results", limit=1000)) >= 3 and r,
            message="three results",
        )
        server.kill()
        server.start()
        client = server.client()
        # The killed process still holds the scheduler's leader lease (15 s); checks resume once it lapses.
        after = wait_for(
            lambda: len(r := client.get("monitor/checks/web/results", limit=1000)) > len(before) + 1 and r,
            timeout=45,
            message="new results after the restart",
        )
        kept = {r["ts"] for r in after}
        assert {r["ts"] for r in before} <= kept
        assert after[0]["ts"] > before[0]["ts"] and after[0]["ok"] is True
    finally:
        target.stop()


def test_checks_list_reports_latency_and_state_for_many(server):
    client = server.client()
    target = HttpTarget()
    try:
        for i in range(20):
            client.post(
                "monitor/checks", {"name": f"c{i:02d}", "type": "http", "target": target.url(), "interval": 2}
            )

        def all_up() -> list[dict[str, Any]] | None:
            rows = client.get("monitor/checks")
            return rows if all(r["state"] == "up" for r in rows) else None

        rows = wait_for(all_up, message="twenty checks UP")
        assert len(rows) == 20
        assert all(r["last_latency_ms"] is not None and r["uptime_24h"] == 100.0 for r in rows)
    finally:
        target.stop()
