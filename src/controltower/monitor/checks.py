"""Health checks: CRUD with per-type validation, time-weighted uptime, and the runner service."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import ipaddress
import itertools
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import Counter, Histogram
from sqlalchemy import and_, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from controltower.core.actions import ActionFailed
from controltower.core.auth import Principal, Role
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.series import Sample
from controltower.monitor.models import Check, CheckResult, CheckStateChange
from controltower.monitor.probes import (
    HttpClients,
    ProbeResult,
    format_status_spec,
    parse_host_port,
    parse_status_spec,
    run_probe,
)
from controltower.monitor.schemas import (
    CheckCreate,
    CheckPublic,
    CheckRunResult,
    CheckUpdate,
    RunCheckParams,
)

log = logging.getLogger("controltower.monitor.checks")

CHECK_TYPES = ("dns", "http", "icmp", "tcp", "tls")
RECORD_TYPES = ("A", "AAAA", "CAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT")
PARAMS: dict[str, tuple[str, ...]] = {
    "http": ("expect_status", "keyword", "follow_redirects", "verify"),
    "tcp": (),
    "icmp": (),
    "dns": ("record_type", "expect", "nameserver"),
    "tls": ("min_days", "verify", "server_name"),
}
DEFAULT_TIMEOUT_S = 10.0
MIN_RELOAD_GAP_S = 1.0  # many API changes in a burst cost one reload a second
UP, DOWN, UNKNOWN = "up", "down", "unknown"
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


class CheckInvalid(ValueError):
    """A check's definition is wrong; `field` names what (e.g. `target`, `params.expect_status`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CheckExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"name: a check named {name!r} already exists")


class CheckNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no check named {name!r}")


# -- validation -----------------------------------------------------------------------------------


def _bool(params: dict[str, Any], key: str) -> None:
    if key in params and not isinstance(params[key], bool):
        raise CheckInvalid(f"params.{key}", "must be true or false")


def _text(params: dict[str, Any], key: str) -> None:
    if key in params and (not isinstance(params[key], str) or not params[key]):
        raise CheckInvalid(f"params.{key}", "must be a non-empty string")


def _host(host: str) -> bool:
    with_brackets = host.startswith("[") and host.endswith("]")
    try:
        ipaddress.ip_address(host[1:-1] if with_brackets else host)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.match(host))


