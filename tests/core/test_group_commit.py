"""Database.write: concurrent writers share transactions on SQLite, yet each job stays all-or-nothing."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controltower.core.db import Database


@pytest.fixture
def table(db: Database) -> Database:
    with db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE gc_items (n INTEGER PRIMARY KEY, writer INTEGER NOT NULL)"))
    return db


def _insert(n: int, writer: int, pause_s: float = 0.0):
    def job(session: Session) -> int:
        session.execute(text("INSERT INTO gc_items (n, writer) VALUES (:n, :w)"), {"n": n, "w": writer})
        time.sleep(pause_s)  # holds the transaction, so the other writers queue behind it
        return n

    return job


def _rows(db: Database) -> dict[int, int]:
    with db.read_session() as session:
        return {n: w for n, w in session.execute(text("SELECT n, writer FROM gc_items"))}


def test_every_job_commits_once_and_returns_its_result(table: Database) -> None:
    def writer(w: int) -> list[int]:
        return [table.write(_insert(w * 100 + i, w, 0.001)) for i in range(20)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(writer, range(8)))
    assert results == [[w * 100 + i for i in range(20)] for w in range(8)]
    assert _rows(table) == {w * 100 + i: w for w in range(8) for i in range(20)}
    if table.dialect == "sqlite":  # jobs that queued meanwhile shared a transaction
        assert table._group is not None and table._group.jobs == 160 and table._group.groups < 160


def test_a_failing_job_fails_alone_and_the_rest_of_its_group_commits(table: Database) -> None:
    table.write(_insert(1, 0))
    start = threading.Barrier(6)
    outcomes: dict[int, object] = {}

    def attempt(n: int) -> None:
        start.wait()
        try:
            outcomes[n] = table.write(_insert(n, 1, 0.005))
        except IntegrityError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=attempt, args=(n,)) for n in (1, 2, 3, 4, 5, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(outcomes.pop(1), IntegrityError)  # n=1 exists: only that caller sees the error
    assert outcomes == {n: n for n in (2, 3, 4, 5, 6)}
    assert _rows(table) == {1: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1}


def test_an_exception_reaches_the_caller_and_nothing_is_written(table: Database) -> None:
    def broken(session: Session) -> None:
        session.execute(text("INSERT INTO gc_items (n, writer) VALUES (7, 7)"))
        raise ValueError("refused after writing")

    with pytest.raises(ValueError, match="refused after writing"):
        table.write(broken)
    assert _rows(table) == {}


def _connection(session: Session) -> Connection:
    return session.connection()


def test_the_writer_keeps_one_connection_and_takes_a_fresh_one_after_a_fault(table: Database) -> None:
    if table.dialect != "sqlite":  # PostgreSQL's writers run side by side, each on a pooled connection
        assert table._group is None
        return
    with table.read_session():  # another pooled connection in use meanwhile does not matter
        first = [table.write(_connection) for _ in range(5)]
    assert all(conn is first[0] for conn in first)

    def fault(session: Session) -> None:
        session.execute(text("INSERT INTO gc_items (n, writer) VALUES (1, 1)"))
        raise RuntimeError("job failed")

    with pytest.raises(RuntimeError):
        table.write(fault)
    after = table.write(_connection)
    table.write(_insert(2, 2))
    assert _rows(table) == {2: 2}  # the failed job's row was rolled back, the next job committed
    assert after is not first[0] and first[0].closed
