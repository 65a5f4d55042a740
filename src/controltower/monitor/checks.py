"""Health checks: CRUD with per-type validation, result history and time-weighted uptime."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from collections import defaultdict
from typing import Any

import httpx
from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session

from controltower.core.db import utcnow
from controltower.monitor.models import Check, CheckResult, CheckStateChange
from controltower.monitor.probes import (
    format_status_spec,
    parse_host_port,
    parse_status_spec,
)
from controltower.monitor.schemas import (
    CheckCreate,
    CheckPublic,
    CheckUpdate,
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
