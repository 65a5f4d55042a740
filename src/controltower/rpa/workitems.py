"""Work-item queues: business items fed to a robot one run each, with retries, backoff and a dead-letter state.

An item goes pending → in_progress (a run was started with its payload and files as input) → done when
the run passes, else failed (back to pending after the queue's backoff while attempts remain) or dead
(attempts exhausted, with the last error) until someone retries or deletes it. Items are dispatched when
pushed, when a run of the queue finishes, and by a periodic pass that also catches up after a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from controltower.core import lifecycle
from controltower.core.agents import Agent
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.events import Event
from controltower.rpa import runs
from controltower.rpa.inputs import check_json_size, resolve_files
from controltower.rpa.models import QueueItem, Robot, RobotRun, RpaQueue
from controltower.rpa.package import RobotSpec
from controltower.rpa.robots import RobotNotFound, get_robot, get_version
from controltower.rpa.schemas import FINISHED, InputFileRef, RunCreate
from controltower.rpa.workitems_schemas import (
    ITEM_STATUSES,
    ItemCreate,
    ItemRetry,
    QueueCreate,
    QueueItemPublic,
    QueuePublic,
)

log = logging.getLogger("controltower.rpa.workitems")

DISPATCH_EVERY_S = 2.0
DISPATCH_BATCH = 200
MAX_BACKOFF_S = 24 * 3600.0
MAX_ERROR = 4000


class ItemState(StrEnum):
    pending = "pending"
    in_progress = "in_progress"
    done = "done"
    failed = "failed"
    dead = "dead"


class QueueNotFound(LookupError):
    pass


class ItemNotFound(LookupError):
    pass


class QueueRefused(ValueError):
    """Bad input for a queue; the message starts with the field."""


class QueueExists(ValueError):
    pass


# -- lifecycle ---------------------------------------------------------------------------------------


class Transition(lifecycle.Transition):
    @classmethod
    def apply(cls, item: QueueItem) -> None:
        cls.check(f"item {item.id}", item.status)
        item.status = cls.TO_STATE.value
        item.updated_at = utcnow()


class Dispatch(Transition):
    NAME = "dispatch"
    FROM_STATES = frozenset({ItemState.pending})
    TO_STATE = ItemState.in_progress


class Succeed(Transition):
    NAME = "complete"
    FROM_STATES = frozenset({ItemState.in_progress})
    TO_STATE = ItemState.done


class FailAttempt(Transition):
    NAME = "fail"
    FROM_STATES = frozenset({ItemState.in_progress})
    TO_STATE = ItemState.failed


class Bury(Transition):
    NAME = "dead-letter"
    FROM_STATES = frozenset({ItemState.in_progress})
    TO_STATE = ItemState.dead


class ManualRetry(Transition):
    NAME = "retry"
    FROM_STATES = frozenset({ItemState.dead, ItemState.failed})
    TO_STATE = ItemState.pending


def backoff_s(base_s: float, attempts: int) -> float:
    """Wait before the next attempt: base, twice that, four times, ... capped at a day."""
    return min(base_s * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S)


# -- queues ------------------------------------------------------------------------------------------


def _version_ref(version: str | None) -> int | Literal["production", "latest"] | None:
    if version is None or version in ("production", "latest"):
        return version  # type: ignore[return-value]
    return int(version)


def create_queue(session: Session, body: QueueCreate, actor: str) -> RpaQueue:
    """A queue for a robot's task; the robot, version, task and agent must exist now."""
    if session.scalar(select(RpaQueue.id).where(RpaQueue.name == body.name)) is not None:
        raise QueueExists(f"name: a queue named {body.name!r} already exists")
    try:
        robot = get_robot(session, body.robot)
    except RobotNotFound as exc:
        raise QueueRefused(f"robot: {exc}") from None
    try:
        version = get_version(session, robot, body.version)
    except RobotNotFound as exc:
        raise QueueRefused(f"version: {exc}") from None
    try:
        RobotSpec.model_validate(version.spec).task(body.task)
    except KeyError as exc:
        raise QueueRefused(f"task: {exc.args[0]}") from None
    if body.agent_id is not None and session.get(Agent, body.agent_id) is None:
        raise QueueRefused(f"agent_id: no agent with id {body.agent_id}")
    queue = RpaQueue(
        name=body.name, robot_id=robot.id, task=body.task,
        version=None if body.version is None else str(body.version), labels=sorted(set(body.labels)),
        agent_id=body.agent_id, max_attempts=body.max_attempts, retry_backoff_s=body.retry_backoff_s,
        concurrency=body.concurrency, timeout_s=body.timeout_s, lease_s=body.lease_s, created_by=actor,
    )
    session.add(queue)
    session.flush()
    return queue


