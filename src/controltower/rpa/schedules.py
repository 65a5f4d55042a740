"""Cron schedules that start robot runs, and the leader's periodic job that fires those that are due.

Each schedule stores its next fire time. The job (one leader, every TICK_S) claims a due schedule with a
conditional UPDATE on that time and starts the run in the same transaction, so a fire happens once: a crash
before the commit leaves it due (fired after the restart), a commit moves it on. Fires missed while the server
was down are made up by one run, not one per missed time.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from controltower.core.agents import Agent
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.rpa import runs, vault
from controltower.rpa.models import RobotSchedule
from controltower.rpa.package import RobotSpec
from controltower.rpa.robots import RobotNotFound, get_robot, get_version
from controltower.rpa.schedule_schemas import ScheduleCreate, SchedulePublic, ScheduleUpdate
from controltower.rpa.schemas import RunCreate

log = logging.getLogger("controltower.rpa.schedules")

JOB_NAME = "rpa.schedules"
TICK_S = 1.0
PREVIEW = 5
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ScheduleNotFound(LookupError):
    pass


class ScheduleRefused(ValueError):
    """Bad input for a schedule; the message starts with the field."""


def check_cron(expr: str) -> str:
    """The expression with its whitespace normalised; ScheduleRefused says why it is not a cron expression."""
    expr = " ".join(expr.split())
    fields = expr.split()
    if not expr.startswith("@") and len(fields) != 5:
        raise ScheduleRefused(f"cron: {expr!r} must have 5 fields (minute hour day-of-month month day-of-week), "
                              f"not {len(fields)}")
    try:
        croniter(expr)
    except CroniterError as exc:
        raise ScheduleRefused(f"cron: {expr!r} is not a valid cron expression: {exc}") from None
    return expr


def check_timezone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleRefused(f"timezone: {name!r} is not an IANA time zone like Europe/Berlin or UTC") from None


def next_fires(cron: str, timezone: str, after: dt.datetime, count: int = 1) -> list[dt.datetime]:
    """The first `count` fire times strictly after `after`, read in `timezone`, as UTC."""
    it = croniter(cron, after.astimezone(ZoneInfo(timezone)))
    return [it.get_next(dt.datetime).astimezone(dt.UTC) for _ in range(count)]


def get_schedule(session: Session, schedule_id: int) -> RobotSchedule:
    row = session.get(RobotSchedule, schedule_id)
    if row is None:
        raise ScheduleNotFound(f"schedule {schedule_id} not found")
    return row


def list_schedules(session: Session, robot: str | None = None) -> list[RobotSchedule]:
    query = select(RobotSchedule).order_by(RobotSchedule.id)
    if robot is not None:
        query = query.where(RobotSchedule.robot == robot)
    return list(session.scalars(query))


def public(row: RobotSchedule) -> SchedulePublic:
    preview: list[dt.datetime] = []
    if not row.paused and row.next_fire_at is not None:
        preview = [row.next_fire_at, *next_fires(row.cron, row.timezone, row.next_fire_at, PREVIEW - 1)]
    data = {name: getattr(row, name) for name in SchedulePublic.model_fields if name != "next_fires"}
    return SchedulePublic(next_fires=preview, **data)


def _version_ref(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def _validate(session: Session, row: RobotSchedule) -> None:
    """What a run would refuse, refused now: robot, version, task, agent, variables and secrets."""
    row.cron = check_cron(row.cron)
    check_timezone(row.timezone)
    try:
        robot = get_robot(session, row.robot)
    except RobotNotFound as exc:
        raise ScheduleRefused(f"robot: {exc}") from None
    try:
        version = get_version(session, robot, _version_ref(row.version))  # type: ignore[arg-type]
    except RobotNotFound as exc:
        raise ScheduleRefused(f"version: {exc}") from None
    try:
        row.task, _ = RobotSpec.model_validate(version.spec).task(row.task)
    except KeyError as exc:
        raise ScheduleRefused(f"task: {exc.args[0]}") from None
    if row.agent_id is not None and session.get(Agent, row.agent_id) is None:
        raise ScheduleRefused(f"agent_id: no agent with id {row.agent_id}")
    for key in row.variables:
        if not _VARIABLE_RE.match(key):
            raise ScheduleRefused(f"variables: {key!r} is not a variable name (letters, digits, _)")
    row.secrets = vault.require(session, row.secrets)


def _plan(row: RobotSchedule, now: dt.datetime) -> None:
    row.next_fire_at = None if row.paused else next_fires(row.cron, row.timezone, now)[0]


def create_schedule(session: Session, body: ScheduleCreate, actor: str) -> RobotSchedule:
    row = RobotSchedule(
        robot=body.robot, task=body.task, version=None if body.version is None else str(body.version),
        cron=body.cron, timezone=body.timezone, labels=sorted(set(body.labels)), agent_id=body.agent_id,
        variables=dict(body.variables), input=body.input, secrets=list(body.secrets), timeout_s=body.timeout_s,
        retries=body.retries, description=body.description, paused=body.paused, fires=0, created_by=actor,
    )
    _validate(session, row)
    _plan(row, utcnow())
    session.add(row)
    session.flush()
    return row


def update_schedule(session: Session, row: RobotSchedule, body: ScheduleUpdate) -> RobotSchedule:
    given = body.model_fields_set
    for name in given:
        value = getattr(body, name)
        if name == "version":
            value = None if value is None else str(value)
        elif name == "labels":
            value = sorted(set(value or []))
        elif name in ("variables", "secrets") and value is None:
            value = {} if name == "variables" else []
        elif name in ("cron", "timezone", "retries", "description", "paused") and value is None:
            raise ScheduleRefused(f"{name}: must not be null")
        setattr(row, name, value)
    _validate(session, row)
    if given & {"cron", "timezone", "paused"}:
        _plan(row, utcnow())
    row.updated_at = utcnow()
    session.flush()
    return row


def set_paused(session: Session, row: RobotSchedule, paused: bool) -> RobotSchedule:
    """Pause, or resume from now on: fires missed while paused are not made up."""
    if row.paused != paused:
        row.paused = paused
        _plan(row, utcnow())
        row.updated_at = utcnow()
        session.flush()
    return row


def delete_schedule(session: Session, row: RobotSchedule) -> None:
    session.delete(row)
    session.flush()


# -- firing ------------------------------------------------------------------------------------------


def _claim(session: Session, schedule_id: int, now: dt.datetime) -> tuple[RobotSchedule, dt.datetime] | None:
    """Move a due schedule on to its next fire time, unless someone else did; the schedule and its due time."""
    row = session.get(RobotSchedule, schedule_id)
    if row is None or row.paused or row.next_fire_at is None or row.next_fire_at > now:
        return None
    due_at = row.next_fire_at
    following = next_fires(row.cron, row.timezone, max(now, due_at))[0]
    claimed = session.execute(
        update(RobotSchedule)
        .where(RobotSchedule.id == schedule_id, RobotSchedule.next_fire_at == due_at,
               RobotSchedule.paused.is_(False))
        .values(next_fire_at=following, last_fire_at=due_at, fires=RobotSchedule.fires + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if claimed != 1:
        return None
    session.refresh(row)
    return row, due_at


def _run_body(row: RobotSchedule) -> RunCreate:
    return RunCreate(robot=row.robot, task=row.task, version=_version_ref(row.version), labels=row.labels,
                     agent_id=row.agent_id, variables=row.variables, input=row.input, secrets=row.secrets,
                     timeout_s=row.timeout_s, retries=row.retries)


def fire(ctx: Context, schedule_id: int, now: dt.datetime) -> int | None:
    """Start the run of a due schedule; the run's id, or None if it was not due or could not start."""
    event: dict[str, Any] = {"schedule_id": schedule_id}
    try:
        with ctx.db.session() as session:
            claim = _claim(session, schedule_id, now)
            if claim is None:
                return None
            row, due_at = claim
            run = runs.start_run(ctx, session, _run_body(row), f"schedule {schedule_id}")
            run.schedule_id = row.id
            row.last_run_id, row.last_error = run.id, None
            session.flush()
            ctx.events.publish("rpa.schedule.fired", {
                **event, "run_id": run.id, "robot": row.robot, "task": run.task, "due_at": due_at,
                "next_fire_at": row.next_fire_at,
            }, session=session)
            return run.id
    except (LookupError, ValueError) as exc:
        error = str(exc)
    # The run was refused (robot, task or secret gone): the fire still counts, with the reason kept.
    with ctx.db.session() as session:
        claim = _claim(session, schedule_id, now)
        if claim is None:
            return None
        row, due_at = claim
        row.last_error = error
        ctx.events.publish("rpa.schedule.failed", {**event, "robot": row.robot, "due_at": due_at,
                                                   "error": error}, session=session)
    log.warning("schedule %s could not start its run: %s", schedule_id, error)
    return None


def fire_due(ctx: Context) -> int:
    """Fire every schedule that is due; how many runs started. The scheduler's leader calls this every TICK_S."""
    now = utcnow()
    with ctx.db.read_session() as session:
        due = list(session.scalars(
            select(RobotSchedule.id)
            .where(RobotSchedule.paused.is_(False), RobotSchedule.next_fire_at <= now)
            .order_by(RobotSchedule.next_fire_at)
        ))
    started = 0
    for schedule_id in due:
        try:
            started += fire(ctx, schedule_id, now) is not None
        except Exception:  # one schedule's trouble must not stop the others
            log.exception("schedule %s: firing failed", schedule_id)
    return started


def register(ctx: Context) -> None:
    ctx.scheduler.every(JOB_NAME, TICK_S, lambda: fire_due(ctx))
