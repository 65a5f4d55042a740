"""On-disk outbox: messages for the server kept in SQLite until a 2xx, sent in order, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("controltower.agent.outbox")

# Statuses that say "not now" rather than "never": the same message is retried after a backoff.
# 401/403 are here because a token problem is not the payload's fault, and while it lasts nothing can be sent.
RETRY_STATUSES = frozenset({401, 403, 408, 425, 429})

# A body carrying this key gets the unreported drop count added to it when it is sent.
DROPPED_KEY = "dropped"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    items INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    rejected_at REAL NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class Message:
    id: int
    path: str
    body: Any
    created_at: float


@dataclass(frozen=True)
class Rejected:
    id: int
    path: str
    body: Any
    status: int
    reason: str


class Outbox:
    """A FIFO of (path, JSON body) messages in a SQLite file (WAL).

    Past `max_messages` the oldest are dropped; how many items they held (a message says how many,
    e.g. its number of samples; default 1) is counted and reported to the server in the `dropped` field
    of the next message that has one. Safe to call from several threads.
    """

    def __init__(self, path: Path, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._count = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        self._in_flight: int | None = None
        self.last_problem = ""
        # Per running sender: its loop, "a message was queued", and "the server is back, retry now".
        self._wakeups: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, asyncio.Event]] = []

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- queue -------------------------------------------------------------------------------

    def put(self, path: str, body: Any, items: int = 1) -> int:
        """Queue a message holding `items` things (counted if it is dropped); returns its id.

        Drops the oldest queued messages past the bound.
        """
        text = json.dumps(body, separators=(",", ":"))
        with self._lock, self._tx():
            cur = self._conn.execute(
                "INSERT INTO outbox (path, body, items, created_at) VALUES (?, ?, ?, ?)",
                (path, text, max(0, items), time.time()),
            )
            self._count += 1
            if self._count > self.max_messages:
                self._drop_oldest(self._count - self.max_messages)
            msg_id = int(cur.lastrowid or 0)
        self._wake()
        return msg_id

    def __len__(self) -> int:
        return self._count

    def peek(self) -> Message | None:
        """The oldest queued message, or None."""
        with self._lock:
            row = self._conn.execute("SELECT id, path, body, created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        return Message(row[0], row[1], json.loads(row[2]), row[3]) if row else None

    def messages(self) -> list[Message]:
        """Every queued message, oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT id, path, body, created_at FROM outbox ORDER BY id").fetchall()
        return [Message(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def ack(self, message: Message, reported_drops: int = 0) -> None:
        """The server took `message` (and the `reported_drops` it carried): forget both."""
        with self._lock, self._tx():
            if self._conn.execute("DELETE FROM outbox WHERE id = ?", (message.id,)).rowcount:
                self._count -= 1
            if reported_drops:
                self._add_counter("unreported_drops", -reported_drops)

    def reject(self, message: Message, status: int, reason: str) -> None:
        """Move a message the server refused into the `rejected` table, with the reason."""
        with self._lock, self._tx():
            self._conn.execute(
                "INSERT OR REPLACE INTO rejected (id, path, body, created_at, rejected_at, status, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    message.id,
                    message.path,
                    json.dumps(message.body),
                    message.created_at,
                    time.time(),
                    status,
                    reason[:4000],
                ),
            )
            if self._conn.execute("DELETE FROM outbox WHERE id = ?", (message.id,)).rowcount:
                self._count -= 1

    def rejected(self) -> list[Rejected]:
        with self._lock:
            rows = self._conn.execute("SELECT id, path, body, status, reason FROM rejected ORDER BY id").fetchall()
        return [Rejected(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

    @property
    def unreported_drops(self) -> int:
        """Items in messages dropped by the bound, not yet reported to the server."""
        with self._lock:
            return self._counter("unreported_drops")

    @property
    def dropped_total(self) -> int:
        """Items ever dropped by the bound (kept across restarts)."""
        with self._lock:
            return self._counter("dropped_total")

    # --- sending -----------------------------------------------------------------------------

    async def send_forever(
        self,
        http: httpx.AsyncClient,
        stop: asyncio.Event,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        """POST queued messages in order until `stop` is set.

        A message is deleted only after a 2xx. Connection errors, 5xx and the statuses in
        RETRY_STATUSES retry the same message after an exponential backoff (order is kept);
        any other 4xx sets the message aside in `rejected` and the queue moves on.
        """
        wake, retry_now = asyncio.Event(), asyncio.Event()
        entry = (asyncio.get_running_loop(), wake, retry_now)
        self._wakeups.append(entry)
        backoff = backoff_initial
        failing = False
        try:
            while not stop.is_set():
                message = self.peek()
                if message is None:
                    wake.clear()
                    if self.peek() is None:
                        await _wait_any(stop, wake, 60.0)
                    continue
                outcome = await self.send_one(http, message)
                if outcome == "retry":
                    if not failing:
                        log.warning(
                            "cannot deliver (%s); keeping %d message(s) on disk and retrying",
                            self.last_problem,
                            len(self),
                        )
                    failing = True
                    retry_now.clear()
                    await _wait_any(stop, retry_now, backoff)
                    backoff = min(backoff * 2, backoff_max)
                    continue
                if failing:
                    log.warning("server reachable again; sending %d queued message(s)", len(self))
                failing = False
                backoff = backoff_initial
        finally:
            self._wakeups.remove(entry)

    async def flush(self, http: httpx.AsyncClient, deadline_s: float = 5.0) -> int:
        """Send what can be sent within `deadline_s`, stopping at the first failure; returns how many left."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            message = self.peek()
            if message is None:
                break
            try:
                outcome = await asyncio.wait_for(self.send_one(http, message), max(0.1, end - time.monotonic()))
            except TimeoutError:
                break
            if outcome == "retry":
                break
        return len(self)

    async def send_one(self, http: httpx.AsyncClient, message: Message) -> str:
        """Try one message: 'sent', 'rejected' or 'retry'."""
        body = message.body
        drops = 0
        if isinstance(body, dict) and DROPPED_KEY in body:
            drops = self.unreported_drops
            if drops:
                body = {**body, DROPPED_KEY: int(body.get(DROPPED_KEY) or 0) + drops}
        self._in_flight = message.id
        try:
            response = await http.post(message.path, json=body)
        except httpx.HTTPError as exc:
            self.last_problem = f"{exc.__class__.__name__} on POST {message.path}"
            return "retry"
        finally:
            self._in_flight = None
        status = response.status_code
        if 200 <= status < 300:
            self.ack(message, drops)
            return "sent"
        if status >= 500 or status in RETRY_STATUSES:
            self.last_problem = f"POST {message.path} -> {status}: {_detail(response)[:200]}"
            return "retry"
        reason = _detail(response)
        log.error("server rejected message %d to %s (%d): %s; set aside", message.id, message.path, status, reason)
        self.reject(message, status, reason)
        return "rejected"

    # --- internals ---------------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn)

    def _drop_oldest(self, n: int) -> None:
        # Never drop the message being sent: its POST may already have reached the server.
        in_flight = self._in_flight if self._in_flight is not None else -1
        rows = self._conn.execute(
            "SELECT id, body, items FROM outbox WHERE id != ? ORDER BY id LIMIT ?", (in_flight, n)
        ).fetchall()
        if not rows:
            return
        items = sum(r[2] for r in rows)
        carried = 0
        for _id, text, _items in rows:
            # A dropped message that was itself carrying a drop count passes it on.
            if f'"{DROPPED_KEY}"' in text:
                body = json.loads(text)
                if isinstance(body, dict):
                    carried += int(body.get(DROPPED_KEY) or 0)
        self._conn.execute(
            f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(rows))})",
            [r[0] for r in rows],
        )
        self._count -= len(rows)
        self._add_counter("unreported_drops", items + carried)
        self._add_counter("dropped_total", items)

    def _counter(self, name: str) -> int:
        row = self._conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _add_counter(self, name: str, delta: int) -> None:
        self._conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, MAX(?, 0)) "
            "ON CONFLICT(name) DO UPDATE SET value = MAX(value + ?, 0)",
            (name, delta, delta),
        )

    def _wake(self) -> None:
        for loop, event, _retry in list(self._wakeups):
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)

    def nudge(self) -> None:
        """The server answers again (e.g. a heartbeat got through): cut a sender's backoff short."""
        for loop, _event, retry_now in list(self._wakeups):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(retry_now.set)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error) on an autocommit sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


async def _wait_any(stop: asyncio.Event, other: asyncio.Event | None, timeout: float) -> None:
    """Sleep until `stop` or `other` is set, or `timeout` passes."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waiters.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:2000] or response.reason_phrase
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return str(data)[:2000]
