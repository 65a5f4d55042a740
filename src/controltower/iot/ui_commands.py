"""A device page's commands: the form (operators and admins) with the command's live state, and recent commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nicegui import run, ui
from pydantic import ValidationError

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.iot import commands, devices, ui_data
from controltower.iot.schemas import CommandCreate, CommandPublic
from controltower.iot.ui_nav import COMMAND_COLORS, badge_slot
from controltower.web import session as web_session
from controltower.web.layout import notify_error
from controltower.web.session import WebUser

POLL_S = 0.5
COLUMNS = [
    {"name": "id", "label": "#", "field": "id", "align": "right"},
    {"name": "name", "label": "Command", "field": "name", "align": "left"},
    {"name": "params", "label": "Params", "field": "params", "align": "left", "classes": "font-mono text-xs"},
    {"name": "state", "label": "State", "field": "state", "align": "left"},
    {"name": "created", "label": "Queued", "field": "created", "align": "left"},
    {"name": "finished", "label": "Finished", "field": "finished", "align": "left"},
    {"name": "result", "label": "Result / error", "field": "result", "align": "left",
     "classes": "font-mono text-xs", "style": "white-space: pre-wrap; word-break: break-all; max-width: 24rem"},
]


class FormError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_form(name: str, params: str, timeout_s: float | None) -> CommandCreate:
    """The form's fields as the API's CommandCreate; FormError names the field that is wrong."""
    try:
        parsed: Any = json.loads(params.strip() or "{}")
    except json.JSONDecodeError as exc:
        raise FormError("params", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(parsed, dict):
        raise FormError("params", "must be a JSON object, e.g. {\"resolution\": \"640x480\"}")
    try:
        return CommandCreate(name=name.strip(), params=parsed, timeout_s=30.0 if timeout_s is None else timeout_s)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise FormError(str(err["loc"][0]) if err["loc"] else "name", err["msg"]) from None


def command_fields() -> dict[str, Any]:
    """The inputs of a command: name, params as JSON, timeout; keyed by the CommandCreate field they fill."""
    return {
        "name": ui.input("Name", placeholder="capture").classes("w-full"),
        "params": ui.textarea("Params (JSON object)", value="{}").classes("w-full font-mono").props("autogrow"),
        "timeout_s": ui.number("Timeout (seconds)", value=30, min=0.1, max=86400).classes("w-48"),
    }


def read_fields(fields: dict[str, Any]) -> CommandCreate:
    """Clear the fields' errors and parse them; FormError names the field that is wrong."""
    for field in fields.values():
        field.error = None
    return parse_form(fields["name"].value or "", fields["params"].value or "", fields["timeout_s"].value)


def _form(ctx: Context, device_id: str, on_change: Callable[[], Any]) -> None:
    with ui.column().classes("w-full gap-1"):
        fields = command_fields()
        send = ui.button("Send command", icon="send")
        with ui.row().classes("items-center gap-2 w-full"):
            command_label = ui.label().classes("text-sm")
            state = ui.badge("").props("data-testid=command-state")
            state.set_visibility(False)
        result = ui.label().classes("font-mono text-xs break-all w-full").props("data-testid=command-result")
        current: dict[str, int] = {}

        async def poll() -> None:
            command_id = current.get("id")
            if command_id is None:
                timer.deactivate()
                return
            try:
                command = await run.io_bound(ui_data.read_command, ctx, command_id)
            except commands.CommandNotFound:  # the device was deleted meanwhile
                timer.deactivate()
                state.set_text("gone")
                return
            show(command)
            if command.state in commands.TERMINAL:
                timer.deactivate()
                await on_change()

        def show(command: CommandPublic) -> None:
            command_label.set_text(f"Command #{command.id} {command.name}:")
            state.set_text(command.state)
            state.props(f"color={COMMAND_COLORS.get(command.state, 'grey')} data-state={command.state}")
            state.set_visibility(True)
            if command.error:
                result.set_text(f"error: {command.error}")
            elif command.result is not None:
                result.set_text("result: " + ui_data.compact(command.result, 2000))
            else:
                result.set_text("")

        async def submit() -> None:
            try:
                web_session.require(ctx, Role.operator)
                body = read_fields(fields)
                command = await run.io_bound(ui_data.send_command, ctx, device_id, body)
            except FormError as exc:
                if exc.field in fields:
                    fields[exc.field].error = exc.reason
                else:
                    notify_error(exc)
                return
            except (web_session.Forbidden, devices.DeviceNotFound, ValueError) as exc:
                notify_error(exc)
                return
            current["id"] = command.id
            show(command)
            timer.activate()
            await on_change()

        send.on_click(submit)
        timer = ui.timer(POLL_S, poll, active=False)


def form(ctx: Context, user: WebUser, device_id: str, on_change: Callable[[], Any]) -> None:
    """The command form for operators and admins; others are told why there is none."""
    if user.can(Role.operator):
        _form(ctx, device_id, on_change)
    else:
        ui.label("Sending commands needs the operator or admin role.").classes("text-sm opacity-70")


def recent_table() -> ui.table:
    """The device's recent commands with their state and result; the page fills and refreshes it."""
    table = ui.table(columns=COLUMNS, rows=[], row_key="id").classes("w-full").props(
        "dense flat data-testid=recent-commands")
    table.add_slot("body-cell-state", badge_slot("state", COMMAND_COLORS))
    table.add_slot("body-cell-result", '<q-td :props="props"><span v-if="props.row.error" class="text-negative">'
                                       '{{ props.row.error }}</span><span v-else>{{ props.value }}</span></q-td>')
    return table
