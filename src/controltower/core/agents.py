"""Registry of enrolled agents: one-time enrolment tokens, agent identity, facts, labels and heartbeats."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import JSON, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from controltower.core.auth import Role, hash_token, issue_token, revoke_subject_tokens
from controltower.core.db import Base, UtcDateTime, utcnow

ENROLMENT_PREFIX = "cte_"


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    capacity: Mapped[int] = mapped_column(default=1)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    heartbeat_interval_s: Mapped[float] = mapped_column(default=10.0)


class EnrolmentToken(Base):
    __tablename__ = "agent_enrolments"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    used_by: Mapped[int | None] = mapped_column()
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)


class EnrolmentError(Exception):
    """The enrolment token is unknown, used or expired."""


def create_enrolment(session: Session, ttl: dt.timedelta, labels: list[str] | None = None) -> str:
    token = ENROLMENT_PREFIX + secrets.token_urlsafe(24)
    session.add(EnrolmentToken(token_hash=hash_token(token), expires_at=utcnow() + ttl, labels=labels or []))
    return token


def enrol(
    session: Session,
    enrolment_token: str,
    *,
    name: str,
    facts: dict[str, Any],
    labels: list[str],
    capacity: int,
    version: str | None,
) -> tuple[Agent, str]:
    """Exchange a one-time enrolment token for the agent's own token.

    An agent re-enrolling under an existing name keeps its id (and its history); its old tokens are revoked.
    """
    row = session.scalar(
        select(EnrolmentToken).where(EnrolmentToken.token_hash == hash_token(enrolment_token)).with_for_update()
    )
    if row is None:
        raise EnrolmentError("unknown enrolment token")
    if row.used_at is not None:
        raise EnrolmentError("enrolment token was already used")
    if row.expires_at <= utcnow():
        raise EnrolmentError("enrolment token has expired")
    agent = register_agent(session, name=name, facts=facts, labels=sorted({*labels, *row.labels}),
                           capacity=capacity, version=version)
    row.used_at = utcnow()
    row.used_by = agent.id
    return agent, agent_token(session, agent)


def register_agent(
    session: Session, *, name: str, facts: dict[str, Any], labels: list[str], capacity: int, version: str | None
) -> Agent:
    agent = session.scalar(select(Agent).where(Agent.name == name))
    if agent is None:
        agent = Agent(name=name)
        session.add(agent)
    agent.facts = facts
    agent.labels = labels
    agent.capacity = capacity
    agent.version = version
    agent.last_seen = utcnow()
    session.flush()
    return agent


def agent_token(session: Session, agent: Agent) -> str:
    """Revoke the agent's previous tokens and issue a new one."""
    subject = f"agent:{agent.id}"
    revoke_subject_tokens(session, subject)
    return issue_token(session, name=f"agent {agent.name}", role=Role.agent, subject=subject)


def heartbeat(session: Session, agent_id: int, interval_s: float | None = None) -> Agent | None:
    agent = session.get(Agent, agent_id)
    if agent is None:
        return None
    agent.last_seen = utcnow()
    if interval_s:
        agent.heartbeat_interval_s = interval_s
    return agent


def list_agents(session: Session) -> list[Agent]:
    return list(session.scalars(select(Agent).order_by(Agent.name)))


def get_agent_by_name(session: Session, name: str) -> Agent | None:
    return session.scalar(select(Agent).where(Agent.name == name))