def get_queue(session: Session, name: str) -> RpaQueue:
    queue = session.scalar(select(RpaQueue).where(RpaQueue.name == name))
    if queue is None:
        raise QueueNotFound(f"no queue named {name!r}")
    return queue


def counts(session: Session, queue_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
    """Items per status, for each queue."""
    query = select(QueueItem.queue_id, QueueItem.status, func.count()).group_by(QueueItem.queue_id, QueueItem.status)
    if queue_ids is not None:
        query = query.where(QueueItem.queue_id.in_(queue_ids))
    result: dict[int, dict[str, int]] = {}
    for queue_id, status, count in session.execute(query):
        result.setdefault(queue_id, dict.fromkeys(ITEM_STATUSES, 0))[status] = count
    return result


def queue_public(session: Session, queue: RpaQueue, item_counts: dict[str, int] | None = None) -> QueuePublic:
    robot = session.get(Robot, queue.robot_id)
    if item_counts is None:
        item_counts = counts(session, [queue.id]).get(queue.id)
    data = {c: getattr(queue, c) for c in QueuePublic.model_fields if c not in ("robot", "counts")}
    return QueuePublic(robot=robot.name if robot else "?", counts=item_counts or dict.fromkeys(ITEM_STATUSES, 0),
                       **data)


def list_queues(session: Session) -> list[QueuePublic]:
    all_counts = counts(session)
    queues = session.scalars(select(RpaQueue).order_by(RpaQueue.name))
    return [queue_public(session, q, all_counts.get(q.id)) for q in queues]


def delete_queue(session: Session, queue: RpaQueue) -> None:
    """The queue and its items; runs already started finish on their own."""
    session.delete(queue)
    session.flush()


# -- items -------------------------------------------------------------------------------------------


def item_public(queue: RpaQueue, item: QueueItem) -> QueueItemPublic:
    data = {c: getattr(item, c) for c in QueueItemPublic.model_fields if c != "queue"}
    return QueueItemPublic(queue=queue.name, **data)


def get_item(session: Session, queue: RpaQueue, item_id: int) -> QueueItem:
    item = session.get(QueueItem, item_id)
    if item is None or item.queue_id != queue.id:
        raise ItemNotFound(f"queue {queue.name!r} has no item {item_id}")
    return item


def list_items(session: Session, queue: RpaQueue, status: str | None = None, limit: int = 100,
               offset: int = 0) -> list[QueueItem]:
    """Oldest first."""
    query = select(QueueItem).where(QueueItem.queue_id == queue.id).order_by(QueueItem.id).limit(limit).offset(offset)
    if status is not None:
        query = query.where(QueueItem.status == status)
    return list(session.scalars(query))


def push(ctx: Context, session: Session, queue: RpaQueue, items: list[ItemCreate],
         field: str | None = None) -> list[QueueItem]:
    """Add items (all or none) and dispatch what the queue's concurrency allows at once.

    `field` names the list in error messages (`items`); None for a single item.
    """
    limit = ctx.settings.rpa_data_max_bytes
    rows = []
    now = utcnow()
    for i, body in enumerate(items):
        where = f"{field}[{i}]." if field else ""
        check_json_size(body.payload, f"{where}payload", limit)
        files = resolve_files(ctx.blobs, body.files, f"{where}files")
        rows.append(QueueItem(queue_id=queue.id, status=ItemState.pending.value, payload=body.payload, files=files,
                              attempts=0, run_ids=[], enqueued_at=now, updated_at=now))
    session.add_all(rows)
    session.flush()
    dispatch(ctx, session, queue)
    return rows


def retry_item(ctx: Context, session: Session, queue: RpaQueue, item: QueueItem, body: ItemRetry) -> QueueItem:
    """A dead (or waiting) item back to pending with fresh attempts, with a corrected payload if given."""
    ManualRetry.check(f"item {item.id}", item.status)
    if "payload" in body.model_fields_set:
        check_json_size(body.payload, "payload", ctx.settings.rpa_data_max_bytes)
        item.payload = body.payload
    ManualRetry.apply(item)
    item.attempts = 0
    item.not_before = None
    item.finished_at = None
    session.flush()
    dispatch(ctx, session, queue)
    return item


def delete_item(session: Session, item: QueueItem) -> None:
    if item.status == ItemState.in_progress.value:
        raise lifecycle.IllegalTransition(
            f"item {item.id} is in_progress (run {item.run_id}); cancel the run or wait for it to finish"
        )
    session.delete(item)
    session.flush()


# -- dispatching and settling ------------------------------------------------------------------------


def _lock(session: Session, queue: RpaQueue) -> None:
    """Serialise dispatching and settling per queue (SQLite's writers are serialised already).

    NO KEY UPDATE does not wait for the key-share locks that inserting items takes on the queue's row.
    """
    if session.get_bind().dialect.name == "postgresql":
        # key_share without read: FOR NO KEY UPDATE
        session.execute(select(RpaQueue.id).where(RpaQueue.id == queue.id).with_for_update(key_share=True))


def dispatch(ctx: Context, session: Session, queue: RpaQueue) -> int:
    """Start runs for pending items (oldest first) up to the concurrency limit; how many were started."""
    _lock(session, queue)
    now = utcnow()
    session.execute(
        update(QueueItem)
        .where(QueueItem.queue_id == queue.id, QueueItem.status == ItemState.failed.value,
               QueueItem.not_before <= now)
        .values(status=ItemState.pending.value, not_before=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    room = DISPATCH_BATCH
    if queue.concurrency is not None:
        busy = session.scalar(select(func.count()).where(
            QueueItem.queue_id == queue.id, QueueItem.status == ItemState.in_progress.value)) or 0
        room = min(room, queue.concurrency - busy)
    if room <= 0:
        return 0
    items = list(session.scalars(
        select(QueueItem).where(QueueItem.queue_id == queue.id, QueueItem.status == ItemState.pending.value)
        .order_by(QueueItem.id).limit(room).execution_options(populate_existing=True)
    ))
    robot = session.get(Robot, queue.robot_id)
    for item in items:
        _start(ctx, session, queue, robot, item, now)
    session.flush()
    return len(items)


def _start(ctx: Context, session: Session, queue: RpaQueue, robot: Robot | None, item: QueueItem,
           now: dt.datetime) -> None:
    Dispatch.apply(item)
    item.attempts += 1
    item.dispatched_at = now
    try:
        body = RunCreate(
            robot=robot.name if robot else "?", task=queue.task, version=_version_ref(queue.version),
            labels=list(queue.labels), agent_id=queue.agent_id, input=item.payload,
            files=[InputFileRef(name=f["name"], sha256=f["sha256"]) for f in item.files or []],
            timeout_s=queue.timeout_s, retries=0, lease_s=queue.lease_s,
        )
        # Validation comes before start_run writes anything, so a refusal leaves no half-made run.
        run = runs.start_run(ctx, session, body, f"queue {queue.name}")
    except (LookupError, ValueError) as exc:
        _fail(ctx, session, queue, item, None, f"could not start a run: {exc}")
        return
    item.run_id = run.id
    item.run_ids = [*(item.run_ids or []), run.id]


def settle(ctx: Context, session: Session, queue: RpaQueue, item: QueueItem, run: RobotRun) -> None:
    """The finished run decides the item: done with the run's output, else a failed attempt."""
    if run.status == "passed":
        Succeed.apply(item)
        item.output = run.output
        item.last_error = None
        item.finished_at = utcnow()
        session.flush()
        ctx.events.publish("rpa.item.done", {
            "queue": queue.name, "item_id": item.id, "run_id": run.id, "attempts": item.attempts,
            "output": item.output,
        }, session=session)
        return
    error = f"run {run.id} {run.status}" + (f": {run.message}" if run.message else "")
    _fail(ctx, session, queue, item, run.id, error)


def _fail(ctx: Context, session: Session, queue: RpaQueue, item: QueueItem, run_id: int | None, error: str) -> None:
    item.last_error = error[:MAX_ERROR]
    payload: dict[str, Any] = {"queue": queue.name, "item_id": item.id, "run_id": run_id,
                               "attempts": item.attempts, "error": item.last_error}
    if item.attempts < queue.max_attempts:
        FailAttempt.apply(item)
        item.not_before = utcnow() + dt.timedelta(seconds=backoff_s(queue.retry_backoff_s, item.attempts))
        session.flush()
        ctx.events.publish("rpa.item.failed", payload, session=session)
        return
    Bury.apply(item)
    item.finished_at = utcnow()
    session.flush()
    ctx.events.publish("rpa.item.dead", payload, session=session)


def settle_finished(ctx: Context, session: Session, queue: RpaQueue) -> int:
    """Settle in-progress items whose run has finished (a missed event, a restart); how many."""
    _lock(session, queue)
    rows = session.execute(
        select(QueueItem, RobotRun).join(RobotRun, RobotRun.id == QueueItem.run_id)
        .where(QueueItem.queue_id == queue.id, QueueItem.status == ItemState.in_progress.value,
               RobotRun.status.in_(sorted(FINISHED)))
        .execution_options(populate_existing=True)
    ).all()
    for item, run in rows:
        settle(ctx, session, queue, item, run)
    return len(rows)


def on_run_finished(ctx: Context, event: Event) -> None:
    """A run finished: settle the item it was working on and start the next ones."""
    run_id = event.payload.get("run_id")
    if not isinstance(run_id, int):
        return
    with ctx.db.session() as session:
        item = session.scalar(select(QueueItem).where(QueueItem.run_id == run_id))
        if item is None:
            return
        queue = session.get(RpaQueue, item.queue_id)
        if queue is None:
            return
        _lock(session, queue)
        session.refresh(item)
        run = session.get(RobotRun, run_id)
        if item.status == ItemState.in_progress.value and item.run_id == run_id and run is not None \
                and run.status in FINISHED:
            settle(ctx, session, queue, item, run)
        dispatch(ctx, session, queue)


def _queues_with_work(session: Session, now: dt.datetime) -> list[int]:
    """Queues with an item to dispatch or settle: read first, so idle queues take no write lock."""
    due = or_(
        QueueItem.status == ItemState.pending.value,
        and_(QueueItem.status == ItemState.failed.value, QueueItem.not_before <= now),
        and_(QueueItem.status == ItemState.in_progress.value, RobotRun.status.in_(sorted(FINISHED))),
    )
    query = (select(QueueItem.queue_id).distinct().outerjoin(RobotRun, RobotRun.id == QueueItem.run_id)
             .where(due).order_by(QueueItem.queue_id))
    return list(session.scalars(query))


def dispatch_all(ctx: Context) -> None:
    """The periodic pass: for every queue, settle what was missed and dispatch what is due."""
    with ctx.db.read_session() as session:
        queue_ids = _queues_with_work(session, utcnow())
    for queue_id in queue_ids:
        try:
            with ctx.db.session() as session:
                queue = session.get(RpaQueue, queue_id)
                if queue is not None:
                    settle_finished(ctx, session, queue)
                    dispatch(ctx, session, queue)
        except Exception:  # one broken queue must not stop the others
            log.exception("work-item queue %s: dispatch failed", queue_id)


def register(ctx: Context) -> None:
    """Settle items as their runs finish, and run the periodic dispatch pass on the scheduler's leader."""
    ctx.events.subscribe("rpa.run.finished", lambda event: on_run_finished(ctx, event))
    ctx.scheduler.every("rpa.queues.dispatch", DISPATCH_EVERY_S, lambda: dispatch_all(ctx), run_at_start=True)
