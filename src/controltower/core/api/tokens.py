"""API tokens for people and scripts: issue one with a role, list them, revoke one."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from controltower.core.auth import Admin, ApiToken, Role, hash_token, issue_token
from controltower.core.db import utcnow
from controltower.core.deps import CtxDep, SessionDep

router = APIRouter(tags=["tokens"])

PERSON_ROLES = (Role.admin, Role.operator, Role.viewer)


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="What the token is for, e.g. 'grafana' or 'mina'")
    role: Role = Field(description="admin, operator or viewer")
    ttl_days: float | None = Field(None, gt=0, description="Expires after this many days; never when omitted")


class TokenIssued(BaseModel):
    id: int
    name: str
    role: Role
    token: str
    expires_at: dt.datetime | None


class TokenPublic(BaseModel):
    id: int
    name: str
    role: str
    subject: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, session: SessionDep, _: Admin) -> TokenIssued:
    """A new token; its value is shown in this answer only."""
    if body.role not in PERSON_ROLES:
        raise HTTPException(422, detail=f"role: must be admin, operator or viewer (agents and devices enrol), "
                                        f"not {body.role.value}")
    ttl = dt.timedelta(days=body.ttl_days) if body.ttl_days else None
    token = issue_token(session, name=body.name, role=body.role, subject=f"token:{body.name}", ttl=ttl)
    session.flush()
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
    session.commit()
    return TokenIssued(id=row.id, name=row.name, role=body.role, token=token, expires_at=row.expires_at)


@router.get("/tokens")
def list_tokens(session: SessionDep, _: Admin) -> list[TokenPublic]:
    rows = session.scalars(select(ApiToken).order_by(ApiToken.id))
    return [TokenPublic.model_validate(r, from_attributes=True) for r in rows]


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: int, ctx: CtxDep, session: SessionDep, principal: Admin) -> TokenPublic:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"token_id: no token {token_id}")
    if row.id == principal.token_id:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="token_id: refusing to revoke the token making this call")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    session.commit()
    ctx.principals.forget_token(row.id)
    return TokenPublic.model_validate(row, from_attributes=True)
