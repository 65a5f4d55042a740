"""What operators do from the Robots pages, each in one transaction through the service functions the API uses."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from controltower.core.context import Context
from controltower.rpa import robots, runs, schedules, vault, workitems
from controltower.rpa.schemas import RunCreate
from controltower.rpa.workitems_schemas import ItemRetry
from controltower.web.session import WebUser


class FormError(ValueError):
    """A start-run field is wrong; `field` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def actor(user: WebUser) -> str:
    """Recorded as the API records a token's holder: name and subject."""
    return f"{user.name} (user:{user.id})"


def promote(ctx: Context, user: WebUser, name: str, number: int) -> None:
    with ctx.db.session() as session:
        robots.promote(session, robots.get_robot(session, name), number, actor(user))


def rollback(ctx: Context, user: WebUser, name: str) -> int:
    with ctx.db.session() as session:
        return robots.rollback(session, robots.get_robot(session, name), actor(user)).number


def cancel(ctx: Context, run_id: int) -> None:
    with ctx.db.session() as session:
        runs.cancel(ctx, session, runs.get_run(session, run_id))


def set_paused(ctx: Context, schedule_id: int, paused: bool) -> None:
    with ctx.db.session() as session:
        schedules.set_paused(session, schedules.get_schedule(session, schedule_id), paused)


def retry_item(ctx: Context, queue_name: str, item_id: int) -> None:
    """A dead or waiting item back to pending with fresh attempts, as POST .../items/{id}/retry does."""
    with ctx.db.session() as session:
        queue = workitems.get_queue(session, queue_name)
        workitems.retry_item(ctx, session, queue, workitems.get_item(session, queue, item_id), ItemRetry())


def _variables(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise FormError("variables", f"line {number}: expected NAME=value, got {line!r}")
        result[key.strip()] = value
    return result


def run_body(form: dict[str, Any]) -> RunCreate:
    """The start-run form's values as the API's RunCreate; FormError names the field that is wrong."""
    text = (form.get("input") or "").strip()
    try:
        data = json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise FormError("input", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    labels = [part.strip() for part in (form.get("labels") or "").split(",") if part.strip()]
    try:
        return RunCreate(robot=form["robot"], task=form.get("task"), version=form.get("version"), labels=labels,
                         agent_id=form.get("agent_id"), variables=_variables(form.get("variables") or ""),
                         input=data, secrets=list(form.get("secrets") or []))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise FormError(str(err["loc"][0]) if err["loc"] else "robot", err["msg"]) from None


def start_run(ctx: Context, user: WebUser, form: dict[str, Any]) -> int:
    """Queue a run exactly as POST /api/v1/rpa/runs does; returns its id."""
    body = run_body(form)
    try:
        with ctx.db.session() as session:
            return runs.start_run(ctx, session, body, actor(user)).id
    except (runs.RunRefused, vault.UnknownSecrets) as exc:
        field, _, reason = str(exc).partition(": ")
        raise FormError(field, reason) from None
    except robots.RobotNotFound as exc:
        raise FormError("version", str(exc)) from None
