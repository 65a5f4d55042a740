"""API models of alerting: rules, alerts, silences, webhooks."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

DurationIn = float | str


class RuleCreate(BaseModel):
    """Either `expr` ('host.cpu.percent > 90 for 5m') or `metric`, `op`, `threshold` (+ `labels`, `for_s`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128, description="Unique rule name, e.g. cpu-high")
    expr: str | None = Field(
        None, max_length=2048, description="metric{label=value} OP NUMBER [for DURATION]"
    )
    metric: str | None = Field(None, max_length=255)
    labels: dict[str, str] | None = Field(None, description="Only series with these labels")
    op: str | None = Field(None, description="> >= < <= == !=")
    threshold: float | None = Field(None, allow_inf_nan=False)
    for_s: DurationIn | None = Field(None, description="Seconds, or '30s', '5m', '1h': how long it must hold")
    recovery_threshold: float | None = Field(
        None,
        allow_inf_nan=False,
        description="Hysteresis: a firing alert resolves only once the value crosses this (below, for >)",
    )
    severity: str = Field("warning", description="info, warning or critical")
    description: str = Field("", max_length=4096)
    enabled: bool = True


class RuleUpdate(BaseModel):
    """Fields to change; `recovery_threshold: null` removes the hysteresis."""

    model_config = ConfigDict(extra="forbid")

    expr: str | None = Field(None, max_length=2048)
    metric: str | None = Field(None, max_length=255)
    labels: dict[str, str] | None = None
    op: str | None = None
    threshold: float | None = Field(None, allow_inf_nan=False)
    for_s: DurationIn | None = None
    recovery_threshold: float | None = Field(None, allow_inf_nan=False)
    severity: str | None = None
    description: str | None = Field(None, max_length=4096)
    enabled: bool | None = None


class RulePublic(BaseModel):
    name: str
    expr: str
    metric: str
    labels: dict[str, str]
    op: str
    threshold: float
    for_s: float
    recovery_threshold: float | None
    severity: str
    description: str
    enabled: bool
    builtin: bool
    created_at: dt.datetime
    pending: int = Field(description="Open pending alerts of this rule")
    firing: int = Field(description="Open firing alerts of this rule")


class AlertPublic(BaseModel):
    id: int
    rule: str
    severity: str
    labels: dict[str, str]
    state: str = Field(description="pending, firing or resolved")
    value: float | None
    summary: str
    pending_since: dt.datetime
    fired_at: dt.datetime | None
    resolved_at: dt.datetime | None
    acked_at: dt.datetime | None
    acked_by: str | None
    last_eval_at: dt.datetime | None
    silenced: bool = Field(
        description="A silence matched at its last transition, so no notification went out"
    )
    silenced_by: int | None = Field(description="The active silence matching it now, if any")


class SilenceCreate(BaseModel):
    """Match by rule name and/or a labels subset; lasts `duration` (or until `ends_at`)."""

    model_config = ConfigDict(extra="forbid")

    rule_name: str | None = Field(None, max_length=255)
    labels: dict[str, str] = Field(default_factory=dict)
    duration: DurationIn | None = Field(None, description="Seconds, or '30m', '2h', '1d'")
    ends_at: dt.datetime | None = Field(None, description="Instead of duration")
    reason: str = Field("", max_length=4096)


class SilencePublic(BaseModel):
    id: int
    rule_name: str | None
    labels: dict[str, str]
    reason: str
    created_by: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    active: bool


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=128)
    url: str = Field(max_length=2048, description="http(s) URL that receives a JSON POST per transition")
    min_severity: str = Field("info", description="Only rules at least this severe: info, warning, critical")
    enabled: bool = True


class WebhookPublic(BaseModel):
    name: str
    url: str = Field(description="Redacted: scheme, host and port only (the path may hold a secret)")
    enabled: bool
    min_severity: str
    created_at: dt.datetime
    pending: int
    sent: int
    failed: int


class WebhookTestResult(BaseModel):
    ok: bool
    status: int | None
    error: str | None
