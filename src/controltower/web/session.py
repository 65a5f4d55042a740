"""Who is logged in to the dashboard: the session's user, re-read from the database on every page and action."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from nicegui import app

from controltower.core.auth import Role, User
from controltower.core.context import Context
from controltower.core.users import verify_login

ROLE_RANK = {Role.viewer: 1, Role.operator: 2, Role.admin: 3}


@dataclass(frozen=True)
class WebUser:
    id: int
    name: str
    role: Role

    def can(self, role: Role) -> bool:
        """Admins may do what operators may, operators what viewers may."""
        return ROLE_RANK.get(self.role, 0) >= ROLE_RANK[role]


class Forbidden(PermissionError):
    """The session's user may not do this (or is no longer logged in)."""


def _fingerprint(password_hash: str) -> str:
    """Bound into the session, so changing a password ends the sessions opened with the old one."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:32]


def _load(ctx: Context, user_id: object, fingerprint: object) -> WebUser | None:
    if not isinstance(user_id, int):
        return None
    with ctx.db.read_session() as session:
        user = session.get(User, user_id)
        if user is None or not user.password_hash or _fingerprint(user.password_hash) != fingerprint:
            return None
        if user.role not in {r.value for r in ROLE_RANK}:
            return None
        return WebUser(id=user.id, name=user.name, role=Role(user.role))


def current_user(ctx: Context) -> WebUser | None:
    """The logged-in user, read again from the database (a deleted user or changed role counts at once)."""
    data = app.storage.user
    return _load(ctx, data.get("uid"), data.get("fp"))


def require(ctx: Context, role: Role) -> WebUser:
    """For every action: the user as of now, or Forbidden."""
    user = current_user(ctx)
    if user is None:
        raise Forbidden("your session ended; log in again")
    if not user.can(role):
        raise Forbidden(f"role '{user.role}' may not do this; needs {role.value}")
    return user


def page_user(ctx: Context, request: Request, role: Role = Role.viewer) -> WebUser | Response:
    """For every page: the user, or the answer to send instead (to the login page, or 403)."""
    user = current_user(ctx)
    if user is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)
    if not user.can(role):
        return PlainTextResponse(f"Forbidden: role '{user.role}' may not open this page; needs {role.value}.",
                                 status_code=403)
    return user


def check_login(ctx: Context, name: str, password: str) -> tuple[WebUser, str] | None:
    """Blocking (argon2): the user and the session fingerprint when the password is right."""
    with ctx.db.read_session() as session:
        user = verify_login(session, name, password)
        if user is None or user.role not in {r.value for r in ROLE_RANK}:
            return None
        assert user.password_hash is not None
        return WebUser(id=user.id, name=user.name, role=Role(user.role)), _fingerprint(user.password_hash)


def start_session(user: WebUser, fingerprint: str) -> None:
    app.storage.user.update(uid=user.id, fp=fingerprint)


def end_session() -> None:
    app.storage.user.clear()


def safe_next(target: str | None) -> str:
    """Only a path on this server (no `//host` or scheme): an open redirect would help phishing."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
