"""Work queue for agents: enqueue, atomic fetch-and-lock with a lease, renew, complete, retry, expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    ColumnElement,
    Index,
    String,
    Text,
    event,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from controltower.config import Settings
from controltower.core import lifecycle
from controltower.core.db import Base, Database, UtcDateTime, utcnow

if TYPE_CHECKING:
    from controltower.core.events import EventBus
    from controltower.core.scheduler import Scheduler

log = logging.getLogger("controltower.work")

EXPIRE_LEASES_EVERY_S = 5.0
POLL_EVERY_S = 1.0
MAX_BACKOFF_S = 300.0
_WAKE_FLAG = "controltower.work.wake"


class WorkStatus(StrEnum):
    queued = "queued"
    leased = "leased"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class OnExpiry(StrEnum):
    retry = "retry"
    fail = "fail"


class WorkItem(Base):
    __tablename__ = "work_items"
    __table_args__ = (Index("ix_work_items_status_kind", "status", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    agent_id: Mapped[int | None] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(16), default=WorkStatus.queued.value)
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    on_expiry: Mapped[str] = mapped_column(String(8), default=OnExpiry.retry.value)
    lease_owner: Mapped[int | None] = mapped_column()
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, index=True)
    lease_s: Mapped[float | None] = mapped_column()
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    not_before: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)


class WorkError(Exception):
    """Base of the work queue's refusals."""


class WorkItemNotFound(WorkError):
    """No work item has that id."""


class IllegalTransition(WorkError, lifecycle.IllegalTransition):
    """The item's current state does not allow the requested move."""


class NotLeaseOwner(WorkError):
    """Another agent (or nobody) holds the item's lease."""


# --- lifecycle ------------------------------------------------------------------------------------


class Transition(lifecycle.Transition):
    """A legal move of a work item: from any of FROM_STATES to TO_STATE."""

    OWNER_ONLY: ClassVar[bool] = False

    @classmethod
    def refuse(cls, item: WorkItem) -> IllegalTransition:
        return IllegalTransition(cls.refusal(f"work item {item.id}", item.status))


class Claim(Transition):
    NAME = "claim"
    FROM_STATES = frozenset({WorkStatus.queued})
    TO_STATE = WorkStatus.leased


class Renew(Transition):
    NAME = "renew"
    FROM_STATES = frozenset({WorkStatus.leased})
    TO_STATE = WorkStatus.leased
    OWNER_ONLY = True


class Complete(Transition):
    NAME = "complete"
    FROM_STATES = frozenset({WorkStatus.leased})
    TO_STATE = WorkStatus.completed
    OWNER_ONLY = True


class Fail(Transition):
    NAME = "fail"
    FROM_STATES = frozenset({WorkStatus.leased})
    TO_STATE = WorkStatus.failed
    OWNER_ONLY = True


class Retry(Transition):
    NAME = "retry"
    FROM_STATES = frozenset({WorkStatus.leased})
    TO_STATE = WorkStatus.queued
    OWNER_ONLY = True


class Cancel(Transition):
    NAME = "cancel"
    FROM_STATES = frozenset({WorkStatus.queued, WorkStatus.leased})
    TO_STATE = WorkStatus.cancelled


class ExpireRetry(Transition):
    NAME = "expire (retry)"
    FROM_STATES = frozenset({WorkStatus.leased})
    TO_STATE = WorkStatus.queued


class ExpireFail(Transition):
    NAME = "expire (fail)"
    FROM_STATES = frozenset({WorkStatus.leased})
    TO_STATE = WorkStatus.failed


TRANSITIONS: tuple[type[Transition], ...] = (
    Claim, Renew, Complete, Fail, Retry, Cancel, ExpireRetry, ExpireFail,
)
TERMINAL = frozenset({WorkStatus.completed, WorkStatus.failed, WorkStatus.cancelled})


def retry_backoff_s(attempts: int) -> float:
    """Delay before a failed item may be claimed again: 5 s, 10 s, 20 s, … up to 5 minutes."""
    return min(5.0 * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S)


