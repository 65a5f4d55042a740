"""The scheduler on SQLite and PostgreSQL: interval and cron jobs, failures, no overlap, one leader."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from controltower.core.db import Database, utcnow
from controltower.core.scheduler import LOCK_NAME, Scheduler, SchedulerLeader, cron_next


async def until(predicate: Callable[[], bool], message: str, timeout: float = 30.0) -> None:
    """Poll `predicate` on the event loop until it holds, or fail naming `message`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {message}"
        await asyncio.sleep(0.02)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


def test_interval_job_runs_repeatedly_sync_and_async(db: Database):
    calls = {"sync": 0, "async": 0}
    threads: set[int] = set()

    def sync_job() -> None:
        threads.add(threading.get_ident())
        calls["sync"] += 1

    async def async_job() -> None:
        calls["async"] += 1

    async def scenario() -> None:
        scheduler = Scheduler(db, tick_s=0.02)
        scheduler.every("sync", 0.05, sync_job, run_at_start=True)
        scheduler.every("async", 0.05, async_job)
        await scheduler.start()
        try:
            await until(lambda: calls["sync"] >= 3 and calls["async"] >= 3, "three runs of each job")
        finally:
            await scheduler.stop()
        info = {j.name: j for j in scheduler.jobs()}
        assert info["sync"].runs >= 3 and info["sync"].last_error is None
        assert info["sync"].last_run is not None and info["sync"].kind == "interval"
        assert info["async"].spec == "every 0.05s"

    run(scenario)
    assert threading.get_ident() not in threads  # sync jobs ran in a worker thread


def test_cron_parsing(tmp_path: Path):
    scheduler = Scheduler(Database(f"sqlite:///{tmp_path / 'unused.db'}"))
    scheduler.cron("nightly", "30 2 * * *", lambda: None)
    [job] = scheduler.jobs()
    assert (job.kind, job.spec) == ("cron", "30 2 * * *")
    after = dt.datetime(2024, 5, 1, 3, 0, tzinfo=dt.UTC)
    assert cron_next("30 2 * * *", after) == dt.datetime(2024, 5, 2, 2, 30, tzinfo=dt.UTC)
    assert cron_next("*/15 * * * *", after) == dt.datetime(2024, 5, 1, 3, 15, tzinfo=dt.UTC)
    for bad in ("61 * * * *", "every day", "* * *"):
        with pytest.raises(ValueError, match=re.escape(f"invalid cron expression '{bad}'")):
            scheduler.cron(f"bad {bad}", bad, lambda: None)
    with pytest.raises(ValueError, match="registered twice"):
        scheduler.cron("nightly", "* * * * *", lambda: None)
    with pytest.raises(ValueError, match="seconds must be positive"):
        scheduler.every("never", 0, lambda: None)


def test_cron_job_gets_a_next_run_when_started(db: Database):
    async def scenario() -> None:
        scheduler = Scheduler(db)
        scheduler.cron("minutely", "* * * * *", lambda: None)
        await scheduler.start()
        try:
            [job] = scheduler.jobs()
            assert job.next_run is not None and job.next_run.second == 0
            assert job.next_run > dt.datetime.now(dt.UTC)
        finally:
            await scheduler.stop()

    run(scenario)


def test_a_raising_job_is_logged_and_keeps_its_schedule(db: Database, caplog: pytest.LogCaptureFixture):
    attempts = []

    def flaky() -> None:
        attempts.append(1)
        raise RuntimeError(f"failure number {len(attempts)}")

    async def scenario() -> None:
        scheduler = Scheduler(db, tick_s=0.02)
        scheduler.every("flaky", 0.05, flaky, run_at_start=True)
        await scheduler.start()
        try:
            await until(lambda: len(attempts) >= 3, "three runs of the failing job")
        finally:
            await scheduler.stop()
        [job] = scheduler.jobs()
        assert job.last_error is not None and job.last_error.startswith("RuntimeError: failure number")

    run(scenario)
    assert "job 'flaky' failed" in caplog.text


def test_a_job_never_overlaps_itself(db: Database):
    state = {"active": 0, "most": 0, "done": 0}

    async def scenario() -> None:
        gate = asyncio.Event()

        async def slow() -> None:
            state["active"] += 1
            state["most"] = max(state["most"], state["active"])
            await gate.wait()
            state["active"] -= 1
            state["done"] += 1

        scheduler = Scheduler(db, tick_s=0.01)
        scheduler.every("slow", 0.01, slow, run_at_start=True)
        await scheduler.start()
        try:
            await until(lambda: state["active"] == 1, "the job to start")
            first_next = scheduler.jobs()[0].next_run
            await until(lambda: scheduler.jobs()[0].next_run != first_next, "a due tick while running")
            await asyncio.sleep(0.1)  # several due ticks pass while the job still runs
            assert scheduler.jobs()[0].running
            gate.set()
            await until(lambda: state["done"] >= 2, "a later run after the first ended")
        finally:
            gate.set()
            await scheduler.stop()

    run(scenario)
    assert state["most"] == 1


def test_run_now_runs_a_job_even_without_its_schedule(db: Database):
    calls = []

    async def scenario() -> None:
        scheduler = Scheduler(db)
        scheduler.every("hourly", 3600, lambda: calls.append(1))
        info = await scheduler.run_now("hourly")
        assert info.runs == 1 and info.last_run is not None
        with pytest.raises(KeyError, match="no job named 'missing'"):
            await scheduler.run_now("missing")

    run(scenario)
    assert calls == [1]


def test_only_the_leader_runs_jobs_and_stopping_hands_over(db: Database):
    runs = {"a": 0, "b": 0}

    async def scenario() -> None:
        a = Scheduler(db, lease_s=30, tick_s=0.02)
        b = Scheduler(db, lease_s=0.3, tick_s=0.02)  # re-checks the lock often, so it sees the release soon
        a.every("job", 0.02, lambda: runs.__setitem__("a", runs["a"] + 1), run_at_start=True)
        b.every("job", 0.02, lambda: runs.__setitem__("b", runs["b"] + 1), run_at_start=True)
        await a.start()
        await until(lambda: a.is_leader and runs["a"] >= 1, "the first scheduler to lead")
        await b.start()
        try:
            await until(lambda: runs["a"] >= 10, "the leader to keep running its job")
            assert not b.is_leader
            assert runs["b"] == 0
            with db.session() as s:
                row = s.scalar(select(SchedulerLeader).where(SchedulerLeader.name == LOCK_NAME))
                assert row is not None and row.holder == a.holder

            await a.stop()
            await until(lambda: b.is_leader and runs["b"] >= 3, "the second scheduler to take over")
            assert not a.is_leader
        finally:
            await a.stop()
            await b.stop()
        with db.session() as s:
            row = s.get(SchedulerLeader, LOCK_NAME)
            assert row is not None and row.holder is None

    run(scenario)


def test_an_expired_leader_lease_is_taken_over(db: Database):
    a = Scheduler(db, lease_s=30)
    b = Scheduler(db, lease_s=30)
    start = utcnow()
    assert a.try_lead(now=start)
    assert not b.try_lead(now=start + dt.timedelta(seconds=29))
    assert a.try_lead(now=start + dt.timedelta(seconds=29))  # the holder renews
    # a crashed and never renewed again: once its lease has run out, b takes over
    assert not b.try_lead(now=start + dt.timedelta(seconds=58))
    assert b.try_lead(now=start + dt.timedelta(seconds=60))
    assert not a.try_lead(now=start + dt.timedelta(seconds=61))
