"""The database: migrations match the models on both backends; SQLite runs in WAL mode; readers don't queue."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from controltower.config import Settings
from controltower.core.db import WAL_KEEP_BYTES, Base, Database


def test_migrations_create_exactly_the_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ (add a migration): {diff}"


def test_migrate_twice_is_harmless(db: Database) -> None:
    db.migrate()
    with db.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert version


def test_sqlite_is_in_wal_mode(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.dispose()


def test_sqlite_checkpoints_as_configured(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CT_SQLITE_WAL_AUTOCHECKPOINT", "1234")
    db = Database(f"sqlite:///{tmp_path / 'c.db'}", wal_autocheckpoint=Settings().sqlite_wal_autocheckpoint)
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1234
        assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == WAL_KEEP_BYTES
    db.dispose()


def test_session_rolls_back_on_error(db: Database) -> None:
    db.migrate()
    try:
        with db.session() as session:
            session.execute(text("INSERT INTO users (name, role, created_at) VALUES ('x', 'viewer', '2026-01-01')"))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with db.read_session() as session:
        assert session.execute(text("SELECT count(*) FROM users WHERE name = 'x'")).scalar_one() == 0


def test_reader_does_not_wait_for_a_writer(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    db.migrate()
    writer_has_lock = threading.Event()
    release = threading.Event()

    def write() -> None:
        with db.session() as session:
            session.execute(text("INSERT INTO users (name, role, created_at) VALUES ('w', 'viewer', '2026-01-01')"))
            writer_has_lock.set()
            release.wait(10)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert writer_has_lock.wait(10)
        with db.read_session() as session:  # would block for busy_timeout (30 s) with BEGIN IMMEDIATE
            assert session.execute(text("SELECT count(*) FROM users")).scalar_one() == 0
    finally:
        release.set()
        thread.join()
    with db.read_session() as session:
        assert session.execute(text("SELECT count(*) FROM users")).scalar_one() == 1
    db.dispose()
