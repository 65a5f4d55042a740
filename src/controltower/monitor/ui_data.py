"""What monitor's pages show, read in one go per refresh (blocking: pages call these through run.io_bound)."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.series_query import run_query
from controltower.monitor import alerts, checks, hosts
from controltower.monitor.schemas import HostPublic
from controltower.web.charts import RangePlan, merge

SPARK_SPAN_S = 900.0
SPARK_STEP_S = 60.0


@dataclass
class FleetView:
    hosts: list[HostPublic]
    sparks: dict[str, dict[str, list[float]]]  # host -> cpu / memory / disk / net -> values
    net_now: dict[str, float | None]
    check_states: Counter[str]
    firing: list[dict[str, Any]]


@dataclass
class HostView:
    host: dict[str, Any]
    charts: dict[str, list[tuple[str, list[tuple[float, float]]]]] = field(default_factory=dict)


def query(ctx: Context, name: str, labels: dict[str, str] | None, start: float, end: float,
          step: float | None) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    """A series query on a read-only session (it never waits behind writers)."""
    with ctx.db.read_session() as session:
        results = run_query(session.connection(), name, labels, start, end, step, "avg", "auto")
    return [(r.labels, r.points) for r in results]


def _by_host(rows: list[tuple[dict[str, str], list[tuple[float, float]]]], how: str) -> dict[str, list[float]]:
    grouped: dict[str, list[list[tuple[float, float]]]] = defaultdict(list)
    for labels, points in rows:
        if "host" in labels:
            grouped[labels["host"]].append(points)
    return {h: [v for _, v in merge(lists, how)] for h, lists in grouped.items()}


def alert_row(alert: Any, rule: Any) -> dict[str, Any]:
    return {
        "id": alert.id,
        "rule": rule.name,
        "severity": rule.severity,
        "state": alert.state,
        "labels": ", ".join(f"{k}={v}" for k, v in sorted((alert.labels or {}).items())),
        "label_map": dict(alert.labels or {}),
        "value": None if alert.value is None else round(alert.value, 3),
        "summary": alert.summary,
        "since": (alert.fired_at or alert.pending_since).astimezone().strftime("%Y-%m-%d %H:%M:%S"),
        "resolved": alert.resolved_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if alert.resolved_at else "",
        "acked_by": alert.acked_by or "",
    }


def fleet(ctx: Context) -> FleetView:
    latest = hosts.latest_by_host(ctx.series.latest(name_prefix="host."))
    end = time.time()
    start = end - SPARK_SPAN_S
    sparks: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for key, name, how in (("cpu", "host.cpu.percent", "max"), ("memory", "host.memory.percent", "max"),
                           ("disk", "host.disk.percent", "max"), ("rx", "host.net.rx_bytes_per_s", "sum"),
                           ("tx", "host.net.tx_bytes_per_s", "sum")):
        for host, values in _by_host(query(ctx, name, None, start, end, SPARK_STEP_S), how).items():
            sparks[host][key] = values
    net_now: dict[str, float | None] = {}
    for host, series in sparks.items():
        rx, tx = series.pop("rx", []), series.pop("tx", [])
        n = min(len(rx), len(tx))
        series["net"] = [a + b for a, b in zip(rx[-n:], tx[-n:], strict=True)] if n else rx or tx
        net_now[host] = series["net"][-1] if series["net"] else None
    with ctx.db.read_session() as session:
        host_rows = [hosts.host_public(h, a, latest.get(h.name, [])) for h, a in hosts.read_hosts(session)]
        states = Counter(c.state for c in checks.read_checks(session) if c.enabled)
        firing = [alert_row(a, r) for a, r in alerts.list_alerts(session, ["firing"], limit=50)]
    return FleetView(host_rows, dict(sparks), net_now, states, firing)


def _flat(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, list):
        out[prefix] = ", ".join(str(v) for v in value)
    else:
        out[prefix] = str(value)


def host(ctx: Context, name: str, start: float, end: float, plan: RangePlan) -> HostView | None:
    samples = ctx.series.latest(name_prefix="host.", labels={"host": name})
    with ctx.db.read_session() as session:
        try:
            row, agent = hosts.read_host(session, name)
        except hosts.HostNotFound:
            return None
        detail = hosts.host_detail(row, agent, samples)
    facts: dict[str, str] = {}
    _flat("", detail.all_facts, facts)
    view = HostView(host={**detail.model_dump(exclude={"all_facts", "metrics"}), "facts_flat": facts})

    def lines(metric: str, label_key: str | None, prefix: str = "") -> list[tuple[str, list[tuple[float, float]]]]:
        rows = query(ctx, metric, {"host": name}, start, end, plan.step_s)
        return [(prefix + (labels.get(label_key, metric) if label_key else metric.rsplit(".", 1)[-1]), pts)
                for labels, pts in rows]

    view.charts["cpu"] = [("cpu", pts) for _, pts in lines("host.cpu.percent", None)]
    view.charts["memory"] = [("memory", pts) for _, pts in lines("host.memory.percent", None)]
    view.charts["disk"] = lines("host.disk.percent", "mount")
    view.charts["network"] = [
        *lines("host.net.rx_bytes_per_s", "interface", "rx "),
        *lines("host.net.tx_bytes_per_s", "interface", "tx "),
    ]
    view.charts["load"] = [(f"load {m}", pts) for m in ("1", "5", "15")
                           for _, pts in lines(f"host.load.{m}", None)]
    return view


def check_rows(ctx: Context) -> list[dict[str, Any]]:
    with ctx.db.read_session() as session:
        rows = checks.read_checks(session)
        uptimes = checks.uptime(session, dt.timedelta(days=1))
        return [
            {
                "name": c.name,
                "type": c.type,
                "target": c.target,
                "state": c.state if c.enabled else "disabled",
                "latency": "-" if c.last_latency_ms is None else f"{c.last_latency_ms:.0f} ms",
                "uptime": "-" if uptimes.get(c.id) is None else f"{uptimes[c.id]:.2f} %",
                "interval": c.interval_s,
                "timeout": c.timeout_s,
                "retries": c.retries,
                "enabled": c.enabled,
                "params": c.params or {},
                "error": c.last_error or "",
            }
            for c in rows
        ]


def check_detail(ctx: Context, name: str, span_s: float) -> dict[str, Any] | None:
    end = time.time()
    plan_step = None if span_s <= 3600 else 300.0
    with ctx.db.read_session() as session:
        try:
            check = checks.read_check(session, name)
        except checks.CheckNotFound:
            return None
        windows = {d: checks.uptime(session, dt.timedelta(days=d), [check.id])[check.id] for d in (1, 7, 30)}
        history = [
            {"ts": h.ts.astimezone().strftime("%Y-%m-%d %H:%M:%S"), "from": h.from_state, "to": h.to_state,
             "error": h.error or ""}
            for h in checks.read_history(session, check)
        ]
        info = checks.check_public(check, windows[1]).model_dump()
    points = [pts for _, pts in query(ctx, "check.latency_ms", {"check": name}, end - span_s, end, plan_step)]
    return {**info, "uptime": windows, "history": history, "latency": points[0] if points else []}


def alert_lists(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    with ctx.db.read_session() as session:
        out: dict[str, list[dict[str, Any]]] = {state: [] for state in alerts.STATES}
        for state in alerts.STATES:
            out[state] = [alert_row(a, r) for a, r in alerts.list_alerts(session, [state], limit=100)]
        now = utcnow()
        out["silences"] = [
            {"id": s.id, "rule": s.rule_name or "", "labels": ", ".join(f"{k}={v}" for k, v in s.labels.items()),
             "ends": s.ends_at.astimezone().strftime("%Y-%m-%d %H:%M"), "by": s.created_by, "reason": s.reason}
            for s in alerts.list_silences(session, now=now)
        ]
        counts: Counter[tuple[str, str]] = Counter()
        for a, r in alerts.list_alerts(session, list(alerts.OPEN_STATES), limit=5000):
            counts[(r.name, a.state)] += 1
        out["rules"] = [
            {"name": r.name, "expr": alerts.rule_condition(r).expr, "severity": r.severity,
             "description": r.description, "enabled": r.enabled, "builtin": r.builtin,
             "firing": counts[(r.name, "firing")], "pending": counts[(r.name, "pending")]}
            for r in alerts.list_rules(session)
        ]
    return out
