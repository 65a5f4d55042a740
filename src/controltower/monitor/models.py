"""Monitor's tables: host state, health checks and their history, alert rules, alerts, silences, webhooks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from controltower.core.db import Base, UtcDateTime, utcnow


class Host(Base):
    """Monitoring state of an enrolled agent's machine (identity and facts live in core's `agents`)."""

    __tablename__ = "monitor_hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), unique=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="unknown")  # up | down | unknown
    status_since: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_metrics_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    samples_received: Mapped[int] = mapped_column(default=0)
    samples_dropped_by_agent: Mapped[int] = mapped_column(default=0)
    # The newest status transitions, oldest first: [{"ts": iso, "from": s, "to": s}], bounded.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)


class Check(Base):
    __tablename__ = "monitor_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    type: Mapped[str] = mapped_column(String(16))  # http | tcp | icmp | dns | tls
    target: Mapped[str] = mapped_column(String(2048))
    interval_s: Mapped[float] = mapped_column(Float, default=60.0)
    timeout_s: Mapped[float] = mapped_column(Float, default=10.0)
    retries: Mapped[int] = mapped_column(default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[str] = mapped_column(String(16), default="unknown")  # up | down | unknown
    state_since: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class CheckResult(Base):
    """One run of a check (kept for the retention period; response time is also a series)."""

    __tablename__ = "monitor_check_results"
    __table_args__ = (Index("ix_monitor_check_results_check_ts", "check_id", "ts"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    check_id: Mapped[int] = mapped_column(ForeignKey("monitor_checks.id", ondelete="CASCADE"))
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    ok: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CheckStateChange(Base):
    """State history: every UP/DOWN transition of a check, the basis of uptime %."""

    __tablename__ = "monitor_check_states"
    __table_args__ = (Index("ix_monitor_check_states_check_ts", "check_id", "ts"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    check_id: Mapped[int] = mapped_column(ForeignKey("monitor_checks.id", ondelete="CASCADE"))
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class AlertRule(Base):
    """`metric{labels} op threshold for DURATION`, with an optional separate recovery threshold."""

    __tablename__ = "monitor_alert_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    metric: Mapped[str] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    op: Mapped[str] = mapped_column(String(2))  # > >= < <= == !=
    threshold: Mapped[float] = mapped_column(Float)
    for_s: Mapped[float] = mapped_column(Float, default=0.0)
    recovery_threshold: Mapped[float | None] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Alert(Base):
    """One alert instance: a rule applied to one labelled series, pending -> firing -> resolved."""

    __tablename__ = "monitor_alerts"
    __table_args__ = (
        Index("ix_monitor_alerts_rule_fp_state", "rule_id", "fingerprint", "state"),
        # One open (pending or firing) instance per fingerprint, whatever the evaluators do.
        Index(
            "uq_monitor_alerts_open_fingerprint",
            "fingerprint",
            unique=True,
            sqlite_where=text("state IN ('pending', 'firing')"),
            postgresql_where=text("state IN ('pending', 'firing')"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("monitor_alert_rules.id", ondelete="CASCADE"))
    fingerprint: Mapped[str] = mapped_column(String(512))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))  # pending | firing | resolved
    value: Mapped[float | None] = mapped_column(Float)
    pending_since: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    fired_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    acked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    acked_by: Mapped[str | None] = mapped_column(String(128))
    last_eval_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    summary: Mapped[str] = mapped_column(Text, default="")
    # A silence matched at the last transition, so its notification was not sent.
    silenced: Mapped[bool] = mapped_column(Boolean, default=False)


class Silence(Base):
    __tablename__ = "monitor_silences"

    id: Mapped[int] = mapped_column(primary_key=True)
    rule_name: Mapped[str | None] = mapped_column(String(255))
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128), default="")
    starts_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    ends_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class Webhook(Base):
    __tablename__ = "monitor_webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    min_severity: Mapped[str] = mapped_column(String(16), default="info")
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Notification(Base):
    """A webhook delivery, retried with backoff until sent or out of attempts."""

    __tablename__ = "monitor_notifications"
    __table_args__ = (
        UniqueConstraint("webhook_id", "alert_id", "kind"),
        Index("ix_monitor_notifications_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("monitor_webhooks.id", ondelete="CASCADE"))
    alert_id: Mapped[int] = mapped_column(ForeignKey("monitor_alerts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # firing | resolved
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
