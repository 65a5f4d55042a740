"""In-process publish/subscribe on dot-separated topics with `*`/`#` wildcards; every event is persisted."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python
from sqlalchemy import JSON, BigInteger, Integer, String, delete, event, or_, select
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column

from controltower.core.db import Base, Database, UtcDateTime, utcnow

if TYPE_CHECKING:
    from controltower.core.scheduler import Scheduler

log = logging.getLogger("controltower.events")

HANDLER_QUEUE_SIZE = 10_000
STREAM_QUEUE_SIZE = 1_000
_REPLAY_PAGE = 500
_PRUNE_CHUNK = 5_000
_PENDING_KEY = "controltower.events.pending"


class EventRecord(Base):
    """A persisted event. The id only grows (SQLite AUTOINCREMENT), so it is a resume cursor."""

    __tablename__ = "events"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(255), index=True)
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True, default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


@dataclass(frozen=True)
class Event:
    """One published event. Handlers share the payload dict: treat it as read-only."""

    id: int
    topic: str
    ts: dt.datetime
    payload: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "topic": self.topic, "ts": self.ts.isoformat(), "payload": self.payload}

    @classmethod
    def from_record(cls, row: EventRecord) -> Event:
        return cls(id=row.id, topic=row.topic, ts=row.ts, payload=row.payload)


Handler = Callable[[Event], Any] | Callable[[Event], Awaitable[Any]]


def parse_pattern(pattern: str) -> tuple[str, ...]:
    """Split and check a subscription pattern; ValueError says what is wrong with it."""
    if not pattern:
        raise ValueError("topic pattern is empty")
    parts = tuple(pattern.split("."))
    for i, part in enumerate(parts):
        if not part:
            raise ValueError(f"topic pattern {pattern!r} has an empty segment")
        if part == "#" and i != len(parts) - 1:
            raise ValueError(f"topic pattern {pattern!r}: '#' may only be the last segment")
        if part not in ("*", "#") and ("*" in part or "#" in part):
            raise ValueError(f"topic pattern {pattern!r}: '*' and '#' must be whole segments")
    return parts


def check_topic(topic: str) -> None:
    """A published topic: non-empty dot-separated segments, no wildcards."""
    if not topic or len(topic) > 255:
        raise ValueError("topic must be 1 to 255 characters")
    for part in topic.split("."):
        if not part:
            raise ValueError(f"topic {topic!r} has an empty segment")
        if "*" in part or "#" in part:
            raise ValueError(f"topic {topic!r} may not contain the wildcards '*' or '#'")


def _matches(parts: tuple[str, ...], topic: str) -> bool:
    segments = topic.split(".")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(segments) or (part != "*" and part != segments[i]):
            return False
    return len(parts) == len(segments)


def topic_matches(pattern: str, topic: str) -> bool:
    """`*` matches exactly one segment; a final `#` matches zero or more remaining segments."""
    return _matches(parse_pattern(pattern), topic)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _sql_filter(parts: tuple[str, ...]) -> Any | None:
    """A SQL condition that every topic matching `parts` satisfies (a superset; Python filters exactly)."""
    if parts == ("#",):
        return None
    if "*" not in parts and "#" not in parts:
        return EventRecord.topic == ".".join(parts)
    if parts[-1] == "#":
        head = parts[:-1]
        like = ".".join("%" if p == "*" else _like_escape(p) for p in head)
        return or_(
            EventRecord.topic.like(like, escape="\\"),
            EventRecord.topic.like(like + ".%", escape="\\"),
        )
    like = ".".join("%" if p == "*" else _like_escape(p) for p in parts)
    return EventRecord.topic.like(like, escape="\\")


class Subscription:
    """A pattern with a bounded queue; when full, the oldest event is dropped and counted."""

    def __init__(self, bus: EventBus, pattern: str, handler: Handler | None, maxsize: int) -> None:
        self.pattern = pattern
        self.handler = handler
        self.maxsize = maxsize
        self.dropped = 0
        self._parts = parse_pattern(pattern)
        self._bus = bus
        self._buffer: deque[Event] = deque()
        self._wakeup: asyncio.Event | None = None
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def matches(self, topic: str) -> bool:
        return _matches(self._parts, topic)

    def cancel(self) -> None:
        """Stop delivery; safe from any thread, and more than once."""
        self._closed = True
        self._bus._remove(self)
        self._bus._on_loop(self._close_on_loop)

    def _close_on_loop(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _offer(self, event: Event) -> None:
        """Loop thread only."""
        if self._closed:
            return
        if len(self._buffer) >= self.maxsize:
            self._buffer.popleft()
            self.dropped += 1
            self._bus.dropped += 1
        self._buffer.append(event)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _next(self) -> Event | None:
        """The next queued event, or None once cancelled. Loop thread only."""
        while not self._buffer:
            if self._closed:
                return None
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()


class EventBus:
    """Persists events and hands them to matching subscribers on the event loop.

    `publish` may be called from any thread. Each handler subscription has its own queue and task,
    so a slow or failing handler delays nobody else; sync handlers run in a worker thread.
    Only events published in this process reach its subscribers; other replicas see them
    through the table (`recent`, `stream` replay).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dropped = 0
        self.published = 0
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        for sub in self._snapshot():
            if sub.handler is not None:
                self._start_handler(sub)

    async def stop(self) -> None:
        """Cancel handler tasks and end open streams. Handler subscriptions survive a restart."""
        tasks = []
        for sub in self._snapshot():
            if sub.handler is None:
                sub.cancel()
            else:
                if sub._task is not None:
                    tasks.append(sub._task)
                    sub._task.cancel()
                    sub._task = None
                sub._wakeup = None  # bound to this loop; a restart may bring another
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        self._loop_thread = None

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: Mapping[str, Any] | None = None, session: Session | None = None
    ) -> int:
        """Persist an event and return its id.

        With `session`, the event is written in that session's transaction and subscribers hear of it
        only after that transaction commits (never if it rolls back); otherwise it is committed at once.
        """
        check_topic(topic)
        if payload is not None and not isinstance(payload, Mapping):
            raise TypeError(f"event payload must be a mapping, not {type(payload).__name__}")
        data: dict[str, Any] = to_jsonable_python(dict(payload or {}))
        ts = utcnow()
        if session is not None:
            row = EventRecord(topic=topic, ts=ts, payload=data)
            session.add(row)
            session.flush()
            self._defer_until_commit(session, Event(row.id, topic, ts, data))
            return row.id
        with self.db.session() as own:
            row = EventRecord(topic=topic, ts=ts, payload=data)
            own.add(row)
            own.flush()
            event_id = row.id
        self._dispatch(Event(event_id, topic, ts, data))
        return event_id

    async def apublish(self, topic: str, payload: Mapping[str, Any] | None = None) -> int:
        """`publish` for coroutines: the database write runs in a worker thread."""
        return await asyncio.to_thread(self.publish, topic, payload)

    def _defer_until_commit(self, session: Session, ev: Event) -> None:
        pending: list[_Pending] | None = session.info.get(_PENDING_KEY)
        if pending is None:
            pending = session.info[_PENDING_KEY] = []
            event.listen(session, "after_commit", _after_commit)
            event.listen(session, "after_soft_rollback", _after_soft_rollback)
            event.listen(session, "after_transaction_end", _after_transaction_end)
        txn = session.get_nested_transaction() or session.get_transaction()
        pending.append(_Pending(self, ev, txn))

    def _dispatch(self, ev: Event) -> None:
        with self._lock:
            self.published += 1
        loop = self._loop
        if loop is None:
            log.debug("event %s (%s) persisted; bus not started, nobody notified", ev.id, ev.topic)
            return
        try:
            loop.call_soon_threadsafe(self._deliver, ev)
        except RuntimeError:  # the loop closed between the check and the call
            log.debug("event %s (%s) persisted; loop closed, nobody notified", ev.id, ev.topic)

    def _deliver(self, ev: Event) -> None:
        for sub in self._snapshot():
            if sub.matches(ev.topic):
                sub._offer(ev)

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(self, pattern: str, handler: Handler, *, maxsize: int = HANDLER_QUEUE_SIZE) -> Subscription:
        """Call `handler(event)` for every event whose topic matches `pattern`; `.cancel()` to stop.

        A handler that raises is logged; the next event still reaches it.
        """
        sub = Subscription(self, pattern, handler, maxsize)
        with self._lock:
            self._subs.append(sub)
        self._on_loop(lambda: self._start_handler(sub))
        return sub

    def open_stream(
        self, pattern: str, since_id: int | None = None, *, maxsize: int = STREAM_QUEUE_SIZE
    ) -> Stream:
        """Like `stream`, but subscribed the moment it returns. Call on the event loop."""
        sub = Subscription(self, pattern, None, maxsize)
        with self._lock:
            self._subs.append(sub)
        return Stream(self, sub, since_id)

    async def stream(self, pattern: str, since_id: int | None = None) -> AsyncIterator[Event]:
        """Events after `since_id` from the table, then live ones, until the bus stops."""
        async with self.open_stream(pattern, since_id) as events:
            async for ev in events:
                yield ev

    def _start_handler(self, sub: Subscription) -> None:
        """Loop thread only."""
        if sub._closed or sub._task is not None or self._loop is None:
            return
        sub._task = self._loop.create_task(self._run_handler(sub), name=f"events:{sub.pattern}")

    async def _run_handler(self, sub: Subscription) -> None:
        handler = sub.handler
        assert handler is not None
        # An async callable object is called in a thread and its awaitable awaited on the loop.
        is_async = inspect.iscoroutinefunction(handler)
        while True:
            ev = await sub._next()
            if ev is None:
                return
            try:
                result = handler(ev) if is_async else await asyncio.to_thread(handler, ev)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event handler %r for %r failed on event %s (%s)", handler, sub.pattern, ev.id,
                              ev.topic)

    def _snapshot(self) -> list[Subscription]:
        with self._lock:
            return list(self._subs)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread: now if this is it, else soon; not at all if the bus is stopped."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn()
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(fn)

    # -- reading and retention ----------------------------------------------------------------

    def recent(
        self, session: Session, pattern: str | None = None, limit: int = 100, after_id: int | None = None
    ) -> list[Event]:
        """See the module-level `recent`."""
        return recent(session, pattern, limit, after_id)

    def prune(self, older_than: dt.datetime) -> int:
        """Delete events published before `older_than`; return how many.

        Deletes in chunks, each its own short transaction, so publishers never wait long.
        """
        total = 0
        while True:
            with self.db.session() as session:
                chunk = select(EventRecord.id).where(EventRecord.ts < older_than).limit(_PRUNE_CHUNK)
                ids = list(session.scalars(chunk))
                if ids:
                    session.execute(delete(EventRecord).where(EventRecord.id.in_(ids)))
            total += len(ids)
            if len(ids) < _PRUNE_CHUNK:
                return total

    def register_jobs(self, scheduler: Scheduler, retention_days: float) -> None:
        """Prune events older than `retention_days` every hour."""

        def prune_expired() -> None:
            removed = self.prune(utcnow() - dt.timedelta(days=retention_days))
            if removed:
                log.info("pruned %d events older than %g days", removed, retention_days)

        scheduler.every("events.retention", 3600.0, prune_expired)

    def stats(self) -> dict[str, int]:
        subs = self._snapshot()
        return {
            "published": self.published,
            "dropped": self.dropped,
            "subscribers": sum(1 for s in subs if s.handler is not None),
            "streams": sum(1 for s in subs if s.handler is None),
        }


