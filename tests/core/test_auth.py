"""Tokens are stored hashed, roles are checked on every route, and the first start writes the admin token."""

from __future__ import annotations

import datetime as dt
import stat

import httpx
import pytest
from sqlalchemy import select

from controltower.core.auth import ApiToken, Role, authenticate, ensure_admin, issue_token, revoke_subject_tokens
from controltower.core.db import Database


def test_token_is_stored_only_as_a_hash(db: Database) -> None:
    with db.session() as session:
        token = issue_token(session, name="t", role=Role.viewer, subject="user:1")
    with db.session() as session:
        rows = session.scalars(select(ApiToken)).all()
        assert len(rows) == 1
        assert token not in rows[0].token_hash
        principal = authenticate(session, token)
    assert principal is not None and principal.role is Role.viewer


def test_expired_and_revoked_tokens_are_refused(db: Database) -> None:
    with db.session() as session:
        expired = issue_token(session, name="old", role=Role.admin, subject="user:1", ttl=dt.timedelta(seconds=-1))
        revoked = issue_token(session, name="gone", role=Role.admin, subject="agent:7")
        revoke_subject_tokens(session, "agent:7")
    with db.session() as session:
        assert authenticate(session, expired) is None
        assert authenticate(session, revoked) is None
        assert authenticate(session, "ct_not-a-token") is None


def test_role_hierarchy(db: Database) -> None:
    with db.session() as session:
        tokens = {role: issue_token(session, name=role.value, role=role, subject=f"user:{role.value}") for role in Role}
    with db.session() as session:
        principals = {role: authenticate(session, tok) for role, tok in tokens.items()}
    admin, operator, viewer = principals[Role.admin], principals[Role.operator], principals[Role.viewer]
    agent = principals[Role.agent]
    assert admin and operator and viewer and agent
    assert admin.has(Role.operator) and admin.has(Role.viewer)
    assert operator.has(Role.viewer) and not operator.has(Role.admin)
    assert not viewer.has(Role.operator)
    assert not agent.has(Role.viewer) and not admin.has(Role.agent)


def test_first_start_writes_admin_token_0600(db: Database, tmp_path) -> None:
    path = tmp_path / "admin-token"
    with db.session() as session:
        assert ensure_admin(session, path) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with db.session() as session:
        principal = authenticate(session, path.read_text().strip())
        assert principal is not None and principal.role is Role.admin
        assert ensure_admin(session, path) is None  # second start: nothing new


def test_routes_check_roles(server) -> None:
    with server.client() as admin:
        assert admin.get("info")["you"]["role"] == "admin"
    no_token = httpx.get(server.url + "/api/v1/info")
    assert no_token.status_code == 401
    bad_token = httpx.get(server.url + "/api/v1/info", headers={"Authorization": "Bearer ct_nope"})
    assert bad_token.status_code == 401
    assert "invalid" in bad_token.json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/agents", "/api/v1/info"])
def test_agent_token_cannot_read_operator_routes(server, path: str) -> None:
    with server.client() as admin:
        enrolment = admin.post("agents/enrollments", {"ttl_s": 60})["token"]
    agent = httpx.post(server.url + "/api/v1/agents/enroll", json={"enrolment_token": enrolment, "name": "a1"}).json()
    response = httpx.get(server.url + path, headers={"Authorization": f"Bearer {agent['token']}"})
    assert response.status_code == 403
    assert "needs viewer" in response.json()["detail"]
