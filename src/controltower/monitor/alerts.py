"""Alerting: rules, the pending -> firing -> resolved state machine, silences, acks, webhooks; setup(ctx)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import statistics
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controltower.core.db import Database, utcnow
from controltower.core.events import EventBus
from controltower.monitor.models import Alert, AlertRule, Notification, Silence, Webhook
from controltower.monitor.notify import Notifier, enqueue
from controltower.monitor.rules import (
    Condition,
    RuleError,
    check_labels,
    check_metric,
    check_op,
    check_recovery,
    check_rule_name,
    check_severity,
    check_threshold,
    fingerprint,
    labels_match,
    parse_duration,
    parse_expr,
    summarize,
)

if TYPE_CHECKING:
    from controltower.core.context import Context
    from controltower.core.series import SeriesStore

log = logging.getLogger("controltower.monitor.alerts")

OPEN_STATES = ("pending", "firing")
STATES = ("pending", "firing", "resolved")
EVAL_INTERVAL_S = 5.0
DELIVERY_INTERVAL_S = 1.0
STALE_FACTOR = 3.0  # a sample older than this many usual intervals is missing data
MIN_STALE_S = 30.0  # never call data stale sooner (push batching, evaluation jitter)
FALLBACK_STALE_S = 300.0  # when the usual interval cannot be told (a single sample)
_INTERVAL_LOOKBACKS_S = (3600.0, 86400.0)
_INTERVAL_CACHE_S = 600.0

DEFAULT_RULES: tuple[dict[str, str], ...] = (
    {
        "name": "host-cpu-high",
        "expr": "host.cpu.percent > 90 for 5m",
        "severity": "warning",
        "description": "CPU above 90 % for 5 minutes",
    },
    {
        "name": "host-memory-high",
        "expr": "host.memory.percent > 90 for 5m",
        "severity": "warning",
        "description": "Memory above 90 % for 5 minutes",
    },
    {
        "name": "host-disk-full",
        "expr": "host.disk.percent > 90",
        "severity": "warning",
        "description": "A disk is more than 90 % full",
    },
    {
        "name": "host-down",
        "expr": "host.up == 0",
        "severity": "critical",
        "description": "The host's agent stopped reporting",
    },
)


class NotFound(LookupError):
    """The named rule, alert, silence or webhook does not exist."""


class Conflict(Exception):
    """The request clashes with what exists (a duplicate name, a builtin rule, a resolved alert)."""


# -- rules ------------------------------------------------------------------------------------------


def rule_condition(rule: AlertRule) -> Condition:
    return Condition(
        metric=rule.metric,
        op=rule.op,
        threshold=rule.threshold,
        labels=dict(rule.labels or {}),
        for_s=rule.for_s,
        recovery_threshold=rule.recovery_threshold,
    )


_STRUCTURAL = ("metric", "labels", "op", "threshold")


def build_condition(fields: Mapping[str, Any], base: Condition | None = None) -> Condition:
    """A checked Condition from either `expr` or the structured fields (over `base` when patching).

    `recovery_threshold` present with None clears it; absent keeps the base's.
    """
    given = [k for k in _STRUCTURAL if fields.get(k) is not None]
    expr = fields.get("expr")
    for_s = fields.get("for_s")
    if expr is not None:
        if given:
            raise RuleError("expr", f"give either expr or {'/'.join(given)}, not both")
        cond = parse_expr(expr)
        if for_s is not None:
            if cond.for_s:
                raise RuleError("for_s", "the duration is given twice: in expr ('for ...') and as for_s")
            cond = replace(cond, for_s=parse_duration(for_s, "for_s"))
    else:
        if base is None:
            for key in ("metric", "op", "threshold"):
                if fields.get(key) is None:
                    raise RuleError(key, "required unless expr is given (e.g. 'host.cpu.percent > 90 for 5m')")
            base = Condition(metric="", op=">", threshold=0.0)
        cond = Condition(
            metric=check_metric(fields["metric"]) if fields.get("metric") is not None else base.metric,
            labels=check_labels(fields["labels"]) if fields.get("labels") is not None else dict(base.labels),
            op=check_op(fields["op"]) if fields.get("op") is not None else base.op,
            threshold=check_threshold(fields["threshold"]) if fields.get("threshold") is not None else base.threshold,
            for_s=parse_duration(for_s, "for_s") if for_s is not None else base.for_s,
        )
    if "recovery_threshold" in fields:
        raw = fields["recovery_threshold"]
        recovery = None if raw is None else check_threshold(raw, "recovery_threshold")
    else:
        recovery = base.recovery_threshold if base is not None else None
    check_recovery(cond.op, cond.threshold, recovery)
    return replace(cond, recovery_threshold=recovery)


def get_rule(session: Session, name: str) -> AlertRule:
    rule = session.scalar(select(AlertRule).where(AlertRule.name == name))
    if rule is None:
        raise NotFound(f"no alert rule named {name!r}")
    return rule


def list_rules(session: Session) -> list[AlertRule]:
    return list(session.scalars(select(AlertRule).order_by(AlertRule.name)))


def create_rule(
    session: Session,
    *,
    name: str,
    severity: str = "warning",
    description: str = "",
    enabled: bool = True,
    builtin: bool = False,
    **condition: Any,
) -> AlertRule:
    """Add a rule from `expr=` or `metric=, labels=, op=, threshold=`, plus `for_s`, `recovery_threshold`."""
    check_rule_name(name)
    check_severity(severity)
    cond = build_condition(condition)
    if session.scalar(select(AlertRule.id).where(AlertRule.name == name)) is not None:
        raise Conflict(f"an alert rule named {name!r} already exists")
    rule = AlertRule(
        name=name,
        metric=cond.metric,
        labels=cond.labels,
        op=cond.op,
        threshold=cond.threshold,
        for_s=cond.for_s,
        recovery_threshold=cond.recovery_threshold,
        severity=severity,
        description=description,
        enabled=enabled,
        builtin=builtin,
    )
    session.add(rule)
    session.flush()
    return rule


def update_rule(
    session: Session,
    events: EventBus,
    name: str,
    changes: Mapping[str, Any],
    server_name: str = "Control Tower",
    now: dt.datetime | None = None,
) -> AlertRule:
    """Patch a rule. Changing what it watches, or disabling it, resolves its open alerts."""
    rule = get_rule(session, name)
    if "severity" in changes and changes["severity"] is not None:
        rule.severity = check_severity(changes["severity"])
    if "description" in changes and changes["description"] is not None:
        rule.description = changes["description"]
    cond_fields = {k: v for k, v in changes.items() if k in ("expr", "for_s", "recovery_threshold", *_STRUCTURAL)}
    if cond_fields:
        old = rule_condition(rule)
        cond = build_condition(cond_fields, base=old)
        rule.metric, rule.labels, rule.op = cond.metric, cond.labels, cond.op
        rule.threshold, rule.for_s, rule.recovery_threshold = (
            cond.threshold,
            cond.for_s,
            cond.recovery_threshold,
        )
        if (cond.metric, cond.labels) != (old.metric, old.labels):
            close_open_alerts(session, events, rule, "the rule now watches other series", server_name, now)
    if changes.get("enabled") is not None and bool(changes["enabled"]) != rule.enabled:
        rule.enabled = bool(changes["enabled"])
        if not rule.enabled:
            close_open_alerts(session, events, rule, "the rule was disabled", server_name, now)
    session.flush()
    return rule


def delete_rule(session: Session, name: str) -> None:
    rule = get_rule(session, name)
    if rule.builtin:
        raise Conflict(f"rule {name!r} is builtin and comes back at start; disable it instead (PATCH enabled=false)")
    session.delete(rule)
    session.flush()


def ensure_default_rules(session: Session) -> list[str]:
    """Create the builtin rules that are missing (by name); return the names created."""
    existing = set(session.scalars(select(AlertRule.name)))
    created = []
    for spec in DEFAULT_RULES:
        if spec["name"] not in existing:
            create_rule(session, builtin=True, **spec)
            created.append(spec["name"])
    return created


# -- silences ---------------------------------------------------------------------------------------


def active_silences(session: Session, now: dt.datetime) -> list[Silence]:
    return list(
        session.scalars(select(Silence).where(Silence.starts_at <= now, Silence.ends_at > now).order_by(Silence.id))
    )


def matching_silence(silences: Iterable[Silence], rule_name: str, labels: Mapping[str, str]) -> Silence | None:
    for silence in silences:
        if silence.rule_name is not None and silence.rule_name != rule_name:
            continue
        if labels_match(silence.labels or {}, labels):
            return silence
    return None


def create_silence(
    session: Session,
    *,
    ends_at: dt.datetime,
    rule_name: str | None = None,
    labels: Mapping[str, str] | None = None,
    reason: str = "",
    created_by: str = "",
    starts_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> Silence:
    now = now or utcnow()
    starts_at = starts_at or now
    checked = check_labels(dict(labels or {}), "labels")
    if not rule_name and not checked:
        raise RuleError("rule_name", "a silence needs a rule name or at least one label to match")
    if rule_name and session.scalar(select(AlertRule.id).where(AlertRule.name == rule_name)) is None:
        raise RuleError("rule_name", f"no alert rule named {rule_name!r}")
    if ends_at <= starts_at or ends_at <= now:
        raise RuleError("ends_at", "must be in the future and after starts_at")
    silence = Silence(
        rule_name=rule_name or None,
        labels=checked,
        reason=reason,
        created_by=created_by,
        starts_at=starts_at,
        ends_at=ends_at,
    )
    session.add(silence)
    session.flush()
    return silence


def list_silences(session: Session, *, include_expired: bool = False, now: dt.datetime | None = None) -> list[Silence]:
    query = select(Silence).order_by(Silence.id)
    if not include_expired:
        query = query.where(Silence.ends_at > (now or utcnow()))
    return list(session.scalars(query))


def expire_silence(session: Session, silence_id: int, now: dt.datetime | None = None) -> Silence:
    silence = session.get(Silence, silence_id)
    if silence is None:
        raise NotFound(f"no silence with id {silence_id}")
    now = now or utcnow()
    if silence.ends_at > now:
        silence.ends_at = now
        if silence.starts_at > now:
            silence.starts_at = now
    return silence


# -- alerts -----------------------------------------------------------------------------------------


def list_alerts(
    session: Session, states: Iterable[str] | None = None, rule_name: str | None = None, limit: int = 500
) -> list[tuple[Alert, AlertRule]]:
    """Newest first: open alerts by when they started, with their rule."""
    query = select(Alert, AlertRule).join(AlertRule, AlertRule.id == Alert.rule_id)
    wanted = list(states or [])
    if wanted:
        query = query.where(Alert.state.in_(wanted))
    if rule_name:
        query = query.where(AlertRule.name == rule_name)
    query = query.order_by(Alert.pending_since.desc(), Alert.id.desc()).limit(limit)
    return [(alert, rule) for alert, rule in session.execute(query).all()]


def get_alert(session: Session, alert_id: int) -> tuple[Alert, AlertRule]:
    row = session.execute(
        select(Alert, AlertRule).join(AlertRule, AlertRule.id == Alert.rule_id).where(Alert.id == alert_id)
    ).first()
    if row is None:
        raise NotFound(f"no alert with id {alert_id}")
    return row[0], row[1]


def ack_alert(
    session: Session, events: EventBus, alert_id: int, by: str, now: dt.datetime | None = None
) -> tuple[Alert, AlertRule]:
    """Acknowledge an open alert (again is a no-op that keeps the first ack)."""
    alert, rule = get_alert(session, alert_id)
    if alert.state not in OPEN_STATES:
        raise Conflict(f"alert {alert_id} is {alert.state}; only pending or firing alerts can be acknowledged")
    if alert.acked_at is None:
        alert.acked_at = now or utcnow()
        alert.acked_by = by
        events.publish("monitor.alert.acked", {**_event_payload(alert, rule), "acked_by": by}, session=session)
    return alert, rule


def _event_payload(alert: Alert, rule: AlertRule) -> dict[str, Any]:
    return {
        "alert_id": alert.id,
        "rule": rule.name,
        "severity": rule.severity,
        "labels": dict(alert.labels),
        "state": alert.state,
        "value": alert.value,
        "summary": alert.summary,
        "silenced": alert.silenced,
    }


def close_open_alerts(
    session: Session,
    events: EventBus,
    rule: AlertRule,
    why: str,
    server_name: str = "Control Tower",
    now: dt.datetime | None = None,
) -> int:
    """Drop the rule's pending alerts and resolve its firing ones (with the usual event and notifications)."""
    now = now or utcnow()
    silences = active_silences(session, now)
    count = 0
    for alert in session.scalars(select(Alert).where(Alert.rule_id == rule.id, Alert.state.in_(OPEN_STATES))):
        if alert.state == "pending":
            session.delete(alert)
        else:
            alert.summary = f"{alert.summary} — resolved: {why}"
            _transition(session, events, alert, rule, "resolved", silences, server_name, now)
        count += 1
    session.flush()
    return count


