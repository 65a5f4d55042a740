"""RPA's tables: robots, their immutable numbered versions, the audit of who did what, runs, run logs, work queues."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from controltower.core.db import Base, UtcDateTime, utcnow


class Robot(Base):
    __tablename__ = "rpa_robots"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    production_version: Mapped[int | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class RobotVersion(Base):
    """One pushed package: never changed after the push."""

    __tablename__ = "rpa_robot_versions"
    __table_args__ = (UniqueConstraint("robot_id", "number", name="uq_rpa_robot_versions_robot_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    robot_id: Mapped[int] = mapped_column(ForeignKey("rpa_robots.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column()
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column()
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    note: Mapped[str] = mapped_column(Text, default="")
    pushed_by: Mapped[str] = mapped_column(String(128))
    pushed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class RobotAudit(Base):
    """Who pushed, promoted or rolled back which version, and when."""

    __tablename__ = "rpa_robot_audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    robot_id: Mapped[int] = mapped_column(ForeignKey("rpa_robots.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    version: Mapped[int | None] = mapped_column()
    previous: Mapped[int | None] = mapped_column()
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class RobotRun(Base):
    __tablename__ = "rpa_runs"
    __table_args__ = (Index("ix_rpa_runs_robot_status", "robot_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    robot_id: Mapped[int] = mapped_column(ForeignKey("rpa_robots.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column()
    task: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    target_agent_id: Mapped[int | None] = mapped_column()
    agent_id: Mapped[int | None] = mapped_column()
    work_item_id: Mapped[int | None] = mapped_column(index=True)
    variables: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    input: Mapped[Any | None] = mapped_column(JSON)
    timeout_s: Mapped[float] = mapped_column()
    attempts: Mapped[int] = mapped_column(default=0)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    message: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column()
    env_hash: Mapped[str | None] = mapped_column(String(64))
    env_built: Mapped[bool | None] = mapped_column()
    env_build_s: Mapped[float | None] = mapped_column()
    duration_s: Mapped[float | None] = mapped_column()
    files: Mapped[dict[str, dict[str, Any]]] = mapped_column(JSON, default=dict)
    input_files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    output: Mapped[Any | None] = mapped_column(JSON)
    log_lines: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    secrets: Mapped[list[str]] = mapped_column(JSON, default=list)
    schedule_id: Mapped[int | None] = mapped_column(index=True)


class RunLogLine(Base):
    __tablename__ = "rpa_run_log"
    __table_args__ = (UniqueConstraint("run_id", "seq", name="uq_rpa_run_log_run_seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("rpa_runs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column()
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    line: Mapped[str] = mapped_column(Text)


class RpaQueue(Base):
    """A queue of business work items that feeds one robot's task, with its retry policy."""

    __tablename__ = "rpa_queues"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    robot_id: Mapped[int] = mapped_column(ForeignKey("rpa_robots.id", ondelete="CASCADE"), index=True)
    task: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(16))
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    agent_id: Mapped[int | None] = mapped_column()
    max_attempts: Mapped[int] = mapped_column(default=3)
    retry_backoff_s: Mapped[float] = mapped_column(default=30.0)
    concurrency: Mapped[int | None] = mapped_column()
    timeout_s: Mapped[float | None] = mapped_column()
    lease_s: Mapped[float] = mapped_column(default=60.0)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class QueueItem(Base):
    """One work item: its payload and files, where it stands, and the run that last took it."""

    __tablename__ = "rpa_queue_items"
    __table_args__ = (Index("ix_rpa_queue_items_queue_status", "queue_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("rpa_queues.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[Any | None] = mapped_column(JSON)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    output: Mapped[Any | None] = mapped_column(JSON)
    run_id: Mapped[int | None] = mapped_column(index=True)
    run_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    not_before: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    enqueued_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class VaultSecret(Base):
    """A named secret for robots, stored Fernet-encrypted; its value is never returned by the API."""

    __tablename__ = "rpa_vault_secrets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    ciphertext: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class RobotSchedule(Base):
    """A cron schedule that starts a run; `next_fire_at` is stored so a restart neither repeats nor skips a fire."""

    __tablename__ = "rpa_schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    robot: Mapped[str] = mapped_column(String(64), index=True)
    task: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(16))
    cron: Mapped[str] = mapped_column(String(128))
    timezone: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    agent_id: Mapped[int | None] = mapped_column()
    variables: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    input: Mapped[Any | None] = mapped_column(JSON)
    secrets: Mapped[list[str]] = mapped_column(JSON, default=list)
    timeout_s: Mapped[float | None] = mapped_column()
    retries: Mapped[int] = mapped_column(default=0)
    description: Mapped[str] = mapped_column(Text, default="")
    paused: Mapped[bool] = mapped_column(default=False)
    next_fire_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, index=True)
    last_fire_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_run_id: Mapped[int | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    fires: Mapped[int] = mapped_column(default=0)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
