"""REST routes of alerting under /api/v1/monitor: alerts, ack, rules, silences, webhooks."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controltower.core.auth import Operator, Principal, User, Viewer
from controltower.core.db import utcnow
from controltower.core.deps import CtxDep, SessionDep
from controltower.monitor import alerts
from controltower.monitor.alerts_schemas import (
    AlertPublic,
    RuleCreate,
    RulePublic,
    RuleUpdate,
    SilenceCreate,
    SilencePublic,
    WebhookCreate,
    WebhookPublic,
    WebhookTestResult,
)
from controltower.monitor.models import Alert, AlertRule, Silence, Webhook
from controltower.monitor.notify import redact_url, send_test
from controltower.monitor.rules import RuleError, format_expr, parse_duration

router = APIRouter(prefix="/monitor", tags=["monitor: alerts"])


@contextmanager
def _errors() -> Iterator[None]:
    """Service errors as HTTP answers: bad input 422 (naming the field), clashes 409, unknown 404."""
    try:
        yield
    except RuleError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc)) from exc
    except alerts.NotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except alerts.Conflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except IntegrityError as exc:  # lost a race with a concurrent create of the same name
        raise HTTPException(
            status.HTTP_409_CONFLICT, detail="it already exists (created concurrently)"
        ) from exc


def _commit(session: Session, what: str) -> None:
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"{what} already exists") from exc


def _who(session: Session, principal: Principal) -> str:
    """The user's name for a user token, else the token's name."""
    if principal.subject_kind == "user":
        try:
            user = session.get(User, int(principal.subject_id))
        except ValueError:
            user = None
        if user is not None:
            return user.name
    return principal.name


# -- alerts -----------------------------------------------------------------------------------------


def _alert_public(alert: Alert, rule: AlertRule, silences: list[Silence]) -> AlertPublic:
    match = alerts.matching_silence(silences, rule.name, alert.labels) if alert.state != "resolved" else None
    return AlertPublic(
        id=alert.id,
        rule=rule.name,
        severity=rule.severity,
        labels=alert.labels,
        state=alert.state,
        value=alert.value,
        summary=alert.summary,
        pending_since=alert.pending_since,
        fired_at=alert.fired_at,
        resolved_at=alert.resolved_at,
        acked_at=alert.acked_at,
        acked_by=alert.acked_by,
        last_eval_at=alert.last_eval_at,
        silenced=alert.silenced,
        silenced_by=match.id if match else None,
    )


@router.get("/alerts", response_model=list[AlertPublic])
def list_alerts(
    session: SessionDep,
    _principal: Viewer,
    state: Annotated[list[str] | None, Query(description="pending, firing or resolved (repeatable)")] = None,
    rule: Annotated[str | None, Query(description="Only this rule's alerts")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> list[AlertPublic]:
    """Alerts, newest first; all states unless `state` is given."""
    wanted = [s for item in state or [] for s in item.split(",") if s]
    for s in wanted:
        if s not in alerts.STATES:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_ENTITY,
                detail=f"state: {s!r} is not one of {', '.join(alerts.STATES)}",
            )
    silences = alerts.active_silences(session, utcnow())
    rows = alerts.list_alerts(session, wanted, rule, limit)
    return [_alert_public(a, r, silences) for a, r in rows]


@router.get("/alerts/{alert_id}", response_model=AlertPublic)
def get_alert(alert_id: int, session: SessionDep, _principal: Viewer) -> AlertPublic:
    with _errors():
        alert, rule = alerts.get_alert(session, alert_id)
    return _alert_public(alert, rule, alerts.active_silences(session, utcnow()))


@router.post("/alerts/{alert_id}/ack", response_model=AlertPublic)
def ack_alert(alert_id: int, ctx: CtxDep, session: SessionDep, principal: Operator) -> AlertPublic:
    """Acknowledge: someone is on it. Shown in lists; no further notifications are sent for it anyway."""
    with _errors():
        alert, rule = alerts.ack_alert(session, ctx.events, alert_id, _who(session, principal))
    session.commit()
    return _alert_public(alert, rule, alerts.active_silences(session, utcnow()))


# -- rules ------------------------------------------------------------------------------------------


def _rule_public(session: Session, rule: AlertRule) -> RulePublic:
    counts = dict(
        session.execute(
            select(Alert.state, func.count())
            .where(Alert.rule_id == rule.id, Alert.state.in_(alerts.OPEN_STATES))
            .group_by(Alert.state)
        ).all()
    )
    return RulePublic(
        name=rule.name,
        expr=format_expr(rule.metric, rule.labels or {}, rule.op, rule.threshold, rule.for_s),
        metric=rule.metric,
        labels=rule.labels or {},
        op=rule.op,
        threshold=rule.threshold,
        for_s=rule.for_s,
        recovery_threshold=rule.recovery_threshold,
        severity=rule.severity,
        description=rule.description,
        enabled=rule.enabled,
        builtin=rule.builtin,
        created_at=rule.created_at,
        pending=counts.get("pending", 0),
        firing=counts.get("firing", 0),
    )


@router.get("/rules", response_model=list[RulePublic])
def list_rules(session: SessionDep, _principal: Viewer) -> list[RulePublic]:
    return [_rule_public(session, r) for r in alerts.list_rules(session)]


@router.post("/rules", response_model=RulePublic, status_code=status.HTTP_201_CREATED)
def create_rule(body: RuleCreate, session: SessionDep, _principal: Operator) -> RulePublic:
    """Add a rule from `expr` or from `metric`/`op`/`threshold`; it applies to every matching series."""
    with _errors():
        rule = alerts.create_rule(session, **body.model_dump())
    _commit(session, f"an alert rule named {body.name!r}")
    return _rule_public(session, rule)


@router.get("/rules/{name}", response_model=RulePublic)
def get_rule(name: str, session: SessionDep, _principal: Viewer) -> RulePublic:
    with _errors():
        return _rule_public(session, alerts.get_rule(session, name))


@router.patch("/rules/{name}", response_model=RulePublic)
def update_rule(
    name: str, body: RuleUpdate, ctx: CtxDep, session: SessionDep, _principal: Operator
) -> RulePublic:
    with _errors():
        rule = alerts.update_rule(
            session, ctx.events, name, body.model_dump(exclude_unset=True), server_name=ctx.settings.name
        )
    session.commit()
    return _rule_public(session, rule)


@router.delete("/rules/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_rule(name: str, session: SessionDep, _principal: Operator) -> Response:
    """Delete a rule and its alerts. Builtin rules cannot be deleted, only disabled."""
    with _errors():
        alerts.delete_rule(session, name)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- silences ---------------------------------------------------------------------------------------


def _silence_public(silence: Silence, now: dt.datetime) -> SilencePublic:
    return SilencePublic(
        id=silence.id,
        rule_name=silence.rule_name,
        labels=silence.labels or {},
        reason=silence.reason,
        created_by=silence.created_by,
        starts_at=silence.starts_at,
        ends_at=silence.ends_at,
        active=silence.starts_at <= now < silence.ends_at,
    )


@router.get("/silences", response_model=list[SilencePublic])
def list_silences(
    session: SessionDep,
    _principal: Viewer,
    expired: Annotated[bool, Query(description="Include expired silences")] = False,
) -> list[SilencePublic]:
    now = utcnow()
    return [_silence_public(s, now) for s in alerts.list_silences(session, include_expired=expired, now=now)]


@router.post("/silences", response_model=SilencePublic, status_code=status.HTTP_201_CREATED)
def create_silence(body: SilenceCreate, session: SessionDep, principal: Operator) -> SilencePublic:
    """Mute notifications of matching alerts until it ends; their states still change."""
    now = utcnow()
    with _errors():
        if (body.duration is None) == (body.ends_at is None):
            raise RuleError("duration", "give either duration (e.g. '2h') or ends_at")
        if body.ends_at is not None:
            if body.ends_at.tzinfo is None:
                raise RuleError("ends_at", "must carry a time zone (e.g. 2030-01-01T00:00:00Z)")
            ends_at = body.ends_at
        else:
            seconds = parse_duration(body.duration, "duration")  # type: ignore[arg-type]
            if seconds <= 0:
                raise RuleError("duration", "must be more than zero")
            ends_at = now + dt.timedelta(seconds=seconds)
        silence = alerts.create_silence(
            session,
            ends_at=ends_at,
            rule_name=body.rule_name,
            labels=body.labels,
            reason=body.reason,
            created_by=_who(session, principal),
            now=now,
        )
    session.commit()
    return _silence_public(silence, now)


@router.delete("/silences/{silence_id}", response_model=SilencePublic)
def expire_silence(silence_id: int, session: SessionDep, _principal: Operator) -> SilencePublic:
    """Expire a silence now (kept for the record)."""
    now = utcnow()
    with _errors():
        silence = alerts.expire_silence(session, silence_id, now)
    session.commit()
    return _silence_public(silence, now)


# -- webhooks ---------------------------------------------------------------------------------------


def _webhook_public(session: Session, hook: Webhook) -> WebhookPublic:
    stats = alerts.webhook_stats(session, hook.id)
    return WebhookPublic(
        name=hook.name,
        url=redact_url(hook.url),
        enabled=hook.enabled,
        min_severity=hook.min_severity,
        created_at=hook.created_at,
        pending=stats["pending"],
        sent=stats["sent"],
        failed=stats["failed"],
    )


@router.get("/webhooks", response_model=list[WebhookPublic])
def list_webhooks(session: SessionDep, _principal: Viewer) -> list[WebhookPublic]:
    return [_webhook_public(session, h) for h in alerts.list_webhooks(session)]


@router.post("/webhooks", response_model=WebhookPublic, status_code=status.HTTP_201_CREATED)
def create_webhook(body: WebhookCreate, session: SessionDep, _principal: Operator) -> WebhookPublic:
    """Receive a JSON POST on every firing and resolved transition (retried with backoff)."""
    with _errors():
        hook = alerts.create_webhook(session, **body.model_dump())
    _commit(session, f"a webhook named {body.name!r}")
    return _webhook_public(session, hook)


@router.delete("/webhooks/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_webhook(name: str, session: SessionDep, _principal: Operator) -> Response:
    with _errors():
        alerts.delete_webhook(session, name)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/webhooks/{name}/test", response_model=WebhookTestResult)
def test_webhook(name: str, ctx: CtxDep, session: SessionDep, _principal: Operator) -> WebhookTestResult:
    """POST a sample payload now, once, and report the outcome."""
    with _errors():
        hook = alerts.get_webhook(session, name)
    url = hook.url
    session.rollback()  # no transaction held open while waiting on the network
    result = asyncio.run(send_test(url, ctx.settings.name, name))
    return WebhookTestResult(ok=result.ok, status=result.status, error=result.error)