def _transition(
    session: Session,
    events: EventBus,
    alert: Alert,
    rule: AlertRule,
    state: str,
    silences: list[Silence],
    server_name: str,
    now: dt.datetime,
) -> int:
    """Move to firing or resolved: publish the event and, unless silenced, queue notifications."""
    alert.state = state
    if state == "firing":
        alert.fired_at = now
    else:
        alert.resolved_at = now
    alert.silenced = matching_silence(silences, rule.name, alert.labels) is not None
    session.flush()
    events.publish(f"monitor.alert.{state}", _event_payload(alert, rule), session=session)
    if alert.silenced:
        log.info("alert %s (%s %s) is %s; silenced, no notification", alert.id, rule.name, alert.labels, state)
        return 0
    return enqueue(session, alert, rule, state, server_name, now)


# -- evaluation -------------------------------------------------------------------------------------


@dataclass
class EvalReport:
    """What one evaluation did; counts of transitions."""

    rules: int = 0
    series: int = 0
    stale: int = 0
    pending: int = 0
    firing: int = 0
    resolved: int = 0
    reset: int = 0
    notifications: int = 0


@dataclass(frozen=True)
class _RuleView:
    id: int
    name: str
    cond: Condition


@dataclass(frozen=True)
class _Observation:
    labels: dict[str, str]
    ts: float
    value: float
    stale: bool


