"""The `iot.send_command` action: queue a command, wait for its answer or its timeout, return it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controltower.core.auth import Principal, Role
from controltower.core.context import Context
from controltower.core.events import Event
from controltower.iot import commands
from controltower.iot.hub import hub_of
from controltower.iot.schemas import CommandCreate, CommandPublic


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
        # Woken by the `iot.command.finished` event the moment the answer commits, not by polling.
        finished = asyncio.Event()
        mine: list[int] = []

        async def on_finished(event: Event) -> None:
            if mine and event.payload.get("command") == mine[0]:
                finished.set()

        subscription = ctx.events.subscribe("iot.command.finished", on_finished)
        try:
            mine.append(await asyncio.to_thread(_create, ctx, params))
            hub_of(ctx).notify_command(params.device)
            command = await asyncio.to_thread(_read, ctx, mine[0])
            if command.state not in commands.TERMINAL:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), params.wait_s or params.timeout_s + 5)
                command = await asyncio.to_thread(_read, ctx, mine[0])
            return command
        finally:
            subscription.cancel()

    ctx.actions.register(
        "iot.send_command",
        SendCommandParams,
        send_command,
        description="Send a command to a device and wait for its answer (or its timeout).",
        role=Role.operator,
        output_model=CommandPublic,
    )
