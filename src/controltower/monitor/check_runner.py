"""The check runner: every enabled check on its interval, results flushed in batches, state changes published."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import bindparam, insert, select, update

from controltower.core.actions import ActionFailed
from controltower.core.auth import Principal, Role
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.series import Sample
from controltower.monitor.checks import DOWN, UP, CheckNotFound, prune_results, read_check
from controltower.monitor.models import Check, CheckResult, CheckStateChange
from controltower.monitor.probes import (
    HttpClients,
    ProbeResult,
    run_probe,
)
from controltower.monitor.schemas import (
    CheckRunResult,
    RunCheckParams,
)

log = logging.getLogger("controltower.monitor.checks")

MIN_RELOAD_GAP_S = 1.0  # many API changes in a burst cost one reload a second


# -- the runner -----------------------------------------------------------------------------------


@dataclass
class _Entry:
    """A check as the runner schedules it: its definition, its live state, and its next deadline."""

    id: int
    name: str
    type: str
    target: str
    params: dict[str, Any]
    interval: float
    timeout: float
    retries: int
    state: str
    failures: int
    due: float = 0.0
    running: bool = False

    def config(self) -> tuple[Any, ...]:
        return (self.name, self.type, self.target, self.params, self.interval, self.timeout, self.retries)

    @classmethod
    def from_check(cls, check: Any) -> _Entry:
        """From a Check or a row with its columns."""
        return cls(
            id=check.id,
            name=check.name,
            type=check.type,
            target=check.target,
            params=dict(check.params),
            interval=check.interval_s,
            timeout=check.timeout_s,
            retries=check.retries,
            state=check.state,
            failures=check.consecutive_failures,
        )


@dataclass
class _Outcome:
    check_id: int
    name: str
    type: str
    ts: dt.datetime
    result: ProbeResult
    state: str
    failures: int
    lateness_ms: float | None
    transition: tuple[str, str] | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class _Metrics:
    def __init__(self, ctx: Context) -> None:
        self.lateness = Histogram(
            "ctower_check_start_lateness_seconds",
            "How late check runs start against their deadline",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=ctx.metrics,
        )
        self.runs = Counter("ctower_check_runs", "Check runs", ["result"], registry=ctx.metrics)
        self.skipped = Counter(
            "ctower_check_runs_skipped",
            "Deadlines skipped because the previous run was still going or the runner fell a whole interval behind",
            registry=ctx.metrics,
        )
        self.write_errors = Counter("ctower_check_write_errors", "Failed result flushes", registry=ctx.metrics)


class CheckRunner:
    """Runs every enabled check on its interval (fixed deadlines, no drift) while this replica leads.

    Probes run concurrently (bounded); results are buffered and written in one transaction per flush.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        concurrency: int = 500,
        flush_interval_s: float = 0.5,
        reload_interval_s: float = 15.0,
        max_pending: int = 100_000,
    ) -> None:
        self.ctx = ctx
        self.concurrency = concurrency
        self.flush_interval_s = flush_interval_s
        self.reload_interval_s = reload_interval_s
        self.max_pending = max_pending
        self.metrics = _Metrics(ctx)
        self.dropped = 0
        self._entries: dict[int, _Entry] = {}
        self._heap: list[tuple[float, int, int]] = []
        self._seq = itertools.count()
        self._pending: list[_Outcome] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(concurrency)
        self._flush_lock = asyncio.Lock()
        self._http: HttpClients | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._dirty = True
        self._loaded_once = False
        self._last_reload = 0.0

    # -- definitions

    def notify_changed(self) -> None:
        """Check definitions changed (callable from any thread): reload them at once."""
        self._dirty = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def _read_enabled(self) -> list[Any]:
        """The enabled checks' scheduling columns (plain rows: cheaper than ORM objects for thousands)."""
        c = Check
        columns = (
            c.id,
            c.name,
            c.type,
            c.target,
            c.params,
            c.interval_s,
            c.timeout_s,
            c.retries,
            c.state,
            c.consecutive_failures,
            c.last_run_at,
        )
        with self.ctx.db.session() as session:
            return list(session.execute(select(*columns).where(c.enabled.is_(True))).all())

    def _first_due(self, check: Any, now: float) -> float:
        """New checks run at once; after a restart checks keep their cadence, overdue ones spread out."""
        if not self._loaded_once:
            if check.last_run_at is not None:
                next_wall = check.last_run_at.timestamp() + check.interval_s
                if next_wall > time.time():
                    return now + (next_wall - time.time())
            phase = (check.id * 0.6180339887) % 1.0
            return now + phase * min(check.interval_s, 10.0)
        return now

    def _push(self, entry: _Entry) -> None:
        heapq.heappush(self._heap, (entry.due, next(self._seq), entry.id))

    async def reload(self) -> None:
        """Bring the schedule in line with the enabled checks in the database."""
        self._dirty = False
        checks = await asyncio.to_thread(self._read_enabled)
        assert self._loop is not None
        now = self._loop.time()
        seen: set[int] = set()
        for check in checks:
            seen.add(check.id)
            fresh = _Entry.from_check(check)
            entry = self._entries.get(check.id)
            if entry is None:
                fresh.due = self._first_due(check, now)
                self._entries[check.id] = fresh
                self._push(fresh)
            elif entry.config() != fresh.config():
                entry.name, entry.type, entry.target, entry.params = (
                    fresh.name,
                    fresh.type,
                    fresh.target,
                    fresh.params,
                )
                entry.interval, entry.timeout, entry.retries = fresh.interval, fresh.timeout, fresh.retries
                entry.due = now  # a changed definition is checked at once
                self._push(entry)
        for check_id in set(self._entries) - seen:
            del self._entries[check_id]
        self._loaded_once = True
        self._last_reload = now

    # -- running

    async def run(self) -> None:
        """The service: schedule while leader, flush results in the background, never die on one check."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._http = HttpClients(max_connections=self.concurrency)
        flusher = asyncio.create_task(self._flush_loop(), name="monitor.checks.flush")
        try:
            while True:
                try:
                    await self._step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("check runner: scheduling step failed")
                    await asyncio.sleep(1.0)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            try:
                await self.flush()
            except Exception:
                log.exception("check runner: final flush failed")
            await self._http.aclose()

    async def _step(self) -> None:
        assert self._loop is not None and self._wake is not None
        if not self.ctx.scheduler.is_leader:
            if self._entries:
                self._entries.clear()
                self._heap.clear()
                self._loaded_once = False
            await asyncio.sleep(0.5)
            self._dirty = True
            return
        loop = self._loop
        since = loop.time() - self._last_reload
        if (self._dirty and since >= MIN_RELOAD_GAP_S) or since > self.reload_interval_s:
            await self.reload()
        now = loop.time()
        while self._heap and self._heap[0][0] <= now:
            due, _, check_id = heapq.heappop(self._heap)
            entry = self._entries.get(check_id)
            if entry is None or entry.due != due:
                continue  # deleted, or rescheduled since this deadline was pushed
            entry.due = due + entry.interval
            if entry.due <= now:
                missed = math.ceil((now - entry.due) / entry.interval)
                entry.due += missed * entry.interval
                self.metrics.skipped.inc(missed)
            self._push(entry)
            if entry.running:
                self.metrics.skipped.inc()
                continue
            entry.running = True
            task = asyncio.create_task(self._execute(entry, due), name=f"check:{entry.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._wake.clear()
        delay = min(0.5, self._heap[0][0] - loop.time()) if self._heap else 0.5
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _execute(self, entry: _Entry, due: float) -> None:
        try:
            async with self._sem:
                assert self._loop is not None
                lateness = max(0.0, self._loop.time() - due)
                self.metrics.lateness.observe(lateness)
                started = utcnow()
                result = await run_probe(entry.type, entry.target, entry.params, entry.timeout, self._http, entry.id)
            self._record(entry, started, result, lateness * 1000.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("check runner: check %r failed unexpectedly", entry.name)
        finally:
            entry.running = False

    def _record(self, entry: _Entry, started: dt.datetime, result: ProbeResult, lateness_ms: float | None) -> _Outcome:
        """Advance the check's state machine and queue the outcome for the next flush."""
        previous = entry.state
        if result.ok:
            entry.failures, entry.state = 0, UP
        else:
            entry.failures += 1
            if entry.failures > entry.retries:
                entry.state = DOWN
        detail = dict(result.detail)
        if lateness_ms is not None:
            detail["lateness_ms"] = round(lateness_ms, 3)
        outcome = _Outcome(
            check_id=entry.id,
            name=entry.name,
            type=entry.type,
            ts=started,
            result=result,
            state=entry.state,
            failures=entry.failures,
            lateness_ms=lateness_ms,
            detail=detail,
            transition=(previous, entry.state) if previous != entry.state else None,
        )
        self.metrics.runs.labels("ok" if result.ok else "failed").inc()
        if len(self._pending) >= self.max_pending:
            self._pending.pop(0)
            self.dropped += 1
        self._pending.append(outcome)
        return outcome

    # -- writing

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.write_errors.inc()
                log.exception("check runner: writing results failed; will retry")

    async def flush(self) -> int:
        """Write every queued outcome in one transaction; on failure they stay queued."""
        async with self._flush_lock:
            batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                await asyncio.to_thread(self._write, batch)
            except BaseException:
                self._pending[:0] = batch[-self.max_pending :]
                raise
            return len(batch)

    def _write(self, batch: list[_Outcome]) -> None:
        table = Check.__table__
        with self.ctx.db.session() as session:
            ids = {o.check_id for o in batch}
            existing = set(session.scalars(select(Check.id).where(Check.id.in_(ids))))
            batch = [o for o in batch if o.check_id in existing]
            if not batch:
                return
            session.execute(
                insert(CheckResult),
                [
                    {
                        "check_id": o.check_id,
                        "ts": o.ts,
                        "ok": o.result.ok,
                        "latency_ms": o.result.latency_ms,
                        "error": o.result.error,
                        "detail": o.detail,
                    }
                    for o in batch
                ],
            )
            transitions = [o for o in batch if o.transition is not None]
            if transitions:
                session.execute(
                    insert(CheckStateChange),
                    [
                        {
                            "check_id": o.check_id,
                            "ts": o.ts,
                            "from_state": o.transition[0],
                            "to_state": o.transition[1],
                            "error": o.result.error,
                        }
                        for o in transitions
                        if o.transition is not None
                    ],
                )
            last: dict[int, _Outcome] = {}
            since: dict[int, dt.datetime] = {}
            for o in batch:
                last[o.check_id] = o
                if o.transition is not None:
                    since[o.check_id] = o.ts
            stmt = (
                update(table)
                .where(table.c.id == bindparam("_id"))
                .values(
                    state=bindparam("_state"),
                    consecutive_failures=bindparam("_failures"),
                    last_run_at=bindparam("_ts"),
                    last_latency_ms=bindparam("_latency"),
                    last_error=bindparam("_error"),
                    updated_at=table.c.updated_at,
                )
            )
            session.execute(
                stmt,
                [
                    {
                        "_id": o.check_id,
                        "_state": o.state,
                        "_failures": o.failures,
                        "_ts": o.ts,
                        "_latency": o.result.latency_ms,
                        "_error": o.result.error,
                    }
                    for o in last.values()
                ],
            )
            if since:
                session.execute(
                    update(table)
                    .where(table.c.id == bindparam("_id"))
                    .values(state_since=bindparam("_since"), updated_at=table.c.updated_at),
                    [{"_id": cid, "_since": ts} for cid, ts in since.items()],
                )
            samples: list[Sample] = []
            for o in batch:
                ts = o.ts.timestamp()
                samples.append(Sample("check.up", {"check": o.name}, ts, 1.0 if o.result.ok else 0.0))
                if o.result.latency_ms is not None:
                    samples.append(Sample("check.latency_ms", {"check": o.name}, ts, float(o.result.latency_ms)))
            self.ctx.series.write(samples, session=session)
            for o in transitions:
                assert o.transition is not None
                if o.transition[1] in (UP, DOWN):
                    self.ctx.events.publish(
                        f"monitor.check.{o.transition[1]}",
                        {
                            "check": o.name,
                            "type": o.type,
                            "from": o.transition[0],
                            "to": o.transition[1],
                            "error": o.result.error,
                            "latency_ms": o.result.latency_ms,
                        },
                        session=session,
                    )

    # -- on demand

    def _load(self, name: str) -> Check:
        with self.ctx.db.session() as session:
            return read_check(session, name)

    async def run_now(self, name: str) -> CheckRunResult:
        """Run one check at once (enabled or not), record the result like a scheduled run, and return it."""
        check = await asyncio.to_thread(self._load, name)
        fresh = _Entry.from_check(check)
        entry = self._entries.get(check.id)
        if entry is None:
            entry = fresh
        else:
            entry.type, entry.target, entry.params, entry.timeout = (
                fresh.type,
                fresh.target,
                fresh.params,
                fresh.timeout,
            )
            entry.retries = fresh.retries
        started = utcnow()
        result = await run_probe(entry.type, entry.target, entry.params, entry.timeout, self._http, entry.id)
        self._record(entry, started, result, None)
        await self.flush()
        return CheckRunResult(
            name=check.name,
            ok=result.ok,
            latency_ms=result.latency_ms,
            error=result.error,
            detail=dict(result.detail),
            state=entry.state,
        )


# -- wiring ---------------------------------------------------------------------------------------

_RUNNERS: dict[int, CheckRunner] = {}


def runner_for(ctx: Context) -> CheckRunner:
    """The check runner set up for `ctx`."""
    return _RUNNERS[id(ctx)]


def setup(ctx: Context) -> None:
    """Routes, the runner service, the `monitor.run_check` action and result retention."""
    from controltower.monitor import api

    runner = CheckRunner(ctx)
    _RUNNERS[id(ctx)] = runner
    ctx.add_service("monitor.checks", runner.run)

    async def run_check(params: RunCheckParams, _principal: Principal) -> CheckRunResult:
        try:
            return await runner.run_now(params.name)
        except CheckNotFound as exc:
            raise ActionFailed(str(exc)) from None

    ctx.actions.register(
        "monitor.run_check",
        RunCheckParams,
        run_check,
        description="Run a health check now and return its result (ok, latency, error).",
        role=Role.operator,
        output_model=CheckRunResult,
    )

    def prune() -> None:
        with ctx.db.session() as session:
            prune_results(session, utcnow() - dt.timedelta(days=ctx.settings.raw_retention_days))

    ctx.scheduler.every("monitor.checks.prune", 3600.0, prune)
    ctx.include_router(api.checks_router)