def _epoch(ts: float | dt.datetime) -> float:
    return ts.timestamp() if isinstance(ts, dt.datetime) else float(ts)


class AlertEngine:
    """Evaluates every enabled rule against the newest sample of each matching series.

    Series are read with no database transaction open (SQLite has one writer), then every transition
    of one evaluation is written in a single transaction with its events and notifications.
    """

    def __init__(
        self, db: Database, series: SeriesStore, events: EventBus, *, server_name: str = "Control Tower"
    ) -> None:
        self.db = db
        self.series = series
        self.events = events
        self.server_name = server_name
        self._lock = threading.Lock()
        self._intervals: dict[tuple[str, str], tuple[float, float | None]] = {}

    def evaluate(self, now: dt.datetime | None = None) -> EvalReport:
        with self._lock:
            return self._evaluate(now or utcnow())

    def _evaluate(self, now: dt.datetime) -> EvalReport:
        report = EvalReport()
        with self.db.session() as session:
            rules = [
                _RuleView(r.id, r.name, rule_condition(r))
                for r in session.scalars(select(AlertRule).where(AlertRule.enabled.is_(True)))
            ]
            open_fps = set(session.scalars(select(Alert.fingerprint).where(Alert.state.in_(OPEN_STATES))))
        seen: dict[int, list[_Observation]] = {}
        for rule in rules:
            try:
                seen[rule.id] = self._observe(rule, open_fps, now)
            except Exception:
                log.exception("alert rule %r: reading series %r failed", rule.name, rule.cond.metric)
        report.rules = len(rules)
        with self.db.session() as session:
            silences = active_silences(session, now)
            for rule in rules:
                if rule.id in seen:
                    self._apply(session, rule, seen[rule.id], silences, now, report)
        return report

    def _observe(self, rule: _RuleView, open_fps: set[str], now: dt.datetime) -> list[_Observation]:
        cond = rule.cond
        found: list[_Observation] = []
        for name, labels, ts, value in self.series.latest(name=cond.metric, labels=cond.labels or None):
            labels = dict(labels or {})
            if name != cond.metric or not labels_match(cond.labels, labels) or value is None:
                continue
            epoch = _epoch(ts)
            # Staleness decides only when something could change: a breach or an open alert.
            relevant = cond.breached(value) or fingerprint(rule.id, labels) in open_fps
            stale = relevant and self._is_stale(name, labels, epoch, now.timestamp())
            found.append(_Observation(labels, epoch, float(value), stale))
        return found

    def _is_stale(self, name: str, labels: dict[str, str], ts: float, now: float) -> bool:
        age = now - ts
        if age <= MIN_STALE_S:
            return False
        interval = self._usual_interval(name, labels, ts, now)
        limit = FALLBACK_STALE_S if interval is None else max(MIN_STALE_S, STALE_FACTOR * interval)
        return age > limit

    def _usual_interval(self, name: str, labels: dict[str, str], ts: float, now: float) -> float | None:
        """Median gap between the series' recent samples (cached for a while), None with fewer than two."""
        key = (name, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
        cached = self._intervals.get(key)
        if cached is not None and abs(now - cached[0]) < _INTERVAL_CACHE_S:
            return cached[1]
        points: list[float] = []
        for lookback in _INTERVAL_LOOKBACKS_S:  # a wider window only for a sparse series
            for result in self.series.query(name, labels, ts - lookback, ts, None, "last", resolution="raw"):
                if dict(result.labels or {}) == labels:
                    points = sorted(_epoch(p[0]) for p in result.points)
            if len(points) >= 2:
                break
        gaps = [b - a for a, b in itertools.pairwise(points[-6:]) if b > a]
        interval = statistics.median(gaps) if gaps else None
        if len(self._intervals) > 50_000:
            self._intervals.clear()
        self._intervals[key] = (now, interval)
        return interval

    def _apply(
        self,
        session: Session,
        view: _RuleView,
        seen: list[_Observation],
        silences: list[Silence],
        now: dt.datetime,
        report: EvalReport,
    ) -> None:
        rule = session.get(AlertRule, view.id)
        if rule is None or not rule.enabled:  # deleted or disabled since the rules were read
            return
        cond = view.cond
        open_alerts = {
            a.fingerprint: a
            for a in session.scalars(select(Alert).where(Alert.rule_id == rule.id, Alert.state.in_(OPEN_STATES)))
        }
        for ob in seen:
            report.series += 1
            fp = fingerprint(rule.id, ob.labels)
            alert = open_alerts.get(fp)
            if ob.stale:  # missing data: nothing starts, fires, resets or resolves on it
                report.stale += 1
                if alert is not None:
                    alert.last_eval_at = now
                continue
            hit = cond.breached(ob.value)
            if alert is None:
                if not hit:
                    continue
                alert = Alert(
                    rule_id=rule.id,
                    fingerprint=fp,
                    labels=ob.labels,
                    state="pending",
                    value=ob.value,
                    pending_since=now,
                    last_eval_at=now,
                    summary=summarize(cond.metric, ob.labels, ob.value, cond.op, cond.threshold, cond.for_s),
                )
                session.add(alert)
                session.flush()
                open_alerts[fp] = alert
                report.pending += 1
                if cond.for_s <= 0:
                    report.notifications += self._fire(session, alert, rule, silences, now)
                    report.firing += 1
                continue
            alert.value = ob.value
            alert.last_eval_at = now
            if alert.state == "pending":
                if not hit:
                    session.delete(alert)
                    open_alerts.pop(fp)
                    report.reset += 1
                elif (now - alert.pending_since).total_seconds() >= cond.for_s:
                    report.notifications += self._fire(session, alert, rule, silences, now)
                    report.firing += 1
            elif cond.recovered(ob.value):
                alert.summary = summarize(cond.metric, ob.labels, ob.value, cond.op, cond.threshold, cond.for_s)
                report.notifications += _transition(
                    session, self.events, alert, rule, "resolved", silences, self.server_name, now
                )
                open_alerts.pop(fp)
                report.resolved += 1

    def _fire(self, session: Session, alert: Alert, rule: AlertRule, silences: list[Silence], now: dt.datetime) -> int:
        cond = rule_condition(rule)
        alert.summary = summarize(cond.metric, alert.labels, alert.value, cond.op, cond.threshold, cond.for_s)
        return _transition(session, self.events, alert, rule, "firing", silences, self.server_name, now)


def prune(session: Session, older_than: dt.datetime) -> dict[str, int]:
    """Delete alerts resolved, and silences ended, before `older_than` (notifications go with their alert)."""
    alerts_gone = session.execute(
        delete(Alert).where(Alert.state == "resolved", Alert.resolved_at < older_than)
    ).rowcount
    silences_gone = session.execute(delete(Silence).where(Silence.ends_at < older_than)).rowcount
    return {"alerts": int(alerts_gone or 0), "silences": int(silences_gone or 0)}


# -- webhooks ---------------------------------------------------------------------------------------


def get_webhook(session: Session, name: str) -> Webhook:
    hook = session.scalar(select(Webhook).where(Webhook.name == name))
    if hook is None:
        raise NotFound(f"no webhook named {name!r}")
    return hook


def list_webhooks(session: Session) -> list[Webhook]:
    return list(session.scalars(select(Webhook).order_by(Webhook.name)))


def create_webhook(
    session: Session, *, name: str, url: str, min_severity: str = "info", enabled: bool = True
) -> Webhook:
    check_rule_name(name)
    check_severity(min_severity, "min_severity")
    if not url.lower().startswith(("http://", "https://")):
        raise RuleError("url", "must be an http:// or https:// URL")
    if session.scalar(select(Webhook.id).where(Webhook.name == name)) is not None:
        raise Conflict(f"a webhook named {name!r} already exists")
    hook = Webhook(name=name, url=url, min_severity=min_severity, enabled=enabled)
    session.add(hook)
    session.flush()
    return hook


def delete_webhook(session: Session, name: str) -> None:
    session.delete(get_webhook(session, name))
    session.flush()


def webhook_stats(session: Session, webhook_id: int) -> dict[str, int]:
    counts = {"pending": 0, "sent": 0, "failed": 0}
    for status in session.scalars(select(Notification.status).where(Notification.webhook_id == webhook_id)):
        counts[status] = counts.get(status, 0) + 1
    return counts


# -- wiring -----------------------------------------------------------------------------------------


def setup(ctx: Context) -> None:
    """Mount the alerting API, the evaluation and delivery jobs, and the builtin rules at start."""
    from controltower.monitor import alerts_api

    engine = AlertEngine(ctx.db, ctx.series, ctx.events, server_name=ctx.settings.name)
    notifier = Notifier(ctx.db, ctx.settings)
    ctx.include_router(alerts_api.router)
    ctx.scheduler.every("monitor.alerts.evaluate", EVAL_INTERVAL_S, engine.evaluate, run_at_start=True)
    ctx.scheduler.every("monitor.alerts.deliver", DELIVERY_INTERVAL_S, notifier.deliver_due)

    def prune_old() -> None:
        horizon = utcnow() - dt.timedelta(days=ctx.settings.event_retention_days)
        with ctx.db.session() as session:
            prune(session, horizon)

    ctx.scheduler.every("monitor.alerts.prune", 3600.0, prune_old)

    async def default_rules() -> None:
        def create() -> None:
            try:
                with ctx.db.session() as session:
                    created = ensure_default_rules(session)
            except IntegrityError:  # another replica created them at the same moment
                return
            if created:
                log.info("created builtin alert rules: %s", ", ".join(created))

        await asyncio.to_thread(create)

    ctx.add_service("monitor.alerts.default_rules", default_rules)
