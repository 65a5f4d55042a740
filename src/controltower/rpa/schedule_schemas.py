"""API models of cron schedules that start robot runs."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

VersionRef = int | Literal["production", "latest"]


class ScheduleCreate(BaseModel):
    robot: str = Field(min_length=1, max_length=64)
    task: str | None = Field(None, max_length=255, description="Default: the robot's first task")
    version: VersionRef | None = Field(None, description="Default: the production version at fire time, else latest")
    cron: str = Field(max_length=128, description="Five fields (minute hour day-of-month month day-of-week) or @daily")
    timezone: str = Field("UTC", max_length=64, description="IANA zone the cron expression is read in")
    labels: list[str] = Field(default_factory=list, description="Run on an agent carrying all of these")
    agent_id: int | None = Field(None, description="Run on this agent only")
    variables: dict[str, str] = Field(default_factory=dict, description="Robot Framework variables")
    input: Any = Field(None, description="JSON input of every run")
    secrets: list[str] = Field(default_factory=list, max_length=100, description="Vault secrets for every run")
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="Default: robot.yaml's timeout")
    retries: int = Field(0, ge=0, le=10, description="Retries after the agent is lost mid-run")
    description: str = Field("", max_length=1000)
    paused: bool = False


class ScheduleUpdate(BaseModel):
    """Only the fields given change; a new cron or timezone recomputes the next fire time."""

    task: str | None = Field(None, max_length=255)
    version: VersionRef | None = None
    cron: str | None = Field(None, max_length=128)
    timezone: str | None = Field(None, max_length=64)
    labels: list[str] | None = None
    agent_id: int | None = None
    variables: dict[str, str] | None = None
    input: Any = None
    secrets: list[str] | None = Field(None, max_length=100)
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    retries: int | None = Field(None, ge=0, le=10)
    description: str | None = Field(None, max_length=1000)
    paused: bool | None = None


class SchedulePublic(BaseModel):
    id: int
    robot: str
    task: str | None
    version: str | None
    cron: str
    timezone: str
    labels: list[str]
    agent_id: int | None
    variables: dict[str, str]
    input: Any
    secrets: list[str]
    timeout_s: float | None
    retries: int
    description: str
    paused: bool
    next_fire_at: dt.datetime | None
    next_fires: list[dt.datetime] = Field(description="The next few fire times (UTC); none while paused")
    last_fire_at: dt.datetime | None
    last_run_id: int | None
    last_error: str | None
    fires: int
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
