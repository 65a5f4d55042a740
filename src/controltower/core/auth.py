"""Users, API tokens (stored hashed), roles, and the FastAPI dependencies that check them on every route."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column
from starlette.concurrency import run_in_threadpool

from controltower.core.db import Base, UtcDateTime, utcnow


class Role(StrEnum):
    admin = "admin"
    operator = "operator"
    viewer = "viewer"
    agent = "agent"
    device = "device"


# Which roles satisfy a requirement: admins may do what operators may, operators what viewers may.
_IMPLIED: dict[Role, set[Role]] = {
    Role.admin: {Role.admin},
    Role.operator: {Role.admin, Role.operator},
    Role.viewer: {Role.admin, Role.operator, Role.viewer},
    Role.agent: {Role.agent},
    Role.device: {Role.device},
}

TOKEN_PREFIX = "ct_"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token. `subject` says who holds it: `user:<id>`, `agent:<id>` or `device:<id>`."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain SHA-256 is not guessable; passwords use argon2.
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def issue_token(
    session: Session,
    *,
    name: str,
    role: Role,
    subject: str,
    user_id: int | None = None,
    ttl: dt.timedelta | None = None,
) -> str:
    """Store a new token's hash and return the token itself, which is never stored or shown again."""
    token = new_token()
    session.add(
        ApiToken(
            token_hash=hash_token(token),
            name=name,
            role=role.value,
            subject=subject,
            user_id=user_id,
            expires_at=utcnow() + ttl if ttl else None,
        )
    )
    return token


def revoke_subject_tokens(session: Session, subject: str) -> int:
    now = utcnow()
    rows = session.scalars(select(ApiToken).where(ApiToken.subject == subject, ApiToken.revoked_at.is_(None)))
    count = 0
    for row in rows:
        row.revoked_at = now
        count += 1
    return count


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's role and subject."""

    token_id: int
    name: str
    role: Role
    subject: str

    @property
    def subject_kind(self) -> str:
        return self.subject.split(":", 1)[0]

    @property
    def subject_id(self) -> str:
        return self.subject.split(":", 1)[1]

    def has(self, required: Role) -> bool:
        return self.role in _IMPLIED[required]


def authenticate(session: Session, token: str) -> Principal | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    if not hmac.compare_digest(row.token_hash, hash_token(token)):
        return None
    return Principal(token_id=row.id, name=row.name, role=Role(row.role), subject=row.subject)


def ensure_admin(session: Session, token_path: Path) -> str | None:
    """On first start create the admin user and write its token to `token_path` (0600).

    Returns the path written, or None when an admin already existed.
    """
    admin_exists = session.scalar(select(User).where(User.role == Role.admin.value)) is not None
    if admin_exists and token_path.exists():
        return None
    admin = session.scalar(select(User).where(User.name == "admin"))
    if admin is None:
        admin = User(name="admin", role=Role.admin.value)
        session.add(admin)
        session.flush()
    token = issue_token(session, name="admin-token", role=Role.admin, subject=f"user:{admin.id}", user_id=admin.id)
    token_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(token_path, 0o600)
    return str(token_path)


_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the cache when its token was seen lately (no thread hand-off), else from the database."""
    token = credentials.credentials if credentials else request.query_params.get("access_token")
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing bearer token (header 'Authorization: Bearer <token>')",
            headers={"WWW-Authenticate": "Bearer"},
        )
    ctx = request.app.state.ctx
    principal = ctx.principals.get(token) or await run_in_threadpool(_authenticate_and_cache, ctx, token)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid, expired or revoked token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def _authenticate_and_cache(ctx: Any, token: str) -> Principal | None:
    with ctx.db.read_session() as session:
        principal = authenticate(session, token)
    if principal is not None:
        ctx.principals.put(token, principal)
    return principal


class PrincipalCache:
    """Recently authenticated tokens, so a busy agent's requests skip the token lookup.

    An entry lives `ttl_s`; revoking through this process clears the subject at once, and another
    replica's revocation takes effect within `ttl_s`.
    """

    def __init__(self, ttl_s: float = 10.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        key = hash_token(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, token: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[hash_token(token)] = (time.monotonic() + self.ttl_s, principal)

    def forget_subject(self, subject: str) -> None:
        with self._lock:
            for key in [k for k, (_, p) in self._entries.items() if p.subject == subject]:
                del self._entries[key]

    def forget_token(self, token_id: int) -> None:
        with self._lock:
            for key in [k for k, (_, p) in self._entries.items() if p.token_id == token_id]:
                del self._entries[key]


def require(*roles: Role) -> Depends:
    """Dependency: the caller must hold one of `roles` (admin implies operator implies viewer)."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not any(principal.has(r) for r in roles):
            wanted = " or ".join(r.value for r in roles)
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail=f"role '{principal.role}' may not do this; needs {wanted}"
            )
        return principal

    return Depends(check)


Viewer = Annotated[Principal, require(Role.viewer)]
Operator = Annotated[Principal, require(Role.operator)]
Admin = Annotated[Principal, require(Role.admin)]
AgentPrincipal = Annotated[Principal, require(Role.agent)]
