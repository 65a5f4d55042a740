"""RPA's API models: robots, versions, diffs, runs, log batches and what agents report."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

RunStatus = Literal["queued", "running", "passed", "failed", "timed_out", "error", "lost", "cancelled"]
FINISHED = frozenset({"passed", "failed", "timed_out", "error", "lost", "cancelled"})
AgentOutcome = Literal["passed", "failed", "timed_out", "error", "cancelled"]


class ProblemPublic(BaseModel):
    file: str
    line: int | None
    message: str
    severity: str


class RobotPublic(BaseModel):
    id: int
    name: str
    description: str
    production_version: int | None
    latest_version: int | None
    created_at: dt.datetime


class FilePublic(BaseModel):
    path: str
    size: int
    sha256: str


class RobotVersionPublic(BaseModel):
    robot: str
    number: int
    sha256: str
    size: int
    spec: dict[str, Any]
    files: list[FilePublic]
    warnings: list[str]
    note: str
    pushed_by: str
    pushed_at: dt.datetime
    production: bool


class AuditPublic(BaseModel):
    action: str
    version: int | None
    previous: int | None
    actor: str
    at: dt.datetime


class VersionDiff(BaseModel):
    robot: str
    a: int
    b: int
    added: list[str]
    removed: list[str]
    changed: list[str]
    diff: str = Field(description="Unified diff of the text files that changed")


class PromoteBody(BaseModel):
    version: int = Field(ge=1)


class InputFileRef(BaseModel):
    """A file uploaded with POST /rpa/files, named as the task will see it in its `input/` dir."""

    name: str = Field(min_length=1, max_length=255, description="Plain file name, e.g. invoice.pdf")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="As returned by the upload")
    size: int | None = Field(None, description="Filled in by the server")


class RunCreate(BaseModel):
    robot: str = Field(min_length=1, max_length=64)
    task: str | None = Field(None, description="Default: the robot's first task")
    version: int | Literal["production", "latest"] | None = Field(
        None, description="Default: the production version, else the latest"
    )
    labels: list[str] = Field(default_factory=list, description="Run on an agent carrying all of these")
    agent_id: int | None = Field(None, description="Run on this agent only")
    variables: dict[str, str] = Field(default_factory=dict, description="Robot Framework variables")
    input: Any = Field(None, description="JSON input, handed to the task as input.json")
    files: list[InputFileRef] = Field(default_factory=list, max_length=100,
                                      description="Uploaded files, put in the task's input/ dir")
    timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600, description="Default: robot.yaml's timeout")
    retries: int = Field(0, ge=0, le=10, description="Retries after the agent is lost mid-run")
    lease_s: float = Field(60.0, ge=3, le=3600, description="Silence after which the agent counts as lost")
    secrets: list[str] = Field(default_factory=list, max_length=100,
                               description="Vault secrets for this run, besides those robot.yaml declares")


class RunPublic(BaseModel):
    id: int
    robot: str
    version: int
    task: str
    status: RunStatus
    labels: list[str]
    target_agent_id: int | None
    agent_id: int | None
    work_item_id: int | None
    variables: dict[str, str]
    input: Any
    input_files: list[InputFileRef]
    output: Any
    timeout_s: float
    attempts: int
    stats: dict[str, Any] | None
    message: str | None
    exit_code: int | None
    env_hash: str | None
    env_built: bool | None
    env_build_s: float | None
    duration_s: float | None
    files: dict[str, dict[str, Any]]
    log_lines: int
    created_by: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    secrets: list[str] = Field(default_factory=list, description="Names of the vault secrets the run receives")
    schedule_id: int | None = Field(None, description="The schedule that started the run")


class LogLinePublic(BaseModel):
    seq: int
    ts: dt.datetime
    line: str


class LogBatch(BaseModel):
    lines: list[str] = Field(max_length=10_000)


class RunFinish(BaseModel):
    status: AgentOutcome
    message: str | None = Field(None, max_length=100_000)
    exit_code: int | None = None
    stats: dict[str, Any] | None = None
    duration_s: float = Field(ge=0)
    env_hash: str | None = Field(None, max_length=64)
    env_built: bool = False
    env_build_s: float = Field(0.0, ge=0)
    output: Any = Field(None, description="What the task wrote to output.json")
