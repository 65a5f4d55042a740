"""Dashboard users: admins add them with a role and a password, change them, and remove them."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, HTTPException, Response, status
from pydantic import BaseModel, Field

from controltower.core import users
from controltower.core.auth import Admin, User
from controltower.core.deps import CtxDep, SessionDep

router = APIRouter(prefix="/users", tags=["users"])


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=users.NAME_MAX)
    role: str = Field(description="admin, operator or viewer")
    password: str = Field(description=f"At least {users.MIN_PASSWORD_LENGTH} characters")


class UserUpdate(BaseModel):
    role: str | None = Field(None, description="admin, operator or viewer; a change revokes the user's API tokens")
    password: str | None = None


class UserPublic(BaseModel):
    name: str
    role: str
    has_password: bool
    created_at: dt.datetime


def _public(user: User) -> UserPublic:
    return UserPublic(name=user.name, role=user.role, has_password=bool(user.password_hash),
                      created_at=user.created_at)


def _invalid(exc: users.UserInvalid) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))


@router.post("", status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, session: SessionDep, _: Admin) -> UserPublic:
    """Add a person who logs in to the dashboard."""
    try:
        user = users.create_user(session, body.name, body.role, body.password)
    except users.UserInvalid as exc:
        raise _invalid(exc) from None
    except users.UserExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    session.commit()
    return _public(user)


@router.get("")
def list_users(session: SessionDep, _: Admin) -> list[UserPublic]:
    return [_public(u) for u in users.read_users(session)]


@router.patch("/{name}")
def update_user(name: str, body: UserUpdate, ctx: CtxDep, session: SessionDep, _: Admin) -> UserPublic:
    """Change a role or set a new password."""
    try:
        user = users.update_user(session, name, role=body.role, password=body.password)
    except users.UserNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except users.UserInvalid as exc:
        raise _invalid(exc) from None
    session.commit()
    ctx.principals.forget_subject(f"user:{user.id}")
    return _public(user)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(name: str, ctx: CtxDep, session: SessionDep, _: Admin) -> Response:
    try:
        user_id = users.read_user(session, name).id
        users.delete_user(session, name)
    except users.UserNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except users.UserInvalid as exc:
        raise _invalid(exc) from None
    session.commit()
    ctx.principals.forget_subject(f"user:{user_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
