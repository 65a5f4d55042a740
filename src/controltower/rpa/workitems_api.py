"""Routes of work-item queues: create, list and delete queues; push, list, retry and delete their items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controltower.core import lifecycle
from controltower.core.auth import Operator, Principal, Viewer
from controltower.core.deps import CtxDep, SessionDep
from controltower.rpa import workitems
from controltower.rpa.models import QueueItem, RpaQueue
from controltower.rpa.workitems_schemas import (
    ItemPage,
    ItemPush,
    ItemRetry,
    ItemStatus,
    QueueCreate,
    QueueItemPublic,
    QueuePublic,
)

router = APIRouter(prefix="/rpa/queues", tags=["rpa"])

UNPROCESSABLE = 422


def _actor(principal: Principal) -> str:
    return f"{principal.name} ({principal.subject})"


def _queue(session: Session, name: str) -> RpaQueue:
    try:
        return workitems.get_queue(session, name)
    except workitems.QueueNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


def _item(session: Session, queue: RpaQueue, item_id: int) -> QueueItem:
    try:
        return workitems.get_item(session, queue, item_id)
    except workitems.ItemNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc


@router.post("", status_code=status.HTTP_201_CREATED)
def create_queue(body: QueueCreate, session: SessionDep, principal: Operator) -> QueuePublic:
    """A queue feeding a robot's task, with its retry policy and optional concurrency limit."""
    try:
        queue = workitems.create_queue(session, body, _actor(principal))
        result = workitems.queue_public(session, queue)
        session.commit()
    except workitems.QueueRefused as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    except (workitems.QueueExists, IntegrityError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"name: a queue named {body.name!r} already exists") \
            from exc
    return result


@router.get("")
def list_queues(session: SessionDep, _: Viewer) -> list[QueuePublic]:
    """Every queue with its items per status."""
    result = workitems.list_queues(session)
    session.commit()
    return result


@router.get("/{name}")
def get_queue(name: str, session: SessionDep, _: Viewer) -> QueuePublic:
    result = workitems.queue_public(session, _queue(session, name))
    session.commit()
    return result


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_queue(name: str, session: SessionDep, _: Operator) -> None:
    """The queue and all its items; runs already started finish on their own."""
    workitems.delete_queue(session, _queue(session, name))
    session.commit()


@router.post("/{name}/items", status_code=status.HTTP_201_CREATED)
def push(name: str, body: ItemPush, ctx: CtxDep, session: SessionDep,
         _: Operator) -> list[QueueItemPublic]:
    """Add one item (`{"payload": …, "files": […]}`) or several (`{"items": [...]}`), all or none.

    Items are dispatched at once as far as the queue's concurrency allows.
    """
    queue = _queue(session, name)
    items, field = body.as_items()
    try:
        rows = workitems.push(ctx, session, queue, items, field)
    except ValueError as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    result = [workitems.item_public(queue, row) for row in rows]
    session.commit()
    return result


@router.get("/{name}/items")
def list_items(name: str, session: SessionDep, _: Viewer,
               status_: Annotated[ItemStatus | None, Query(alias="status")] = None,
               limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
               offset: Annotated[int, Query(ge=0)] = 0) -> ItemPage:
    """Items oldest first, optionally of one status, with the queue's counts per status."""
    queue = _queue(session, name)
    rows = workitems.list_items(session, queue, status_, limit, offset)
    result = ItemPage(queue=queue.name, counts=workitems.queue_public(session, queue).counts,
                      items=[workitems.item_public(queue, row) for row in rows])
    session.commit()
    return result


@router.get("/{name}/items/{item_id}")
def get_item(name: str, item_id: int, session: SessionDep, _: Viewer) -> QueueItemPublic:
    queue = _queue(session, name)
    result = workitems.item_public(queue, _item(session, queue, item_id))
    session.commit()
    return result


@router.post("/{name}/items/{item_id}/retry")
def retry_item(name: str, item_id: int, ctx: CtxDep, session: SessionDep, _: Operator,
               body: ItemRetry | None = None) -> QueueItemPublic:
    """A dead or waiting item back to pending with fresh attempts; `payload` replaces the item's if given."""
    queue = _queue(session, name)
    item = _item(session, queue, item_id)
    try:
        workitems.retry_item(ctx, session, queue, item, body or ItemRetry())
    except lifecycle.IllegalTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    result = workitems.item_public(queue, item)
    session.commit()
    return result


@router.delete("/{name}/items/{item_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_item(name: str, item_id: int, session: SessionDep, _: Operator) -> None:
    queue = _queue(session, name)
    try:
        workitems.delete_item(session, _item(session, queue, item_id))
    except lifecycle.IllegalTransition as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    session.commit()
