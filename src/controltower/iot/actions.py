"""The `iot.send_command` action: queue a command, wait for its answer or its timeout, return it."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controltower.core.auth import Principal, Role
from controltower.core.context import Context
from controltower.iot import commands
from controltower.iot.hub import hub_of
from controltower.iot.schemas import CommandCreate, CommandPublic

POLL_S = 0.1


class SendCommandParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(min_length=1, max_length=64, description="Device id")
    name: str = Field(min_length=1, max_length=128)
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(30.0, gt=0, le=3600, description="Seconds from delivery to an answer")
    expires_at: dt.datetime | None = None
    one_way: bool = False
    wait_s: float | None = Field(
        None, gt=0, le=3600, description="How long to wait for the outcome; default timeout_s + 5"
    )


def _create(ctx: Context, params: SendCommandParams) -> int:
    body = CommandCreate(
        name=params.name,
        params=params.params,
        timeout_s=params.timeout_s,
        expires_at=params.expires_at,
        one_way=params.one_way,
    )
    with ctx.db.session() as session:
        command = commands.create_command(ctx, session, params.device, body)
        return command.id


def _read(ctx: Context, command_id: int) -> CommandPublic:
    with ctx.db.read_session() as session:
        return CommandPublic.model_validate(commands.read_command(session, command_id))


def register(ctx: Context) -> None:
    async def send_command(params: SendCommandParams, _principal: Principal) -> CommandPublic:
        """Returns the command in its final state, or as it stands when `wait_s` runs out."""
        command_id = await asyncio.to_thread(_create, ctx, params)
        hub_of(ctx).notify_command(params.device)
        deadline = time.monotonic() + (params.wait_s or params.timeout_s + 5)
        while True:
            command = await asyncio.to_thread(_read, ctx, command_id)
            if command.state in commands.TERMINAL or time.monotonic() >= deadline:
                return command
            await asyncio.sleep(POLL_S)

    ctx.actions.register(
        "iot.send_command",
        SendCommandParams,
        send_command,
        description="Send a command to a device and wait for its answer (or its timeout).",
        role=Role.operator,
        output_model=CommandPublic,
    )
