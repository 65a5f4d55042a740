"""Command lifecycle: queued -> sent -> succeeded | failed | timed_out, or queued -> expired; as declarative rules."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower.core import lifecycle
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.iot.devices import read_device
from controltower.iot.models import Command, Device
from controltower.iot.payloads import Rejected, Response
from controltower.iot.schemas import CommandCreate

DEFAULT_TTL = dt.timedelta(days=1)


class CommandState(StrEnum):
    queued = "queued"
    sent = "sent"
    succeeded = "succeeded"
    failed = "failed"
    timed_out = "timed_out"
    expired = "expired"


TERMINAL = frozenset({CommandState.succeeded, CommandState.failed, CommandState.timed_out, CommandState.expired})


class CommandNotFound(LookupError):
    def __init__(self, command_id: int) -> None:
        super().__init__(f"no command with id {command_id}")


class Transition(lifecycle.Transition):
    """A legal move of a command: from any of FROM_STATES to TO_STATE."""

    @classmethod
    def apply(cls, command: Command, ctx: Context, session: Session, **fields: Any) -> None:
        cls.check(f"command {command.id}", command.state)
        now = utcnow()
        command.state = cls.TO_STATE.value
        for key, value in fields.items():
            setattr(command, key, value)
        if cls.TO_STATE is CommandState.sent:
            command.sent_at = now
        if cls.TO_STATE in TERMINAL:
            command.finished_at = now
            ctx.events.publish(
                "iot.command.finished",
                {"command": command.id, "device": command.device_id, "name": command.name, "state": command.state},
                session=session,
            )


class Send(Transition):
    NAME = "send"
    FROM_STATES = frozenset({CommandState.queued})
    TO_STATE = CommandState.sent


class Succeed(Transition):
    NAME = "succeed"
    FROM_STATES = frozenset({CommandState.sent})
    TO_STATE = CommandState.succeeded


class Fail(Transition):
    NAME = "fail"
    FROM_STATES = frozenset({CommandState.sent})
    TO_STATE = CommandState.failed


class TimeOut(Transition):
    NAME = "time out"
    FROM_STATES = frozenset({CommandState.sent})
    TO_STATE = CommandState.timed_out


class Expire(Transition):
    NAME = "expire"
    FROM_STATES = frozenset({CommandState.queued})
    TO_STATE = CommandState.expired


TRANSITIONS: tuple[type[Transition], ...] = (Send, Succeed, Fail, TimeOut, Expire)


def create_command(
    ctx: Context, session: Session, device_id: str, body: CommandCreate, broadcast_id: str | None = None
) -> Command:
    """Queue a command; the hub delivers it when the device is (or comes) online, until it expires."""
    read_device(session, device_id)
    now = utcnow()
    expires_at = body.expires_at or now + DEFAULT_TTL
    if expires_at <= now:
        raise ValueError("expires_at: must be in the future")
    command = Command(
        device_id=device_id,
        name=body.name,
        params=body.params,
        one_way=body.one_way,
        state=CommandState.queued.value,
        timeout_s=body.timeout_s,
        expires_at=expires_at,
        broadcast_id=broadcast_id,
        created_at=now,
    )
    session.add(command)
    session.flush()
    return command


def create_broadcast(ctx: Context, session: Session, label: str, body: CommandCreate) -> tuple[str, list[Command]]:
    """One command per device carrying `label`, sharing a broadcast id."""
    broadcast_id = secrets.token_hex(8)
    devices = [d for d in session.scalars(select(Device).order_by(Device.name)) if label in (d.labels or [])]
    return broadcast_id, [create_command(ctx, session, d.id, body, broadcast_id) for d in devices]


def read_command(session: Session, command_id: int) -> Command:
    command = session.get(Command, command_id)
    if command is None:
        raise CommandNotFound(command_id)
    return command


def read_commands(
    session: Session, *, device_id: str | None = None, broadcast_id: str | None = None, limit: int = 100
) -> list[Command]:
    stmt = select(Command).order_by(Command.id.desc()).limit(limit)
    if device_id is not None:
        stmt = stmt.where(Command.device_id == device_id)
    if broadcast_id is not None:
        stmt = stmt.where(Command.broadcast_id == broadcast_id)
    return list(session.scalars(stmt))


def message(command: Command) -> bytes:
    """What the device receives on `ct/d/{id}/commands`."""
    return json.dumps(
        {
            "id": command.id,
            "name": command.name,
            "params": command.params,
            "timeout_s": command.timeout_s,
            "expires_at": command.expires_at.isoformat(),
            "one_way": command.one_way,
        }
    ).encode()


def take_pending(ctx: Context, session: Session, device_id: str, limit: int = 100) -> list[Command]:
    """Queued, unexpired commands of the device, oldest first, moved to `sent` (one-way ones to succeeded).

    The caller publishes them after its commit.
    """
    now = utcnow()
    rows = list(
        session.scalars(
            select(Command)
            .where(Command.device_id == device_id, Command.state == CommandState.queued.value)
            .order_by(Command.id)
            .limit(limit)
        )
    )
    taken = []
    for command in rows:
        if command.expires_at <= now:
            Expire.apply(command, ctx, session, error="expired before delivery")
            continue
        Send.apply(command, ctx, session)
        if command.one_way:
            Succeed.apply(command, ctx, session)
        taken.append(command)
    return taken


def respond(ctx: Context, session: Session, device_id: str, command_id: int, response: Response) -> Command:
    """Record a device's answer. Rejected('late_response') when the command is no longer waiting for one."""
    command = session.get(Command, command_id)
    if command is None or command.device_id != device_id:
        raise Rejected("invalid", f"command_id: device {device_id} has no command {command_id}")
    transition = Succeed if response.succeeded else Fail
    if CommandState(command.state) not in transition.FROM_STATES:
        raise Rejected("late_response", f"command {command_id} is {command.state}; its answer came too late")
    transition.apply(command, ctx, session, result=response.result, error=response.error)
    return command


def expire_due(ctx: Context) -> dict[str, int]:
    """Sent commands past their timeout time out; queued ones past expires_at expire."""
    now = utcnow()
    done = {"timed_out": 0, "expired": 0}
    with ctx.db.session() as session:
        for command in session.scalars(select(Command).where(Command.state == CommandState.sent.value)):
            if command.sent_at is not None and command.sent_at + dt.timedelta(seconds=command.timeout_s) <= now:
                TimeOut.apply(command, ctx, session, error=f"no answer within {command.timeout_s:g}s")
                done["timed_out"] += 1
        for command in session.scalars(
            select(Command).where(Command.state == CommandState.queued.value, Command.expires_at <= now)
        ):
            Expire.apply(command, ctx, session, error="expired before delivery")
            done["expired"] += 1
    return done


def devices_with_queued(session: Session) -> list[str]:
    rows = session.scalars(
        select(Command.device_id).where(Command.state == CommandState.queued.value).distinct()
    )
    return list(rows)
