"""Events over REST: list and publish, and a Server-Sent Events stream that resumes from Last-Event-ID."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, status
from pydantic import BaseModel, Field, field_validator
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from controltower.core.auth import Operator, Viewer
from controltower.core.deps import CtxDep, SessionDep
from controltower.core.events import Event, Stream, check_topic

router = APIRouter(tags=["events"])

PING_S = 15.0
SHUTDOWN_GRACE_S = 2.0

TopicPattern = Annotated[
    str,
    Query(max_length=255, description="Topic pattern: '*' is one segment, a final '#' any rest"),
]


class EventPublic(BaseModel):
    id: int
    topic: str
    ts: dt.datetime
    payload: dict[str, Any]

    @classmethod
    def of(cls, event: Event) -> EventPublic:
        return cls(id=event.id, topic=event.topic, ts=event.ts, payload=event.payload)


class EventCreate(BaseModel):
    topic: str = Field(description="Dot-separated topic without wildcards, e.g. 'deploy.finished'")
    payload: dict[str, Any] = Field(default_factory=dict)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        check_topic(value)
        return value


class EventCreated(BaseModel):
    id: int


@router.get("/events", response_model=list[EventPublic])
def list_events(
    ctx: CtxDep,
    session: SessionDep,
    _principal: Viewer,
    topic: TopicPattern = "#",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after_id: Annotated[int | None, Query(ge=0, description="Only events after this id")] = None,
) -> list[EventPublic]:
    """Matching events, oldest first: the newest `limit`, or the first `limit` after `after_id`."""
    try:
        events = ctx.events.recent(session, topic, limit=limit, after_id=after_id)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"topic: {exc}") from None
    session.commit()
    return [EventPublic.of(e) for e in events]


@router.post("/events", status_code=status.HTTP_201_CREATED, response_model=EventCreated)
def publish_event(body: EventCreate, ctx: CtxDep, session: SessionDep, _principal: Operator) -> EventCreated:
    """Publish an event from outside (a deploy finished, a door opened); subscribers react as to any other."""
    event_id = ctx.events.publish(body.topic, body.payload, session=session)
    session.commit()
    return EventCreated(id=event_id)


@router.get("/events/stream", response_class=EventSourceResponse)
async def stream_events(
    ctx: CtxDep,
    _principal: Viewer,
    topics: TopicPattern = "#",
    after_id: Annotated[int | None, Query(ge=0, description="Replay events after this id first")] = None,
    last_event_id: Annotated[str | None, Header(description="Resume: replay events after this id")] = None,
) -> EventSourceResponse:
    """Server-Sent Events: `id` is the event id, `event` its topic, `data` the event as JSON.

    Subscribed before the response starts, so an event published after the headers arrive is delivered.
    """
    since_id = after_id
    if last_event_id:
        try:
            since_id = int(last_event_id)
        except ValueError:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"Last-Event-ID: must be an event id (an integer), got {last_event_id!r}",
            ) from None
    try:
        stream = ctx.events.open_stream(topics, since_id)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"topics: {exc}") from None
    shutdown = anyio.Event()
    return EventSourceResponse(
        _messages(stream, shutdown),
        ping=PING_S,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
        background=BackgroundTask(stream.aclose),  # also when the body never starts (HEAD)
    )


async def _messages(stream: Stream, shutdown: anyio.Event) -> AsyncIterator[ServerSentEvent]:
    async def close_on_shutdown() -> None:
        await shutdown.wait()
        stream.close()  # the body then ends cleanly instead of being cut off

    watcher = asyncio.create_task(close_on_shutdown())
    try:
        async with stream:
            async for event in stream:
                yield ServerSentEvent(data=json.dumps(event.to_json()), id=str(event.id), event=event.topic)
    finally:
        watcher.cancel()
