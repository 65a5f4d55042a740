"""Robot runs on the server: start one as a work item, take what the agent reports, notice lost agents."""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower.core.agents import Agent
from controltower.core.blobs import BlobStore
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.events import Event
from controltower.core.work import WorkItem, WorkStatus
from controltower.rpa.inputs import InputRefused, check_json_size, resolve_files
from controltower.rpa.models import Robot, RobotRun, RunLogLine
from controltower.rpa.package import RobotSpec
from controltower.rpa.robots import get_robot, get_version
from controltower.rpa.schemas import FINISHED, LogLinePublic, RunCreate, RunFinish, RunPublic
from controltower.rpa.vault import require as require_secrets

WORK_KIND = "rpa.run"
MAX_LINE = 10_000
FILE_NAME_RE = re.compile(r"^(output\.xml|log\.html|report\.html|artifacts/[A-Za-z0-9._ @+=,-][A-Za-z0-9._ @+=,/-]*)$")


class RunNotFound(LookupError):
    pass


class RunRefused(ValueError):
    """Bad input for a run; the message starts with the field."""


class NotRunOwner(PermissionError):
    """The calling agent does not hold this run's lease."""


class RunConflict(ValueError):
    """The run is not in a state that allows this (e.g. already finished)."""


def get_run(session: Session, run_id: int) -> RobotRun:
    run = session.get(RobotRun, run_id)
    if run is None:
        raise RunNotFound(f"run {run_id} not found")
    return run


def run_public(session: Session, run: RobotRun) -> RunPublic:
    robot = session.get(Robot, run.robot_id)
    data = {c: getattr(run, c) for c in RunPublic.model_fields if c != "robot"}
    return RunPublic(robot=robot.name if robot else "?", **data)


def start_run(ctx: Context, session: Session, body: RunCreate, actor: str) -> RobotRun:
    """A queued run and its `rpa.run` work item, in the caller's transaction."""
    robot = get_robot(session, body.robot)
    version = get_version(session, robot, body.version)
    spec = RobotSpec.model_validate(version.spec)
    try:
        task, _ = spec.task(body.task)
    except KeyError as exc:
        raise RunRefused(f"task: {exc.args[0]}") from None
    if body.agent_id is not None and session.get(Agent, body.agent_id) is None:
        raise RunRefused(f"agent_id: no agent with id {body.agent_id}")
    for key in body.variables:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise RunRefused(f"variables: {key!r} is not a variable name (letters, digits, _)")
    secrets = require_secrets(session, [*spec.secrets, *body.secrets])
    check_json_size(body.input, "input", ctx.settings.rpa_data_max_bytes)
    input_files = resolve_files(ctx.blobs, body.files)
    run = RobotRun(
        robot_id=robot.id,
        version=version.number,
        task=task,
        status="queued",
        labels=sorted(set(body.labels)),
        target_agent_id=body.agent_id,
        variables=dict(body.variables),
        input=body.input,
        input_files=input_files,
        secrets=secrets,
        timeout_s=body.timeout_s or spec.timeout_for(task),
        created_by=actor,
        files={},
    )
    session.add(run)
    session.flush()
    payload = {
        "run_id": run.id,
        "robot": robot.name,
        "version": version.number,
        "sha256": version.sha256,
        "task": task,
        "timeout_s": run.timeout_s,
    }
    item = ctx.work.enqueue(session, WORK_KIND, payload, labels=run.labels, agent_id=body.agent_id,
                            max_attempts=1 + body.retries, lease_s=body.lease_s, on_expiry="retry")
    run.work_item_id = item.id
    session.flush()
    return run


def list_runs(session: Session, robot: str | None = None, status: str | None = None,
              limit: int = 100) -> list[RobotRun]:
    """Newest first."""
    query = select(RobotRun).order_by(RobotRun.id.desc()).limit(limit)
    if robot is not None:
        query = query.where(RobotRun.robot_id == get_robot(session, robot).id)
    if status is not None:
        query = query.where(RobotRun.status == status)
    return list(session.scalars(query))


def read_log(session: Session, run: RobotRun, after: int = 0, limit: int = 1000) -> list[LogLinePublic]:
    rows = session.scalars(
        select(RunLogLine).where(RunLogLine.run_id == run.id, RunLogLine.seq > after)
        .order_by(RunLogLine.seq).limit(limit)
    )
    return [LogLinePublic(seq=r.seq, ts=r.ts, line=r.line) for r in rows]


# -- what the agent reports --------------------------------------------------------------------------


def agent_run(session: Session, run_id: int, agent_id: int) -> RobotRun:
    """The run, if this agent holds its work item's lease (a run's data reaches only its agent)."""
    run = get_run(session, run_id)
    item = session.get(WorkItem, run.work_item_id) if run.work_item_id else None
    if item is None or item.status != WorkStatus.leased.value or item.lease_owner != agent_id:
        raise NotRunOwner(f"run {run_id} is not leased to agent {agent_id}")
    return run