class Stream:
    """An open stream: replay from the table, then live events. An async iterator and context manager."""

    def __init__(self, bus: EventBus, sub: Subscription, since_id: int | None) -> None:
        self._bus = bus
        self._sub = sub
        self._since_id = since_id
        self._iter = self._run()

    @property
    def dropped(self) -> int:
        """Events lost because this stream's queue was full."""
        return self._sub.dropped

    @property
    def pending(self) -> int:
        """Live events queued and not yet read."""
        return len(self._sub._buffer)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Event:
        return await self._iter.__anext__()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """End the stream from anywhere (another task, another thread): iteration stops."""
        self._sub.cancel()

    async def aclose(self) -> None:
        self._sub.cancel()
        await self._iter.aclose()

    async def _run(self) -> AsyncIterator[Event]:
        # Subscribed before replaying, so nothing falls between the two; the ids replayed last
        # are remembered to skip their live duplicates.
        replayed: deque[int] = deque(maxlen=STREAM_QUEUE_SIZE * 2)
        seen: set[int] = set()
        try:
            cursor = self._since_id
            while cursor is not None:
                page = await asyncio.to_thread(self._page, cursor)
                for ev in page:
                    if len(replayed) == replayed.maxlen:
                        seen.discard(replayed[0])
                    replayed.append(ev.id)
                    seen.add(ev.id)
                    yield ev
                cursor = page[-1].id if len(page) == _REPLAY_PAGE else None
            while True:
                ev = await self._sub._next()
                if ev is None:
                    return
                if ev.id in seen:
                    continue
                yield ev
        finally:
            self._sub.cancel()

    def _page(self, after_id: int) -> list[Event]:
        with self._bus.db.session() as session:
            return list(_scan(session, self._sub._parts, after_id=after_id, limit=_REPLAY_PAGE, newest=False))


