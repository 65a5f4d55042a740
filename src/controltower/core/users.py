"""People who log in to the dashboard: argon2 password hashes, roles, and the first admin's one-time password."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower.core.auth import ApiToken, Role, User, revoke_subject_tokens

PERSON_ROLES = (Role.admin, Role.operator, Role.viewer)
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
NAME_MAX = 128

_hasher = PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """Verified against when the name is unknown, so a wrong name costs as long as a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


class UserInvalid(ValueError):
    """Bad input; `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UserExists(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"name: a user named {name!r} already exists")


class UserNotFound(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no user named {name!r}")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserInvalid("password", f"must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserInvalid("password", f"must be at most {MAX_PASSWORD_LENGTH} characters")
    return password


def check_role(role: str) -> Role:
    if role not in {r.value for r in PERSON_ROLES}:
        raise UserInvalid("role", f"must be admin, operator or viewer, not {role!r}")
    return Role(role)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NAME_MAX or any(c.isspace() for c in name):
        raise UserInvalid("name", f"must be 1 to {NAME_MAX} characters without spaces")
    return name


def read_user(session: Session, name: str) -> User:
    user = session.scalar(select(User).where(User.name == name))
    if user is None:
        raise UserNotFound(name)
    return user


def read_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def create_user(session: Session, name: str, role: str, password: str) -> User:
    name, checked_role = check_name(name), check_role(role)
    check_password(password)
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        raise UserExists(name)
    user = User(name=name, role=checked_role.value, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def update_user(session: Session, name: str, role: str | None = None, password: str | None = None) -> User:
    """Change a user's role and/or password. A role change revokes the user's API tokens (they carry the role)."""
    user = read_user(session, name)
    if role is not None:
        new_role = check_role(role)
        if user.role == Role.admin.value and new_role != Role.admin and _last_admin(session, user):
            raise UserInvalid("role", "this is the last admin; make another admin first")
        if new_role.value != user.role:
            user.role = new_role.value
            revoke_subject_tokens(session, f"user:{user.id}")
    if password is not None:
        user.password_hash = hash_password(check_password(password))
    session.flush()
    return user


def delete_user(session: Session, name: str) -> None:
    user = read_user(session, name)
    if user.role == Role.admin.value and _last_admin(session, user):
        raise UserInvalid("name", "this is the last admin; make another admin first")
    for token in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)):
        session.delete(token)
    session.delete(user)
    session.flush()


def _last_admin(session: Session, user: User) -> bool:
    others = session.scalar(select(User.id).where(User.role == Role.admin.value, User.id != user.id).limit(1))
    return others is None


def verify_login(session: Session, name: str, password: str) -> User | None:
    """The user when the name and password match, else None (constant work either way)."""
    user = session.scalar(select(User).where(User.name == name))
    stored = user.password_hash if user is not None and user.password_hash else _dummy_hash()
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if user is None or not user.password_hash:
        return None
    return user


def ensure_admin_password(session: Session, path: Path) -> str | None:
    """Give the `admin` user a generated password when it has none; write it to `path` (0600) and return the path.

    The password is shown nowhere else; whoever reads the file logs in and may delete it.
    """
    admin = session.scalar(select(User).where(User.name == "admin"))
    if admin is None or admin.password_hash:
        return None
    password = secrets.token_urlsafe(15)
    admin.password_hash = hash_password(password)
    session.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    os.chmod(path, 0o600)
    return str(path)
