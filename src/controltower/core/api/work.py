"""Work queue routes: operators enqueue and cancel, agents fetch-and-lock, renew and report."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from controltower.core.agents import Agent
from controltower.core.auth import AgentPrincipal, Operator, Principal, Viewer
from controltower.core.deps import CtxDep, SessionDep
from controltower.core.work import (
    IllegalTransition,
    NotLeaseOwner,
    WorkError,
    WorkItem,
    WorkItemNotFound,
    WorkStatus,
)

router = APIRouter(tags=["work"])

MAX_WAIT_S = 60.0
UNPROCESSABLE = 422  # by number: its starlette name changed between versions


class WorkItemCreate(BaseModel):
    kind: str = Field(min_length=1, max_length=128, description="What to do, e.g. 'rpa.run'")
    payload: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list, description="The agent must carry every one of these")
    agent_id: int | None = Field(None, description="Only this agent may claim the item")
    max_attempts: int = Field(3, ge=1, le=100)
    lease_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="Default: CT_WORK_LEASE_S")
    on_expiry: Literal["retry", "fail"] = "retry"


class WorkItemPublic(BaseModel):
    id: int
    kind: str
    payload: dict[str, Any]
    labels: list[str]
    agent_id: int | None
    status: WorkStatus
    attempts: int
    max_attempts: int
    on_expiry: str
    lease_owner: int | None
    lease_expires_at: dt.datetime | None
    lease_s: float | None
    result: Any | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    not_before: dt.datetime | None


class WorkFetch(BaseModel):
    kinds: list[str] = Field(min_length=1, description="Kinds of work this agent serves")
    limit: int = Field(1, ge=1, le=100)
    wait_s: float = Field(0.0, ge=0, le=MAX_WAIT_S, description="Long-poll up to this many seconds")


class WorkRenew(BaseModel):
    lease_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)


class WorkComplete(BaseModel):
    result: Any = None


class WorkFail(BaseModel):
    error: str = Field(min_length=1, max_length=100_000)
    retry: bool = Field(True, description="Requeue while attempts remain; false fails it for good")


def _public(item: WorkItem) -> WorkItemPublic:
    return WorkItemPublic.model_validate(item, from_attributes=True)


def _http_error(exc: WorkError) -> HTTPException:
    if isinstance(exc, WorkItemNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(exc, IllegalTransition | NotLeaseOwner):
        return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail=str(exc))


def _agent_id(principal: Principal) -> int:
    return int(principal.subject_id)


@router.post("/work", status_code=status.HTTP_201_CREATED)
def enqueue(body: WorkItemCreate, ctx: CtxDep, session: SessionDep, _: Operator) -> WorkItemPublic:
    """Queue an item for the first agent that serves its kind and carries its labels."""
    if body.agent_id is not None and session.get(Agent, body.agent_id) is None:
        raise HTTPException(
            UNPROCESSABLE, detail=f"agent_id: no agent with id {body.agent_id}"
        )
    try:
        item = ctx.work.enqueue(
            session, body.kind, body.payload, labels=body.labels, agent_id=body.agent_id,
            max_attempts=body.max_attempts, lease_s=body.lease_s, on_expiry=body.on_expiry,
        )
    except ValueError as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    session.commit()
    return _public(item)


@router.get("/work")
def list_work(
    ctx: CtxDep,
    session: SessionDep,
    _: Viewer,
    status_: Annotated[WorkStatus | None, Query(alias="status")] = None,
    kind: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[WorkItemPublic]:
    """Newest first."""
    items = ctx.work.list(status_.value if status_ else None, kind, limit, session=session)
    session.commit()
    return [_public(i) for i in items]


@router.get("/work/{item_id}")
def get_work(item_id: int, ctx: CtxDep, session: SessionDep, _: Viewer) -> WorkItemPublic:
    try:
        item = ctx.work.get(item_id, session=session)
    except WorkError as exc:
        raise _http_error(exc) from exc
    session.commit()
    return _public(item)


def _agent_labels(session: Session, agent_id: int) -> list[str]:
    agent = session.get(Agent, agent_id)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"agent {agent_id} no longer exists")
    labels = list(agent.labels or [])
    session.commit()  # end the read before the long-poll, so no transaction is held while waiting
    return labels


@router.post("/work/fetch")
async def fetch(
    body: WorkFetch, ctx: CtxDep, session: SessionDep, principal: AgentPrincipal
) -> list[WorkItemPublic]:
    """Claim up to `limit` items of `kinds` with a lease; wait up to `wait_s` for one to appear."""
    agent_id = _agent_id(principal)
    labels = await asyncio.to_thread(_agent_labels, session, agent_id)
    items = await ctx.work.fetch(agent_id, labels, body.kinds, limit=body.limit, wait_s=body.wait_s)
    return [_public(i) for i in items]


@router.post("/work/{item_id}/renew")
def renew(
    item_id: int, ctx: CtxDep, session: SessionDep, principal: AgentPrincipal, body: WorkRenew | None = None
) -> WorkItemPublic:
    """Extend the lease; 409 once the item was cancelled, expired or leased to someone else."""
    try:
        item = ctx.work.renew(item_id, _agent_id(principal), body.lease_s if body else None, session=session)
    except WorkError as exc:
        raise _http_error(exc) from exc
    session.commit()
    return _public(item)


@router.post("/work/{item_id}/complete")
def complete(
    item_id: int,
    ctx: CtxDep,
    session: SessionDep,
    principal: AgentPrincipal,
    body: WorkComplete | None = None,
) -> WorkItemPublic:
    """Report success with a JSON result."""
    result = body.result if body else None
    try:
        item = ctx.work.complete(item_id, _agent_id(principal), result, session=session)
    except WorkError as exc:
        raise _http_error(exc) from exc
    session.commit()
    return _public(item)


@router.post("/work/{item_id}/fail")
def fail(
    item_id: int, body: WorkFail, ctx: CtxDep, session: SessionDep, principal: AgentPrincipal
) -> WorkItemPublic:
    """Report failure; the item is retried after a backoff while attempts remain, unless `retry` is false."""
    try:
        item = ctx.work.fail(item_id, _agent_id(principal), body.error, body.retry, session=session)
    except WorkError as exc:
        raise _http_error(exc) from exc
    session.commit()
    return _public(item)


@router.post("/work/{item_id}/cancel")
def cancel(item_id: int, ctx: CtxDep, session: SessionDep, _: Operator) -> WorkItemPublic:
    try:
        item = ctx.work.cancel(item_id, session=session)
    except WorkError as exc:
        raise _http_error(exc) from exc
    session.commit()
    return _public(item)
