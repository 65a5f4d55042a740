"""Interval and cron jobs, run only by the replica that holds the database leader lease."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter
from sqlalchemy import String, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from controltower.core.db import Base, Database, UtcDateTime, utcnow

log = logging.getLogger("controltower.scheduler")

JobFn = Callable[[], Any] | Callable[[], Awaitable[Any]]
LOCK_NAME = "scheduler"
STOP_GRACE_S = 10.0


class SchedulerLeader(Base):
    """One row per lock: who holds it and until when (renewed by the holder well before it runs out)."""

    __tablename__ = "scheduler_leader"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


def cron_next(expr: str, after: dt.datetime) -> dt.datetime:
    """The first time strictly after `after` that the cron expression `expr` fires (UTC)."""
    return croniter(expr, after).get_next(dt.datetime)


@dataclass(frozen=True)
class JobInfo:
    name: str
    kind: str
    spec: str
    last_run: dt.datetime | None
    next_run: dt.datetime | None
    last_error: str | None
    runs: int
    running: bool


@dataclass
class _Job:
    name: str
    kind: str  # "interval" | "cron"
    spec: str
    fn: JobFn
    seconds: float = 0.0
    run_at_start: bool = False
    last_run: dt.datetime | None = None
    next_run: dt.datetime | None = None
    last_error: str | None = None
    runs: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def schedule_after(self, moment: dt.datetime) -> dt.datetime:
        if self.kind == "interval":
            return moment + dt.timedelta(seconds=self.seconds)
        return cron_next(self.spec, moment)

    def info(self) -> JobInfo:
        return JobInfo(
            name=self.name, kind=self.kind, spec=self.spec, last_run=self.last_run, next_run=self.next_run,
            last_error=self.last_error, runs=self.runs, running=self.lock.locked(),
        )


class Scheduler:
    """Runs registered jobs on their schedule while this process is the leader; never a job twice at once."""

    def __init__(
        self, db: Database, *, lease_s: float = 15.0, tick_s: float = 0.25, holder: str | None = None
    ) -> None:
        """`holder` names this replica. A server gives one that outlives its process (host and bound port),
        so a replica restarted after a crash takes its own lease back at once instead of waiting it out."""
        self.db = db
        self.lease_s = lease_s
        self.tick_s = tick_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._jobs: dict[str, _Job] = {}
        self._leader = False
        self._leader_checked_at: float | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._started = False

    # -- registration

    def _add(self, job: _Job) -> None:
        if job.name in self._jobs:
            raise ValueError(f"job {job.name!r} registered twice")
        if self._started:
            job.next_run = utcnow() if job.run_at_start else job.schedule_after(utcnow())
        self._jobs[job.name] = job

    def every(self, name: str, seconds: float, fn: JobFn, *, run_at_start: bool = False) -> None:
        """Run `fn` every `seconds` (sync functions run in a thread)."""
        if seconds <= 0:
            raise ValueError(f"job {name!r}: seconds must be positive, got {seconds}")
        self._add(_Job(name=name, kind="interval", spec=f"every {seconds:g}s", fn=fn, seconds=seconds,
                       run_at_start=run_at_start))

    def cron(self, name: str, expr: str, fn: JobFn) -> None:
        """Run `fn` on a cron schedule (five fields, UTC)."""
        if not isinstance(expr, str) or not croniter.is_valid(expr):
            raise ValueError(f"job {name!r}: invalid cron expression {expr!r}")
        self._add(_Job(name=name, kind="cron", spec=expr, fn=fn))

    def jobs(self) -> list[JobInfo]:
        return [job.info() for job in sorted(self._jobs.values(), key=lambda j: j.name)]

    @property
    def is_leader(self) -> bool:
        return self._leader

    # -- leader lease

    def try_lead(self, now: dt.datetime | None = None) -> bool:
        """Take or renew the leader lease with a conditional UPDATE; True when this process holds it."""
        now = now or utcnow()
        expires = now + dt.timedelta(seconds=self.lease_s)
        with self.db.session() as s:
            taken = s.execute(
                update(SchedulerLeader)
                .where(
                    SchedulerLeader.name == LOCK_NAME,
                    or_(
                        SchedulerLeader.holder == self.holder,
                        SchedulerLeader.holder.is_(None),
                        SchedulerLeader.expires_at < now,
                    ),
                )
                .values(holder=self.holder, expires_at=expires)
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount == 1:
                return True
            if s.get(SchedulerLeader, LOCK_NAME) is not None:
                return False
        try:
            with self.db.session() as s:
                s.add(SchedulerLeader(name=LOCK_NAME, holder=self.holder, expires_at=expires))
            return True
        except IntegrityError:
            return False  # another replica created the row first

    def _release(self) -> None:
        with self.db.session() as s:
            s.execute(
                update(SchedulerLeader)
                .where(SchedulerLeader.name == LOCK_NAME, SchedulerLeader.holder == self.holder)
                .values(holder=None, expires_at=utcnow())
                .execution_options(synchronize_session=False)
            )

    async def _check_leadership(self) -> None:
        loop = asyncio.get_running_loop()
        if self._leader_checked_at is not None and loop.time() - self._leader_checked_at < self.lease_s / 3:
            return
        try:
            leader = await asyncio.to_thread(self.try_lead)
        except Exception:
            log.exception("scheduler: could not take or renew the leader lease")
            leader = False
        self._leader_checked_at = loop.time()
        if leader != self._leader:
            log.info("scheduler %s: %s", self.holder, "now the leader" if leader else "no longer the leader")
        self._leader = leader

    # -- running

    async def _run(self, job: _Job) -> None:
        """Run one job to the end; an exception is logged and kept, and the schedule goes on."""
        async with job.lock:
            job.last_run = utcnow()
            try:
                if inspect.iscoroutinefunction(job.fn):
                    await job.fn()
                else:
                    result = await asyncio.to_thread(job.fn)
                    if inspect.isawaitable(result):
                        await result
                job.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                job.last_error = f"{exc.__class__.__name__}: {exc}"
                log.exception("scheduler: job %r failed", job.name)
            finally:
                job.runs += 1

    def _spawn(self, job: _Job) -> None:
        task = asyncio.create_task(self._run(job), name=f"job:{job.name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _tick(self) -> None:
        await self._check_leadership()
        now = utcnow()
        for job in list(self._jobs.values()):
            if job.next_run is None or job.next_run > now:
                continue
            job.next_run = job.schedule_after(now)
            if self._leader and not job.lock.locked():
                self._spawn(job)

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler: tick failed")
            await asyncio.sleep(self.tick_s)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        now = utcnow()
        for job in self._jobs.values():
            job.next_run = now if job.run_at_start else job.schedule_after(now)
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Stop scheduling, give running jobs a grace period, and hand the leader lease back."""
        if not self._started:
            return
        self._started = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._running:
            _, late = await asyncio.wait(list(self._running), timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._leader:
            try:
                await asyncio.to_thread(self._release)
            except Exception:
                log.exception("scheduler: could not release the leader lease")
        self._leader = False
        self._leader_checked_at = None

    async def run_now(self, name: str) -> JobInfo:
        """Run a job at once (leader or not), after its current run if one is going; return its state."""
        job = self._jobs.get(name)
        if job is None:
            known = ", ".join(sorted(self._jobs)) or "none"
            raise KeyError(f"no job named {name!r} (known: {known})")
        await self._run(job)
        return job.info()
