"""Group commit for SQLite: one writer thread runs the write jobs of many requests in one transaction.

SQLite has one writer at a time. When every request runs its own transaction, each one pays for BEGIN,
COMMIT and the WAL pages they share (the newest-sample table, host rows, the B-tree's upper pages) on its
own, and the thread holding the write lock waits for the GIL between its statements while other
requests parse JSON. Here jobs queue up while a transaction runs, and the next transaction takes all of
them: the lock is held by one thread that does nothing else.

The writer keeps one connection of its own for all its transactions: its cached statements (a compiled
multi-row INSERT costs ten times its execution) and its page cache stay warm, instead of following
whichever pooled connection comes next.

Each job is still all-or-nothing: when a group's transaction fails, every job of it runs again alone in a
transaction of its own, so one bad job fails only its own request.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from controltower.core.db import Database

log = logging.getLogger("controltower.core.group_commit")

T = TypeVar("T")
GROUP_MAX = 32  # jobs per transaction: bounds how long one commit keeps the others waiting

_Job = tuple[Callable[[Session], Any], Future]


class GroupCommitter:
    """`run(job)` from any thread (or `submit(job)` for a future): `job(session)` runs in a transaction
    shared with other queued jobs, and its result (or exception) comes once that transaction has committed."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conn: Connection | None = None  # the writer thread's own; only that thread touches it
        self.groups = 0
        self.jobs = 0

    def run(self, job: Callable[[Session], T]) -> T:
        return self.submit(job).result()

    def submit(self, job: Callable[[Session], T]) -> Future[T]:
        """Queue `job`; the future completes once its transaction has committed (or failed)."""
        future: Future[T] = Future()
        self._ensure_thread()
        self._jobs.put((job, future))
        return future

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="db-group-commit", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            self._drop_connection()

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < GROUP_MAX:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                group.append(job)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Job]) -> None:
        results: list[Any] = []
        try:
            with self._session() as session:
                results = [job(session) for job, _ in group]
        except BaseException as exc:  # each job is retried alone below and gets its own outcome
            if len(group) == 1:
                group[0][1].set_exception(exc)
                return
            log.info("a group of %d writes failed (%s); running each alone", len(group), exc.__class__.__name__)
            for job, future in group:
                self._commit_alone(job, future)
            return
        self.groups += 1
        self.jobs += len(group)
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """A session on the writer's own connection, committed when the block ends cleanly."""
        if self._conn is None:
            self._conn = self.db.engine.connect()
        try:
            with self.db.session(bind=self._conn) as session:
                yield session
        except BaseException:
            self._drop_connection()  # the next transaction starts on a fresh connection
            raise

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broken connection is discarded by the pool either way
                log.debug("closing the writer's connection failed", exc_info=True)

    def _commit_alone(self, job: Callable[[Session], Any], future: Future) -> None:
        try:
            with self._session() as session:
                result = job(session)
        except BaseException as exc:  # handed to the caller, which raises it
            future.set_exception(exc)
        else:
            future.set_result(result)
