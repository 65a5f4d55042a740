"""Dashboard users: argon2 passwords, roles, the last admin, the first admin's one-time password, API and CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from controltower.client import ApiError, Client
from controltower.core import users
from controltower.core.auth import Role, User, ensure_admin


def test_create_and_verify(db) -> None:
    with db.session() as session:
        user = users.create_user(session, "mina", "operator", "correct horse")
        assert user.password_hash and user.password_hash.startswith("$argon2")
        assert "correct horse" not in user.password_hash
    with db.session() as session:
        assert users.verify_login(session, "mina", "correct horse").name == "mina"
        assert users.verify_login(session, "mina", "wrong horse!") is None
        assert users.verify_login(session, "nobody", "correct horse") is None


@pytest.mark.parametrize(
    ("name", "role", "password", "field"),
    [("", "viewer", "long enough", "name"), ("a b", "viewer", "long enough", "name"),
     ("ok", "agent", "long enough", "role"), ("ok", "viewer", "short", "password")],
)
def test_bad_input_names_the_field(db, name, role, password, field) -> None:
    with db.session() as session, pytest.raises(users.UserInvalid) as exc:
        users.create_user(session, name, role, password)
    assert exc.value.field == field


def test_duplicate_and_last_admin(db) -> None:
    with db.session() as session:
        users.create_user(session, "boss", "admin", "boss-password")
        with pytest.raises(users.UserExists):
            users.create_user(session, "boss", "viewer", "other-password")
        with pytest.raises(users.UserInvalid) as exc:
            users.update_user(session, "boss", role="viewer")
        assert exc.value.field == "role"
        with pytest.raises(users.UserInvalid):
            users.delete_user(session, "boss")
        users.create_user(session, "second", "admin", "second-password")
        users.update_user(session, "boss", role="viewer", password="new-password")
    with db.session() as session:
        assert users.read_user(session, "boss").role == "viewer"
        assert users.verify_login(session, "boss", "new-password") is not None
        users.delete_user(session, "boss")
        with pytest.raises(users.UserNotFound):
            users.read_user(session, "boss")


def test_first_admin_gets_a_one_time_password_file(db, tmp_path) -> None:
    with db.session() as session:
        ensure_admin(session, tmp_path / "admin-token")
        written = users.ensure_admin_password(session, tmp_path / "admin-password")
    assert written == str(tmp_path / "admin-password")
    path = tmp_path / "admin-password"
    assert path.stat().st_mode & 0o777 == 0o600
    password = path.read_text().strip()
    with db.session() as session:
        assert users.verify_login(session, "admin", password) is not None
        assert users.ensure_admin_password(session, path) is None  # never replaced once set
        assert session.query(User).filter_by(name="admin").one().role == Role.admin.value


def test_api_and_cli(server) -> None:
    with server.client() as admin:
        created = admin.post("users", {"name": "ops", "role": "operator", "password": "ops-password"})
        assert created == {**created, "name": "ops", "role": "operator", "has_password": True}
        with pytest.raises(ApiError) as dup:
            admin.post("users", {"name": "ops", "role": "viewer", "password": "ops-password"})
        assert dup.value.status == 409
        with pytest.raises(ApiError) as bad:
            admin.post("users", {"name": "x", "role": "viewer", "password": "short"})
        assert bad.value.status == 422 and "password" in str(bad.value.detail)
        viewer_token = admin.post("tokens", {"name": "wall", "role": "viewer"})["token"]
    with Client(server.url, viewer_token) as viewer, pytest.raises(ApiError) as refused:
        viewer.get("users")
    assert refused.value.status == 403

    env = {"CT_SERVER": server.url, "CT_TOKEN": server.token, "PATH": "/usr/bin:/bin"}
    added = subprocess.run([sys.executable, "-m", "controltower", "users", "add", "mina", "--role", "viewer"],
                           input="mina-password\n", capture_output=True, text=True, env=env, timeout=60)
    assert added.returncode == 0, added.stderr
    assert "added user mina (viewer)" in added.stdout
    with server.client() as admin:
        rows = {u["name"]: u["role"] for u in admin.get("users")}
    assert rows["mina"] == "viewer" and rows["admin"] == "admin"
    short = subprocess.run([sys.executable, "-m", "controltower", "users", "add", "bo", "--role", "viewer"],
                           input="x\n", capture_output=True, text=True, env=env, timeout=60)
    assert short.returncode == 1 and "password" in short.stderr