def _validate_http(target: str, params: dict[str, Any]) -> str:
    try:
        url = httpx.URL(target)
    except (httpx.InvalidURL, TypeError) as exc:
        raise CheckInvalid("target", f"{target!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise CheckInvalid("target", f"{target!r}: an HTTP check needs an http:// or https:// URL with a host")
    if "expect_status" in params:
        try:
            params["expect_status"] = format_status_spec(parse_status_spec(params["expect_status"]))
        except ValueError as exc:
            raise CheckInvalid("params.expect_status", str(exc)) from None
    if "keyword" in params and not isinstance(params["keyword"], str):
        raise CheckInvalid("params.keyword", "must be a string")
    _bool(params, "follow_redirects")
    _bool(params, "verify")
    return target


def _validate_tcp(target: str, _params: dict[str, Any]) -> str:
    try:
        host, _ = parse_host_port(target)
    except ValueError as exc:
        raise CheckInvalid("target", f"a TCP check needs host:port; {exc}") from None
    if not _host(host):
        raise CheckInvalid("target", f"{host!r} is not a host name or IP address")
    return target


def _validate_icmp(target: str, _params: dict[str, Any]) -> str:
    if not _host(target):
        raise CheckInvalid("target", f"{target!r} is not a host name or IP address")
    return target


def _validate_dns(target: str, params: dict[str, Any]) -> str:
    if not _HOSTNAME_RE.match(target):
        raise CheckInvalid("target", f"{target!r} is not a DNS name")
    record_type = params.get("record_type", "A")
    if not isinstance(record_type, str) or record_type.upper() not in RECORD_TYPES:
        raise CheckInvalid("params.record_type", f"{record_type!r} is not one of {', '.join(RECORD_TYPES)}")
    params["record_type"] = record_type.upper()
    _text(params, "expect")
    if "nameserver" in params:
        _text(params, "nameserver")
        try:
            host, _ = parse_host_port(params["nameserver"], 53)
            ipaddress.ip_address(host)
        except ValueError:
            raise CheckInvalid("params.nameserver", "must be an IP address with an optional :port") from None
    return target


def _validate_tls(target: str, params: dict[str, Any]) -> str:
    if target.startswith("https://"):
        url = httpx.URL(target)
        target = f"{url.host}:{url.port or 443}" if ":" not in (url.host or "") else f"[{url.host}]:{url.port or 443}"
    try:
        host, _ = parse_host_port(target, 443)
    except ValueError as exc:
        raise CheckInvalid("target", f"a TLS check needs host[:port]; {exc}") from None
    if not _host(host):
        raise CheckInvalid("target", f"{host!r} is not a host name or IP address")
    if "min_days" in params:
        days = params["min_days"]
        if isinstance(days, bool) or not isinstance(days, int | float) or not 0 <= days <= 3650:
            raise CheckInvalid("params.min_days", "must be a number of days from 0 to 3650")
    _bool(params, "verify")
    _text(params, "server_name")
    return target


_VALIDATORS = {
    "http": _validate_http,
    "tcp": _validate_tcp,
    "icmp": _validate_icmp,
    "dns": _validate_dns,
    "tls": _validate_tls,
}


def validate_check(check_type: str, target: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The normalized (target, params) of a check definition; CheckInvalid names the bad field."""
    if check_type not in CHECK_TYPES:
        raise CheckInvalid("type", f"unknown check type {check_type!r}; expected one of {', '.join(CHECK_TYPES)}")
    if not isinstance(params, dict):
        raise CheckInvalid("params", "must be an object")
    for key in params:
        if key not in PARAMS[check_type]:
            known = ", ".join(PARAMS[check_type]) or "none"
            raise CheckInvalid(f"params.{key}", f"not a parameter of {check_type} checks (known: {known})")
    target = target.strip()
    if not target:
        raise CheckInvalid("target", "must not be empty")
    params = {k: v for k, v in params.items() if v is not None}
    return _VALIDATORS[check_type](target, params), params


def _timing(interval: float, timeout: float | None) -> tuple[float, float]:
    timeout = min(DEFAULT_TIMEOUT_S, interval) if timeout is None else timeout
    if timeout > interval:
        raise CheckInvalid("timeout", f"{timeout:g}s is longer than the interval ({interval:g}s)")
    return interval, timeout


# -- CRUD -----------------------------------------------------------------------------------------


def read_check(session: Session, name: str) -> Check:
    check = session.scalar(select(Check).where(Check.name == name))
    if check is None:
        raise CheckNotFound(name)
    return check


def read_checks(session: Session) -> list[Check]:
    return list(session.scalars(select(Check).order_by(Check.name)))


def create_check(session: Session, data: CheckCreate) -> Check:
    target, params = validate_check(data.type, data.target, dict(data.params))
    interval, timeout = _timing(data.interval, data.timeout)
    if session.scalar(select(Check.id).where(Check.name == data.name)) is not None:
        raise CheckExists(data.name)
    now = utcnow()
    check = Check(
        name=data.name,
        type=data.type,
        target=target,
        interval_s=interval,
        timeout_s=timeout,
        retries=data.retries,
        params=params,
        enabled=data.enabled,
        state=UNKNOWN,
        state_since=now,
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    session.add(check)
    session.flush()
    return check


def update_check(session: Session, name: str, data: CheckUpdate) -> Check:
    """Apply the given fields; a new type without new params starts from that type's defaults."""
    check = read_check(session, name)
    fields = data.model_fields_set
    check_type = data.type if data.type is not None else check.type
    params = data.params if data.params is not None else ({} if check_type != check.type else dict(check.params))
    target, params = validate_check(check_type, data.target if data.target is not None else check.target, params)
    interval, timeout = _timing(
        data.interval if data.interval is not None else check.interval_s,
        data.timeout if data.timeout is not None else min(check.timeout_s, data.interval or check.timeout_s),
    )
    check.type, check.target, check.params = check_type, target, params
    check.interval_s, check.timeout_s = interval, timeout
    if data.retries is not None:
        check.retries = data.retries
    if "enabled" in fields and data.enabled is not None and data.enabled != check.enabled:
        check.enabled = data.enabled
        if not data.enabled and check.state != UNKNOWN:
            # Paused time counts neither as up nor as down.
            now = utcnow()
            session.add(
                CheckStateChange(
                    check_id=check.id,
                    ts=now,
                    from_state=check.state,
                    to_state=UNKNOWN,
                    error="check disabled",
                )
            )
            check.state, check.state_since, check.consecutive_failures = UNKNOWN, now, 0
    check.updated_at = utcnow()
    session.flush()
    return check


def delete_check(session: Session, name: str) -> None:
    check = read_check(session, name)
    session.execute(delete(CheckResult).where(CheckResult.check_id == check.id))
    session.execute(delete(CheckStateChange).where(CheckStateChange.check_id == check.id))
    session.delete(check)
    session.flush()


def read_results(session: Session, check: Check, limit: int = 100) -> list[CheckResult]:
    query = (
        select(CheckResult)
        .where(CheckResult.check_id == check.id)
        .order_by(CheckResult.ts.desc(), CheckResult.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def read_history(session: Session, check: Check, limit: int = 50) -> list[CheckStateChange]:
    query = (
        select(CheckStateChange)
        .where(CheckStateChange.check_id == check.id)
        .order_by(CheckStateChange.ts.desc(), CheckStateChange.id.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def prune_results(session: Session, older_than: dt.datetime) -> int:
    result = session.execute(delete(CheckResult).where(CheckResult.ts < older_than))
    return int(result.rowcount or 0)


# -- uptime ---------------------------------------------------------------------------------------


def uptime(
    session: Session, window: dt.timedelta, check_ids: list[int] | None = None, now: dt.datetime | None = None
) -> dict[int, float | None]:
    """Percent of the known (UP or DOWN) time in `window` each check was UP; None if none was known."""
    now = now or utcnow()
    start = now - window
    scope = [] if check_ids is None else [CheckStateChange.check_id.in_(check_ids)]
    before = (
        select(CheckStateChange.check_id, func.max(CheckStateChange.id).label("last_id"))
        .where(CheckStateChange.ts < start, *scope)
        .group_by(CheckStateChange.check_id)
        .subquery()
    )
    initial = dict(
        session.execute(
            select(CheckStateChange.check_id, CheckStateChange.to_state).join(
                before, and_(CheckStateChange.id == before.c.last_id)
            )
        ).all()
    )
    changes: dict[int, list[tuple[dt.datetime, str]]] = defaultdict(list)
    rows = session.execute(
        select(CheckStateChange.check_id, CheckStateChange.ts, CheckStateChange.to_state)
        .where(CheckStateChange.ts >= start, CheckStateChange.ts <= now, *scope)
        .order_by(CheckStateChange.check_id, CheckStateChange.ts, CheckStateChange.id)
    ).all()
    for check_id, ts, to_state in rows:
        changes[check_id].append((ts, to_state))
    out: dict[int, float | None] = {cid: None for cid in (check_ids or [])}
    for check_id in set(initial) | set(changes):
        state, since = initial.get(check_id, UNKNOWN), start
        up = known = 0.0
        for ts, to_state in [*changes.get(check_id, []), (now, "")]:
            span = (ts - since).total_seconds()
            if state in (UP, DOWN):
                known += span
                up += span if state == UP else 0.0
            state, since = to_state, ts
        out[check_id] = round(100.0 * up / known, 4) if known > 0 else None
    return out


def check_public(check: Check, uptime_24h: float | None) -> CheckPublic:
    return CheckPublic(
        name=check.name,
        type=check.type,
        target=check.target,
        interval_s=check.interval_s,
        timeout_s=check.timeout_s,
        retries=check.retries,
        params=check.params,
        enabled=check.enabled,
        state=check.state,
        state_since=check.state_since,
        consecutive_failures=check.consecutive_failures,
        last_run_at=check.last_run_at,
        last_latency_ms=check.last_latency_ms,
        last_error=check.last_error,
        uptime_24h=uptime_24h,
        created_at=check.created_at,
        updated_at=check.updated_at,
    )


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
