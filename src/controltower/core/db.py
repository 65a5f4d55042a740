"""Database: engine, sessions, the declarative Base, and Alembic migrations applied at start."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, DateTime, Engine, MetaData, create_engine, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from controltower.config import WAL_AUTOCHECKPOINT_PAGES
from controltower.core.group_commit import GroupCommitter

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
READ_ONLY_OPTION = "ctower_read_only"
_GATE_HELD = "ctower_write_gate_held"
_GATE_TIMEOUT_S = 30.0

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite drops the zone; this restores it)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


WAL_KEEP_BYTES = 64 * 1024 * 1024


def _sqlite_tuning(engine: Engine, wal_autocheckpoint: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's "begin" hook decide how to begin
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # Read pages through a shared memory map instead of a read() per page into each connection's
        # small private cache.
        cur.execute("PRAGMA mmap_size=1073741824")
        # A checkpoint costs two fsyncs and copies each page once however often it changed since the last:
        # rarer ones make a heavy ingest (pages of many series rewritten every second) far cheaper.
        cur.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        cur.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")  # the WAL shrinks back once checkpointed
        cur.close()

    gate = threading.Lock()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock up front, so two writers queue instead of one failing with
        # "database is locked" when it upgrades a read lock. Read-only sessions (Database.read_session)
        # begin deferred and never wait for writers.
        if conn.get_execution_options().get(READ_ONLY_OPTION, False):
            conn.exec_driver_sql("BEGIN")
            return
        # This process's writers queue on a Python lock, which wakes the next one the moment the
        # previous commits; SQLite's busy handler would poll with sleeps of up to 100 ms instead.
        # Other processes still meet busy_timeout.
        if gate.acquire(timeout=_GATE_TIMEOUT_S):
            conn.info[_GATE_HELD] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn.info)
            raise

    def _release(info: dict[str, Any]) -> None:
        if info.pop(_GATE_HELD, False):
            gate.release()

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Any) -> None:
        # Runs just before SQLAlchemy's own commit, which then finds nothing left to do: committing
        # here lets the gate open only once the write is durable.
        if _GATE_HELD in conn.info:
            try:
                conn.connection.dbapi_connection.commit()
            finally:
                _release(conn.info)

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Any) -> None:
        if _GATE_HELD in conn.info:
            try:
                conn.connection.dbapi_connection.rollback()
            finally:
                _release(conn.info)

    @event.listens_for(engine, "reset")
    def _on_reset(_dbapi_conn: Any, record: Any, _state: Any = None) -> None:
        _release(record.info)


class Database:
    """Owns the engine and hands out sessions; one transaction per unit of work."""

    def __init__(self, url: str, echo: bool = False, wal_autocheckpoint: int = WAL_AUTOCHECKPOINT_PAGES) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):  # a local file: no connection can go stale, so no ping per checkout
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            kwargs["pool_size"] = 8
            kwargs["max_overflow"] = 16
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 20
        self.engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            _sqlite_tuning(self.engine, wal_autocheckpoint)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self._group = GroupCommitter(self) if self.engine.dialect.name == "sqlite" else None
        self.read_sessionmaker = sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self, bind: Connection | None = None) -> Iterator[Session]:
        """A session whose transaction commits when the block ends cleanly and rolls back otherwise; on
        `bind`'s connection if given, else on one from the pool."""
        session = self.sessionmaker() if bind is None else self.sessionmaker(bind=bind)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def write(self, job: Callable[[Session], T]) -> T:
        """`job(session)` in a write transaction, committed before this returns; its result or its exception.

        On SQLite the transaction may be shared with other callers' jobs (group commit, one writer thread:
        see core/group_commit.py); on PostgreSQL, whose writers run side by side, it is the caller's own.
        """
        if self._group is not None:
            return self._group.run(job)
        with self.session() as session:
            return job(session)

    async def write_async(self, job: Callable[[Session], T]) -> T:
        """`write` for the event loop: waits for the commit without holding a thread."""
        if self._group is not None:
            return await asyncio.wrap_future(self._group.submit(job))
        return await asyncio.to_thread(self.write, job)

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only: on SQLite it does not take the write lock, so it never queues
        behind writers (and must not write: a write in it can fail with "database is locked")."""
        session = self.read_sessionmaker()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        cfg.attributes["engine"] = self.engine
        cfg.attributes["metadata"] = Base.metadata
        return cfg

    def migrate(self) -> None:
        """Bring the schema to the newest revision."""
        command.upgrade(self.alembic_config(), "head")

    def dispose(self) -> None:
        if self._group is not None:
            self._group.stop()
        self.engine.dispose()