def mark_started(session: Session, run: RobotRun, agent_id: int) -> RobotRun:
    item = session.get(WorkItem, run.work_item_id)
    run.status = "running"
    run.agent_id = agent_id
    run.started_at = utcnow()
    run.attempts = item.attempts if item else run.attempts + 1
    session.flush()
    return run


def append_log(session: Session, run: RobotRun, lines: list[str]) -> int:
    """Store lines after the run's last one; returns the new count."""
    now = utcnow()
    seq = run.log_lines
    for text in lines:
        seq += 1
        session.add(RunLogLine(run_id=run.id, seq=seq, ts=now, line=text[:MAX_LINE]))
    run.log_lines = seq
    session.flush()
    return seq


def store_file(session: Session, blobs: BlobStore, run: RobotRun, name: str, data: bytes) -> dict[str, Any]:
    """Keep one output file (output.xml, log.html, report.html or artifacts/<path>) in the blob store."""
    if not FILE_NAME_RE.match(name) or ".." in name.split("/") or "//" in name:
        raise RunRefused(f"name: {name!r} must be output.xml, log.html, report.html or artifacts/<relative path>")
    ref = blobs.put_bytes(data)
    entry = {"sha256": ref.sha256, "size": ref.size}
    run.files = {**(run.files or {}), name: entry}
    session.flush()
    return entry


def finish(ctx: Context, session: Session, run: RobotRun, agent_id: int, body: RunFinish) -> RobotRun:
    """Record the outcome, complete the work item and publish `rpa.run.finished`, in one transaction."""
    if run.status in FINISHED:
        raise RunConflict(f"run {run.id} already finished as {run.status}")
    run.status = body.status
    run.message = body.message
    run.output = body.output
    try:
        check_json_size(body.output, "output", ctx.settings.rpa_data_max_bytes)
    except InputRefused as exc:
        run.status, run.message, run.output = "failed", str(exc), None
    run.exit_code = body.exit_code
    run.stats = body.stats
    run.duration_s = body.duration_s
    run.env_hash, run.env_built, run.env_build_s = body.env_hash, body.env_built, body.env_build_s
    run.finished_at = utcnow()
    if run.work_item_id is not None:
        ctx.work.complete(run.work_item_id, agent_id, {"run_id": run.id, "status": run.status}, session=session)
    session.flush()
    _publish_finished(ctx, session, run)
    return run


def _publish_finished(ctx: Context, session: Session, run: RobotRun) -> None:
    robot = session.get(Robot, run.robot_id)
    ctx.events.publish("rpa.run.finished", {
        "run_id": run.id, "robot": robot.name if robot else None, "version": run.version, "task": run.task,
        "status": run.status, "message": run.message, "stats": run.stats, "agent_id": run.agent_id,
        "duration_s": run.duration_s,
    }, session=session)


def cancel(ctx: Context, session: Session, run: RobotRun) -> RobotRun:
    if run.status in FINISHED:
        raise RunConflict(f"run {run.id} already finished as {run.status}")
    if run.work_item_id is not None:
        item = session.get(WorkItem, run.work_item_id)
        if item is not None and item.status in (WorkStatus.queued.value, WorkStatus.leased.value):
            ctx.work.cancel(item.id, session=session)
    run.status = "cancelled"
    run.finished_at = utcnow()
    session.flush()
    _publish_finished(ctx, session, run)
    return run


def on_work_expired(ctx: Context, event: Event) -> None:
    """A run's agent stopped renewing its lease: retry the run while attempts remain, else it is lost."""
    if event.payload.get("kind") != WORK_KIND:
        return
    with ctx.db.session() as session:
        run = session.scalar(select(RobotRun).where(RobotRun.work_item_id == event.payload["id"]))
        if run is None or run.status in FINISHED:
            return
        if event.payload.get("status") == WorkStatus.queued.value:
            run.status = "queued"
            append_log(session, run, [f"agent {run.agent_id} lost (lease expired); the run is queued again"])
            return
        run.status = "lost"
        run.message = f"agent {run.agent_id} lost: its lease expired and no retries remain"
        run.finished_at = utcnow()
        append_log(session, run, [run.message])
        _publish_finished(ctx, session, run)


def wait_finished(ctx: Context, run_id: int, timeout_s: float, poll_s: float = 0.5) -> RunPublic:
    """Poll until the run has finished or `timeout_s` passed; the run as it is then."""
    deadline = time.monotonic() + timeout_s
    while True:
        with ctx.db.read_session() as session:
            run = get_run(session, run_id)
            public = run_public(session, run)
        if public.status in FINISHED or time.monotonic() >= deadline:
            return public
        time.sleep(poll_s)
