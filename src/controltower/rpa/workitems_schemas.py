"""API models of work-item queues: a queue and its policy, items pushed to it, and what is shown of them."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controltower.rpa.schemas import InputFileRef

ItemStatus = Literal["pending", "in_progress", "done", "failed", "dead"]
ITEM_STATUSES: tuple[str, ...] = ("pending", "in_progress", "done", "failed", "dead")
QUEUE_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class QueueCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=QUEUE_NAME, description="Lowercase letters, digits, '.', '_' or '-'")
    robot: str = Field(min_length=1, max_length=64)
    task: str | None = Field(None, description="Default: the robot's first task")
    version: int | Literal["production", "latest"] | None = Field(
        None, description="Version each run uses; default: the production version, else the latest"
    )
    labels: list[str] = Field(default_factory=list, description="Run on an agent carrying all of these")
    agent_id: int | None = Field(None, description="Run on this agent only")
    max_attempts: int = Field(3, ge=1, le=100, description="Runs an item gets before it is dead")
    retry_backoff_s: float = Field(30.0, ge=0, le=24 * 3600,
                                   description="Wait after a failed attempt; doubles with each attempt")
    concurrency: int | None = Field(None, ge=1, le=10_000, description="Items in progress at once; default: no limit")
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="Default: robot.yaml's timeout")
    lease_s: float = Field(60.0, ge=3, le=3600, description="Silence after which a run's agent counts as lost")


class QueuePublic(BaseModel):
    id: int
    name: str
    robot: str
    task: str | None
    version: str | None
    labels: list[str]
    agent_id: int | None
    max_attempts: int
    retry_backoff_s: float
    concurrency: int | None
    timeout_s: float | None
    lease_s: float
    created_by: str
    created_at: dt.datetime
    counts: dict[str, int] = Field(description="Items per status")


class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(description="JSON handed to the run as its input (input.json)")
    files: list[InputFileRef] = Field(default_factory=list, max_length=100,
                                      description="Uploaded files (POST /rpa/files), put in the run's input/ dir")


class ItemPush(BaseModel):
    """One item (`payload`, `files`) or several (`items`)."""

    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(None, description="JSON handed to the run as its input (input.json)")
    files: list[InputFileRef] = Field(default_factory=list, max_length=100,
                                      description="Uploaded files (POST /rpa/files), put in the run's input/ dir")
    items: list[ItemCreate] | None = Field(None, min_length=1, max_length=10_000, description="Several items")

    @model_validator(mode="after")
    def _one_or_many(self) -> ItemPush:
        if self.items is not None and {"payload", "files"} & self.model_fields_set:
            raise ValueError("give either items or payload (and files), not both")
        if self.items is None and "payload" not in self.model_fields_set:
            raise ValueError("payload is required (or items, a list of items)")
        return self

    def as_items(self) -> tuple[list[ItemCreate], str | None]:
        """The items, and the field that names them in error messages (None for a single item)."""
        if self.items is not None:
            return self.items, "items"
        return [ItemCreate(payload=self.payload, files=self.files)], None


class ItemRetry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: Any = Field(None, description="A corrected payload; leave out to keep the item's")


class QueueItemPublic(BaseModel):
    id: int
    queue: str
    status: ItemStatus
    payload: Any
    files: list[InputFileRef]
    attempts: int
    last_error: str | None
    output: Any
    run_id: int | None
    run_ids: list[int]
    not_before: dt.datetime | None
    enqueued_at: dt.datetime
    dispatched_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime


class ItemPage(BaseModel):
    queue: str
    counts: dict[str, int] = Field(description="Items per status in the whole queue")
    items: list[QueueItemPublic]