def recent(
    session: Session, pattern: str | None = None, limit: int = 100, after_id: int | None = None
) -> list[Event]:
    """Matching events, oldest first: the `limit` newest, or with `after_id` the first `limit` after it."""
    parts = parse_pattern(pattern or "#")
    if limit <= 0:
        return []
    events = list(_scan(session, parts, after_id=after_id, limit=limit, newest=after_id is None))
    return events if after_id is not None else events[::-1]


def _scan(
    session: Session, parts: tuple[str, ...], *, after_id: int | None, limit: int, newest: bool
) -> Iterator[Event]:
    """Up to `limit` events matching `parts`, in id order (descending when `newest`)."""
    condition = _sql_filter(parts)
    exact = condition is None or ("*" not in parts and "#" not in parts)
    batch = limit if exact else max(limit, 200)
    found = 0
    cursor = after_id
    while True:
        query = select(EventRecord)
        if condition is not None:
            query = query.where(condition)
        if cursor is not None:
            query = query.where(EventRecord.id < cursor if newest else EventRecord.id > cursor)
        query = query.order_by(EventRecord.id.desc() if newest else EventRecord.id.asc()).limit(batch)
        rows = list(session.scalars(query))
        for row in rows:
            if exact or _matches(parts, row.topic):
                yield Event.from_record(row)
                found += 1
                if found >= limit:
                    return
        if len(rows) < batch:
            return
        cursor = rows[-1].id


@dataclass(frozen=True)
class _Pending:
    """An event written in a session, waiting for that session's commit."""

    bus: EventBus
    event: Event
    transaction: SessionTransaction | None

    def within(self, transaction: SessionTransaction) -> bool:
        txn = self.transaction
        while txn is not None:
            if txn is transaction:
                return True
            txn = txn.parent
        return False


def _after_commit(session: Session) -> None:
    pending: list[_Pending] = session.info.get(_PENDING_KEY) or []
    session.info[_PENDING_KEY] = []
    for item in pending:
        item.bus._dispatch(item.event)


def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    # A rolled-back savepoint (or the whole transaction) takes the events written inside it along.
    pending: list[_Pending] = session.info.get(_PENDING_KEY) or []
    session.info[_PENDING_KEY] = [p for p in pending if not p.within(previous_transaction)]


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # An outermost transaction ended without commit (closed, or rolled back): drop what it wrote.
    if transaction.parent is None and not transaction.nested:
        session.info[_PENDING_KEY] = []
