"""Monitor's REST routes for hosts (metrics ingestion, liveness) and health checks."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from controltower.core.auth import Admin, AgentPrincipal, Operator, Viewer
from controltower.core.deps import CtxDep, SessionDep
from controltower.core.series import SeriesError
from controltower.monitor import check_runner, checks, hosts
from controltower.monitor.schemas import (
    METRICS_PUSH,
    CheckCreate,
    CheckDetail,
    CheckPublic,
    CheckResultPublic,
    CheckRunResult,
    CheckUpdate,
    HostDetail,
    HostPublic,
    MetricsAccepted,
    MetricsPush,
    StateChangePublic,
    parse_metrics_push,
)

hosts_router = APIRouter(prefix="/monitor/hosts", tags=["monitor"])
checks_router = APIRouter(prefix="/monitor/checks", tags=["monitor"])


def _not_found(exc: LookupError) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))


# -- hosts ----------------------------------------------------------------------------------------


async def read_push(request: Request) -> MetricsPush:
    """The body parsed straight from bytes, skipping FastAPI's generic body path."""
    body = await request.body()
    try:
        return parse_metrics_push(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()]
        ) from None


@hosts_router.post(
    "/metrics",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": METRICS_PUSH.json_schema()}}}
    },
)
async def push_metrics(
    body: Annotated[MetricsPush, Depends(read_push)], ctx: CtxDep, principal: AgentPrincipal
) -> MetricsAccepted:
    """An agent's collector pushes one interval of samples; the `host` label is always the agent's name."""
    try:
        host_name, _ = await hosts.receive_metrics(ctx, int(principal.subject_id), body)
    except SeriesError as exc:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{exc.field}: {exc.reason}"
        ) from None
    except hosts.AgentGone as exc:
        raise _not_found(exc) from None
    return MetricsAccepted(host=host_name, accepted=len(body["samples"]))


@hosts_router.get("")
def list_hosts(ctx: CtxDep, session: SessionDep, _: Viewer) -> list[HostPublic]:
    """Every monitored host: status, last heartbeat, facts summary, latest CPU / memory / fullest disk."""
    by_host = hosts.latest_by_host(ctx.series.latest(name_prefix="host."))
    return [hosts.host_public(h, a, by_host.get(h.name, [])) for h, a in hosts.read_hosts(session)]


@hosts_router.get("/{name}")
def get_host(name: str, ctx: CtxDep, session: SessionDep, _: Viewer) -> HostDetail:
    """One host: all facts, status history, and the latest value of every metric."""
    # Read the series first: a second session opened while this one holds SQLite's write lock would wait on it.
    samples = ctx.series.latest(name_prefix="host.", labels={"host": name})
    try:
        host, agent = hosts.read_host(session, name)
    except hosts.HostNotFound as exc:
        raise _not_found(exc) from None
    return hosts.host_detail(host, agent, samples)


@hosts_router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_host(name: str, session: SessionDep, _: Admin) -> Response:
    """Forget a host's monitoring state; it returns if its agent pushes metrics again."""
    try:
        hosts.delete_host(session, name)
    except hosts.HostNotFound as exc:
        raise _not_found(exc) from None
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- checks ---------------------------------------------------------------------------------------


def _invalid(exc: checks.CheckInvalid) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"{exc.field}: {exc.reason}")


def _conflict(name: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=f"name: a check named {name!r} already exists")


@checks_router.post("", status_code=status.HTTP_201_CREATED)
def create_check(body: CheckCreate, ctx: CtxDep, session: SessionDep, _: Operator) -> CheckPublic:
    """Add a check; it runs at once and then every interval."""
    try:
        check = checks.create_check(session, body)
        session.commit()
    except checks.CheckInvalid as exc:
        raise _invalid(exc) from None
    except (checks.CheckExists, IntegrityError):
        raise _conflict(body.name) from None
    check_runner.runner_for(ctx).notify_changed()
    return checks.check_public(check, None)


@checks_router.get("")
def list_checks(session: SessionDep, _: Viewer) -> list[CheckPublic]:
    """Every check with its state, last latency and uptime over 24 h."""
    rows = checks.read_checks(session)
    uptimes = checks.uptime(session, dt.timedelta(days=1))
    return [checks.check_public(c, uptimes.get(c.id)) for c in rows]


def _read(session: SessionDep, name: str) -> checks.Check:
    try:
        return checks.read_check(session, name)
    except checks.CheckNotFound as exc:
        raise _not_found(exc) from None


@checks_router.get("/{name}")
def get_check(name: str, session: SessionDep, _: Viewer) -> CheckDetail:
    """One check with uptime over 24 h / 7 d / 30 d and its recent state changes."""
    check = _read(session, name)
    windows = {
        days: checks.uptime(session, dt.timedelta(days=days), [check.id])[check.id] for days in (1, 7, 30)
    }
    history = [
        StateChangePublic.model_validate(c, from_attributes=True) for c in checks.read_history(session, check)
    ]
    public = checks.check_public(check, windows[1])
    return CheckDetail(**public.model_dump(), uptime_7d=windows[7], uptime_30d=windows[30], history=history)


@checks_router.patch("/{name}")
def update_check(name: str, body: CheckUpdate, ctx: CtxDep, session: SessionDep, _: Operator) -> CheckPublic:
    """Change a check; the runner picks it up at once."""
    try:
        check = checks.update_check(session, name, body)
    except checks.CheckNotFound as exc:
        raise _not_found(exc) from None
    except checks.CheckInvalid as exc:
        raise _invalid(exc) from None
    session.commit()
    check_runner.runner_for(ctx).notify_changed()
    return checks.check_public(check, checks.uptime(session, dt.timedelta(days=1), [check.id])[check.id])


@checks_router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_check(name: str, ctx: CtxDep, session: SessionDep, _: Operator) -> Response:
    """Delete a check with its results and history."""
    try:
        checks.delete_check(session, name)
    except checks.CheckNotFound as exc:
        raise _not_found(exc) from None
    session.commit()
    check_runner.runner_for(ctx).notify_changed()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@checks_router.get("/{name}/results")
def list_results(
    name: str, session: SessionDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> list[CheckResultPublic]:
    """The newest results of a check, newest first."""
    check = _read(session, name)
    return [
        CheckResultPublic.model_validate(r, from_attributes=True)
        for r in checks.read_results(session, check, limit)
    ]


@checks_router.post("/{name}/run")
async def run_check(name: str, ctx: CtxDep, _: Operator) -> CheckRunResult:
    """Run a check now and return its result (also recorded like a scheduled run)."""
    try:
        return await check_runner.runner_for(ctx).run_now(name)
    except checks.CheckNotFound as exc:
        raise _not_found(exc) from None