# --- the queue ------------------------------------------------------------------------------------


class WorkQueue:
    """Items agents fetch-and-lock; every move is one conditional UPDATE, so none is lost or doubled."""

    def __init__(
        self, db: Database, events: EventBus, settings: Settings, *, poll_s: float = POLL_EVERY_S
    ) -> None:
        self.db = db
        self.events = events
        self.settings = settings
        self.poll_s = poll_s
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()
        event.listen(self.db.sessionmaker, "after_commit", self._after_commit)
        event.listen(self.db.sessionmaker, "after_rollback", self._after_rollback)

    # -- sessions and wake-ups

    @contextmanager
    def _tx(self, session: Session | None) -> Iterator[Session]:
        """The caller's session (the caller commits), or a transaction of our own."""
        if session is not None:
            yield session
            return
        with self.db.session() as own:
            yield own

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_WAKE_FLAG, False):
            self._wake()

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(_WAKE_FLAG, None)

    def _wake(self) -> None:
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, ev in waiters:
            with suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(ev.set)

    def _publish(self, session: Session, topic: str, item: WorkItem) -> None:
        payload: dict[str, Any] = {
            "id": item.id,
            "kind": item.kind,
            "status": item.status,
            "attempts": item.attempts,
            "max_attempts": item.max_attempts,
            "agent_id": item.lease_owner,
        }
        if item.status == WorkStatus.completed:
            payload["result"] = item.result
        if item.error is not None:
            payload["error"] = item.error
        self.events.publish(topic, payload, session=session)

    # -- create and read

    def enqueue(
        self,
        session: Session,
        kind: str,
        payload: dict[str, Any],
        *,
        labels: Sequence[str] = (),
        agent_id: int | None = None,
        max_attempts: int = 3,
        lease_s: float | None = None,
        on_expiry: str = "retry",
    ) -> WorkItem:
        """Add an item; agents waiting in `fetch` wake when the caller's transaction commits."""
        if not kind or len(kind) > 128:
            raise ValueError(f"kind: must be 1 to 128 characters, got {kind!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts: must be at least 1, got {max_attempts}")
        if lease_s is not None and lease_s <= 0:
            raise ValueError(f"lease_s: must be positive, got {lease_s}")
        if on_expiry not in {e.value for e in OnExpiry}:
            raise ValueError(f"on_expiry: must be 'retry' or 'fail', got {on_expiry!r}")
        if isinstance(labels, str):
            raise ValueError("labels: must be a list of strings, not a string")
        now = utcnow()
        item = WorkItem(
            kind=kind,
            payload=dict(payload),
            labels=sorted(set(labels)),
            agent_id=agent_id,
            status=WorkStatus.queued.value,
            attempts=0,
            max_attempts=max_attempts,
            on_expiry=on_expiry,
            lease_s=lease_s,
            created_at=now,
            updated_at=now,
        )
        session.add(item)
        session.flush()
        session.info[_WAKE_FLAG] = True
        return item

    def get(self, item_id: int, *, session: Session | None = None) -> WorkItem:
        with self._tx(session) as s:
            item = s.get(WorkItem, item_id)
            if item is None:
                raise WorkItemNotFound(f"work item {item_id} not found")
            return item

    def list(
        self,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
        *,
        session: Session | None = None,
    ) -> list[WorkItem]:
        """Newest first."""
        query = select(WorkItem).order_by(WorkItem.id.desc()).limit(limit)
        if status is not None:
            query = query.where(WorkItem.status == WorkStatus(status).value)
        if kind is not None:
            query = query.where(WorkItem.kind == kind)
        with self._tx(session) as s:
            return list(s.scalars(query))

    # -- claiming

    def _labels_match(self, agent_labels: Sequence[str]) -> ColumnElement[bool]:
        """SQL: every label of the item is among the agent's labels."""
        wanted = sorted(set(agent_labels))
        if self.db.dialect == "postgresql":
            return WorkItem.labels.cast(JSONB).op("<@")(literal(wanted, JSONB))
        each = func.json_each(WorkItem.labels).table_valued("value")
        missing = select(1).select_from(each)
        missing = missing.where(each.c.value.not_in(wanted)) if wanted else missing
        return ~exists(missing)

    def claim(
        self,
        agent_id: int,
        agent_labels: Sequence[str],
        kinds: Sequence[str],
        limit: int = 1,
        *,
        now: dt.datetime | None = None,
    ) -> list[WorkItem]:
        """Lease up to `limit` claimable items of `kinds` to the agent; no item is ever handed out twice.

        Claimable: queued, of a wanted kind, past its `not_before`, targeted at no agent or this one,
        and every one of its labels carried by the agent. An empty `kinds` claims nothing.
        """
        if not kinds or limit < 1:
            return []
        now = now or utcnow()
        query = (
            select(WorkItem.id, WorkItem.lease_s)
            .where(
                WorkItem.status == WorkStatus.queued.value,
                WorkItem.kind.in_(sorted(set(kinds))),
                or_(WorkItem.agent_id.is_(None), WorkItem.agent_id == agent_id),
                or_(WorkItem.not_before.is_(None), WorkItem.not_before <= now),
                self._labels_match(agent_labels),
            )
            .order_by(WorkItem.id)
            .limit(limit)
        )
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=WorkItem)
        claimed: list[int] = []
        with self.db.session() as s:
            for item_id, lease_s in s.execute(query).all():
                lease = lease_s or self.settings.work_lease_s
                result = s.execute(
                    update(WorkItem)
                    .where(WorkItem.id == item_id, WorkItem.status.in_(Claim.FROM_STATES))
                    .values(
                        status=Claim.TO_STATE.value,
                        lease_owner=agent_id,
                        lease_expires_at=now + dt.timedelta(seconds=lease),
                        attempts=WorkItem.attempts + 1,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:
                    claimed.append(item_id)
            if not claimed:
                return []
            return list(s.scalars(select(WorkItem).where(WorkItem.id.in_(claimed)).order_by(WorkItem.id)))

    async def fetch(
        self,
        agent_id: int,
        agent_labels: Sequence[str],
        kinds: Sequence[str],
        limit: int = 1,
        wait_s: float = 0.0,
    ) -> list[WorkItem]:
        """Long-poll `claim`: answer as soon as something is claimed, or with [] once `wait_s` has passed.

        An enqueue in this process wakes it at once; other processes' are seen by polling every `poll_s`.
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + max(wait_s, 0.0)
        while True:
            waiter = (loop, asyncio.Event())
            with self._waiters_lock:
                self._waiters.add(waiter)  # before claiming, so a wake-up in between is not lost
            try:
                items = await asyncio.to_thread(self.claim, agent_id, agent_labels, kinds, limit)
                remaining = deadline - time.monotonic()
                if items or remaining <= 0:
                    return items
                with suppress(TimeoutError):
                    await asyncio.wait_for(waiter[1].wait(), timeout=min(remaining, self.poll_s))
            finally:
                with self._waiters_lock:
                    self._waiters.discard(waiter)

    # -- moves of a leased item

    def _move(
        self,
        s: Session,
        rule: type[Transition],
        item_id: int,
        agent_id: int | None,
        values: dict[str, Any],
    ) -> WorkItem:
        """Apply `rule` with one conditional UPDATE; on a miss, say exactly why."""
        conditions = [WorkItem.id == item_id, WorkItem.status.in_(rule.FROM_STATES)]
        if rule.OWNER_ONLY:
            conditions.append(WorkItem.lease_owner == agent_id)
        result = s.execute(
            update(WorkItem)
            .where(*conditions)
            .values(status=rule.TO_STATE.value, updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)
        )
        item = s.get(WorkItem, item_id, populate_existing=True)
        if item is None:
            raise WorkItemNotFound(f"work item {item_id} not found")
        if result.rowcount != 1:
            if item.status not in rule.FROM_STATES:
                raise rule.refuse(item)
            raise NotLeaseOwner(
                f"work item {item_id} is leased to agent {item.lease_owner}, not agent {agent_id}; "
                f"only the lease owner may {rule.NAME} it"
            )
        return item

    def renew(
        self, item_id: int, agent_id: int, lease_s: float | None = None, *, session: Session | None = None
    ) -> WorkItem:
        """Extend the lease from now by `lease_s` (default: the item's own lease, else the setting)."""
        if lease_s is not None and lease_s <= 0:
            raise ValueError(f"lease_s: must be positive, got {lease_s}")
        with self._tx(session) as s:
            current = s.get(WorkItem, item_id)
            lease = lease_s or (current.lease_s if current else None) or self.settings.work_lease_s
            return self._move(
                s, Renew, item_id, agent_id, {"lease_expires_at": utcnow() + dt.timedelta(seconds=lease)}
            )

    def complete(
        self, item_id: int, agent_id: int, result: Any = None, *, session: Session | None = None
    ) -> WorkItem:
        with self._tx(session) as s:
            item = self._move(
                s, Complete, item_id, agent_id,
                {"result": result, "lease_expires_at": None, "finished_at": utcnow(), "error": None},
            )
            self._publish(s, "work.item.completed", item)
            return item

    def fail(
        self,
        item_id: int,
        agent_id: int,
        error: str,
        retry: bool = True,
        *,
        session: Session | None = None,
    ) -> WorkItem:
        """A failure: back to the queue after a backoff while `retry` and attempts remain, else failed."""
        with self._tx(session) as s:
            current = s.get(WorkItem, item_id)
            if current is not None and retry and current.attempts < current.max_attempts:
                not_before = utcnow() + dt.timedelta(seconds=retry_backoff_s(current.attempts))
                item = self._move(
                    s, Retry, item_id, agent_id,
                    {"error": error, "lease_expires_at": None, "not_before": not_before},
                )
                s.info[_WAKE_FLAG] = True
                return item
            item = self._move(
                s, Fail, item_id, agent_id,
                {"error": error, "lease_expires_at": None, "finished_at": utcnow()},
            )
            self._publish(s, "work.item.failed", item)
            return item

    def cancel(self, item_id: int, *, session: Session | None = None) -> WorkItem:
        """Cancel a queued or leased item; its agent learns of it when it next renews or reports."""
        with self._tx(session) as s:
            return self._move(
                s, Cancel, item_id, None, {"lease_expires_at": None, "finished_at": utcnow()}
            )

    def expire_leases(self, now: dt.datetime | None = None) -> int:
        """Leased items past their lease go back to the queue (if on_expiry is retry and attempts remain)
        or fail with "lease expired". Returns how many expired."""
        now = now or utcnow()
        count = 0
        with self.db.session() as s:
            query = select(WorkItem).where(
                WorkItem.status == WorkStatus.leased.value, WorkItem.lease_expires_at < now
            )
            if self.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            for item in list(s.scalars(query)):
                retry = item.on_expiry == OnExpiry.retry.value and item.attempts < item.max_attempts
                rule = ExpireRetry if retry else ExpireFail
                values: dict[str, Any] = {"error": "lease expired", "lease_expires_at": None}
                if not retry:
                    values["finished_at"] = now
                moved = s.execute(
                    update(WorkItem)
                    .where(
                        WorkItem.id == item.id,
                        WorkItem.status.in_(rule.FROM_STATES),
                        WorkItem.lease_expires_at < now,
                    )
                    .values(status=rule.TO_STATE.value, updated_at=now, **values)
                    .execution_options(synchronize_session=False)
                )
                if moved.rowcount != 1:
                    continue
                count += 1
                s.refresh(item)
                self._publish(s, "work.item.expired", item)
                if retry:
                    s.info[_WAKE_FLAG] = True
                else:
                    self._publish(s, "work.item.failed", item)
        if count:
            log.info("%d work item lease(s) expired", count)
        return count

    def register_jobs(self, scheduler: Scheduler) -> None:
        """Reap expired leases every few seconds (on the scheduler's leader only)."""
        scheduler.every("work.expire_leases", EXPIRE_LEASES_EVERY_S, self.expire_leases)
