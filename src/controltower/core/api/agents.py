"""Agent enrolment, identity and heartbeats."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from controltower.core import agents
from controltower.core.auth import Admin, AgentPrincipal, Viewer
from controltower.core.deps import CtxDep, SessionDep

router = APIRouter(tags=["agents"])

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$"


class EnrolmentCreate(BaseModel):
    ttl_s: float = Field(24 * 3600, gt=0, le=30 * 24 * 3600, description="How long the token may be used")
    labels: list[str] = Field(default_factory=list, description="Labels the enrolled agent receives")


class EnrolmentPublic(BaseModel):
    token: str
    expires_in_s: float


class AgentEnrol(BaseModel):
    enrolment_token: str
    name: str = Field(pattern=NAME_PATTERN)
    facts: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list)
    capacity: int = Field(1, ge=1, le=1024)
    version: str | None = None


class AgentEnrolled(BaseModel):
    agent_id: int
    name: str
    token: str


class AgentPublic(BaseModel):
    id: int
    name: str
    labels: list[str]
    capacity: int
    facts: dict[str, Any]
    version: str | None
    created_at: dt.datetime
    last_seen: dt.datetime | None


class Heartbeat(BaseModel):
    interval_s: float | None = Field(None, gt=0)
    facts: dict[str, Any] | None = None


@router.post("/agents/enrollments", status_code=status.HTTP_201_CREATED)
def create_enrolment(body: EnrolmentCreate, session: SessionDep, _: Admin) -> EnrolmentPublic:
    """A one-time token an agent exchanges for its own token."""
    token = agents.create_enrolment(session, dt.timedelta(seconds=body.ttl_s), body.labels)
    session.commit()
    return EnrolmentPublic(token=token, expires_in_s=body.ttl_s)


@router.post("/agents/enroll", status_code=status.HTTP_201_CREATED)
def enrol(body: AgentEnrol, session: SessionDep, ctx: CtxDep) -> AgentEnrolled:
    """Exchange an enrolment token (no bearer token needed) for the agent's own API token."""
    try:
        agent, token = agents.enrol(
            session, body.enrolment_token, name=body.name, facts=body.facts, labels=body.labels,
            capacity=body.capacity, version=body.version,
        )
    except agents.EnrolmentError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=f"enrolment_token: {exc}") from exc
    ctx.events.publish("core.agent.enrolled", {"agent_id": agent.id, "name": agent.name}, session=session)
    session.commit()
    ctx.principals.forget_subject(f"agent:{agent.id}")
    return AgentEnrolled(agent_id=agent.id, name=agent.name, token=token)


@router.get("/agents")
def list_agents(session: SessionDep, _: Viewer) -> list[AgentPublic]:
    return [AgentPublic.model_validate(a, from_attributes=True) for a in agents.list_agents(session)]


@router.get("/agents/me")
def me(session: SessionDep, principal: AgentPrincipal) -> AgentPublic:
    agent = session.get(agents.Agent, int(principal.subject_id))
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="agent no longer exists")
    return AgentPublic.model_validate(agent, from_attributes=True)


@router.post("/agents/heartbeat")
def heartbeat(body: Heartbeat, session: SessionDep, principal: AgentPrincipal) -> dict[str, str]:
    agent = agents.heartbeat(session, int(principal.subject_id), body.interval_s)
    if agent is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="agent no longer exists")
    if body.facts:
        agent.facts = body.facts
    session.commit()
    return {"status": "ok"}
