"""What the Robots pages show, read in one go per refresh (blocking: pages call these through run.io_bound)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controltower.core.agents import Agent, list_agents
from controltower.core.context import Context
from controltower.rpa import robots, runs, schedules, vault, workitems
from controltower.rpa.models import RobotRun
from controltower.rpa.schemas import RunPublic, VersionDiff
from controltower.rpa.ui_nav import seconds, when
from controltower.rpa.workitems_schemas import QueuePublic

RECENT_RUNS = 20


def _counts(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    return f"{stats.get('passed', 0)} passed, {stats.get('failed', 0)} failed"


def agent_names(session: Session) -> dict[int, str]:
    return {agent_id: name for agent_id, name in session.execute(select(Agent.id, Agent.name))}


def agent_name(names: dict[int, str], agent_id: int | None) -> str:
    return "" if agent_id is None else names.get(agent_id, f"agent {agent_id}")


def run_row(run: RunPublic, names: dict[int, str]) -> dict[str, Any]:
    return {"id": run.id, "robot": run.robot, "version": run.version, "task": run.task, "status": run.status,
            "agent": agent_name(names, run.agent_id), "created": when(run.created_at),
            "duration": seconds(run.duration_s), "counts": _counts(run.stats), "by": run.created_by}


def robot_rows(ctx: Context) -> list[dict[str, Any]]:
    """Every robot with its latest and production version and its last run."""
    with ctx.db.read_session() as session:
        last_ids = select(func.max(RobotRun.id)).group_by(RobotRun.robot_id)
        last = {r.robot_id: r for r in session.scalars(select(RobotRun).where(RobotRun.id.in_(last_ids)))}
        rows = []
        for robot in robots.list_robots(session):
            run = last.get(robot.id)
            rows.append({"name": robot.name, "description": robot.description,
                         "latest": robot.latest_version or "", "production": robot.production_version or "",
                         "last_status": run.status if run else "", "last_run": when(run.created_at) if run else "",
                         "last_run_id": run.id if run else None})
        return rows


def robot_view(ctx: Context, name: str) -> dict[str, Any] | None:
    """A robot's versions (with their tasks), recent runs, history, the agents a run may target and the
    names of the vault's secrets it may receive."""
    with ctx.db.read_session() as session:
        try:
            robot = robots.get_robot(session, name)
        except robots.RobotNotFound:
            return None
        versions = [{"number": v.number, "sha": v.sha256[:12], "size": v.size, "by": v.pushed_by,
                     "at": when(v.pushed_at), "note": v.note, "production": robot.production_version == v.number,
                     "tasks": list((v.spec.get("tasks") or {}).keys())}
                    for v in robots.list_versions(session, robot)]
        history = [{"at": when(h.at), "action": h.action, "version": h.version or "",
                    "previous": h.previous or "", "actor": h.actor}
                   for h in reversed(robots.history(session, robot))]
        names = agent_names(session)
        recent = [run_row(runs.run_public(session, r), names)
                  for r in runs.list_runs(session, name, None, RECENT_RUNS)]
        agents = [{"id": a.id, "name": a.name, "labels": list(a.labels or [])} for a in list_agents(session)]
        secrets = [secret.name for secret in vault.list_secrets(session)]
        return {"name": robot.name, "description": robot.description, "production": robot.production_version,
                "versions": versions, "history": history, "runs": recent, "agents": agents, "secrets": secrets}


def version_diff(ctx: Context, name: str, a: int, b: int) -> VersionDiff:
    with ctx.db.read_session() as session:
        return robots.diff_versions(session, ctx.blobs, robots.get_robot(session, name), a, b)


def run_rows(ctx: Context, robot: str | None, status: str | None, limit: int = 200) -> list[dict[str, Any]]:
    """Newest first; an unknown robot lists nothing."""
    with ctx.db.read_session() as session:
        try:
            rows = runs.list_runs(session, robot, status, limit)
        except robots.RobotNotFound:
            return []
        names = agent_names(session)
        return [run_row(runs.run_public(session, r), names) for r in rows]


def robot_names(ctx: Context) -> list[str]:
    with ctx.db.read_session() as session:
        return [r.name for r in robots.list_robots(session)]


def run_view(ctx: Context, run_id: int, after: int) -> tuple[RunPublic, str, list[str], int] | None:
    """The run, its agent's name, its log lines after sequence number `after`, and the last sequence number read."""
    with ctx.db.read_session() as session:
        try:
            run = runs.get_run(session, run_id)
        except runs.RunNotFound:
            return None
        lines = runs.read_log(session, run, after, limit=2000)
        agent = agent_name(agent_names(session), run.agent_id)
        return (runs.run_public(session, run), agent, [line.line for line in lines],
                lines[-1].seq if lines else after)


def queues(ctx: Context) -> list[QueuePublic]:
    with ctx.db.read_session() as session:
        return workitems.list_queues(session)


def queue_view(ctx: Context, name: str, status: str | None, limit: int = 500) -> dict[str, Any] | None:
    """The queue with its counts, and its items (oldest first, optionally of one status)."""
    with ctx.db.read_session() as session:
        try:
            queue = workitems.get_queue(session, name)
        except workitems.QueueNotFound:
            return None
        items = [{"id": i.id, "status": i.status, "attempts": i.attempts, "payload": _short(i.payload),
                  "files": ", ".join(f["name"] for f in i.files or []), "error": i.last_error or "",
                  "output": _short(i.output), "run_id": i.run_id or "", "enqueued": when(i.enqueued_at),
                  "updated": when(i.updated_at)}
                 for i in workitems.list_items(session, queue, status, limit)]
        return {"queue": workitems.queue_public(session, queue), "items": items}


def _short(value: Any, limit: int = 200) -> str:
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


def schedule_rows(ctx: Context) -> list[dict[str, Any]]:
    """Every schedule with its next fire time (in the viewer's zone here, the cron's own zone is shown too)."""
    with ctx.db.read_session() as session:
        names = agent_names(session)
        rows = []
        for row in schedules.list_schedules(session):
            item = schedules.public(row)
            target = ", ".join(item.labels) or (agent_name(names, item.agent_id) if item.agent_id else "any agent")
            rows.append({"id": item.id, "robot": item.robot, "task": item.task or "(first)", "cron": item.cron,
                         "timezone": item.timezone, "next": "paused" if item.paused else when(item.next_fire_at),
                         "paused": item.paused, "target": target, "last": when(item.last_fire_at),
                         "last_run_id": item.last_run_id or "", "error": item.last_error or "", "fires": item.fires,
                         "description": item.description})
        return rows


def secret_rows(ctx: Context) -> list[dict[str, str]]:
    """Names and descriptions only: a value never leaves the vault for a page."""
    with ctx.db.read_session() as session:
        return [{"name": s.name, "description": s.description, "updated": when(s.updated_at), "by": s.updated_by}
                for s in vault.list_secrets(session)]
