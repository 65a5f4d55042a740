"""Shared fixtures: databases (SQLite and a real PostgreSQL) and a real `ctower up` server on a random port."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

import controltower.server  # noqa: F401  (imports every subsystem's tables)
from controltower.core.db import Database
from tests.support import RunningServer, start_server

POSTGRES_URL = os.environ.get(
    "CT_TEST_POSTGRES_URL", "postgresql+psycopg://ctower:ctower@127.0.0.1:5432/ctower_test"
)
REQUIRE_SERVICES = os.environ.get("CT_REQUIRE_SERVICES") == "1"


def _postgres_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {exc.__class__.__name__}: {exc}"


def skip_or_fail(reason: str) -> None:
    """Skip with a clear reason, except under CT_REQUIRE_SERVICES=1 where a missing service is a failure."""
    if REQUIRE_SERVICES:
        pytest.fail(f"CT_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason)


def reset_postgres() -> None:
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ctower.db'}"
    reason = _postgres_available()
    if reason:
        skip_or_fail(reason)
    reset_postgres()
    return POSTGRES_URL


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A migrated database on each backend."""
    database = Database(db_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real `ctower up --no-agent` on a random port, SQLite in a temp data dir."""
    srv = start_server(tmp_path / "data")
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def any_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    """A real server on SQLite and on PostgreSQL."""
    env: dict[str, str] = {}
    if request.param == "postgres":
        reason = _postgres_available()
        if reason:
            skip_or_fail(reason)
        reset_postgres()
        env["CT_DATABASE_URL"] = POSTGRES_URL
    srv = start_server(tmp_path / "data", env=env)
    yield srv
    srv.stop()
