"""From the devices list: send one command to every device with a label, then follow each device's state."""

from __future__ import annotations

from collections.abc import Callable

from nicegui import run, ui

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.iot import commands, ui_data
from controltower.iot.ui_commands import FormError, command_fields, read_fields
from controltower.iot.ui_nav import COMMAND_COLORS, badge_slot
from controltower.web import session as web_session
from controltower.web.layout import notify_error

POLL_S = 1.0
COLUMNS = [
    {"name": "device", "label": "Device", "field": "device", "align": "left"},
    {"name": "state", "label": "State", "field": "state", "align": "left"},
    {"name": "result", "label": "Result / error", "field": "result", "align": "left",
     "classes": "font-mono text-xs", "style": "white-space: pre-wrap; word-break: break-all; max-width: 24rem"},
]


def button(ctx: Context, labels: Callable[[], list[str]]) -> None:
    """The *Send to a label* button and its dialog; `labels()` gives the labels devices carry now."""
    with ui.dialog() as dialog, ui.card().classes("w-[40rem] max-w-full"):
        ui.label("Send a command to every device with a label").classes("text-lg font-bold")
        label = ui.select([], label="Label").classes("w-full")
        fields = command_fields()
        send = ui.button("Send to all", icon="send")
        summary = ui.label().classes("text-sm").props("data-testid=broadcast-summary")
        table = ui.table(columns=COLUMNS, rows=[], row_key="id").classes("w-full").props(
            "dense flat data-testid=broadcast-results")
        table.add_slot("body-cell-state", badge_slot("state", COMMAND_COLORS))
        table.set_visibility(False)
        ui.button("Close", on_click=dialog.close).props("flat")
    current: dict[str, str] = {}

    async def poll() -> None:
        if not dialog.value:  # closed: resumes when opened again
            return
        rows = await run.io_bound(ui_data.broadcast_rows, ctx, current["id"])
        done = sum(1 for r in rows if r["state"] in commands.TERMINAL)
        summary.set_text(f"{done} of {len(rows)} devices finished; "
                         f"{sum(1 for r in rows if r['state'] == 'succeeded')} succeeded")
        table.rows = [{**r, "result": r["error"] or r["result"]} for r in rows]
        table.update()
        if done == len(rows):
            timer.deactivate()

    async def submit() -> None:
        label.error = None
        try:
            web_session.require(ctx, Role.operator)
            body = read_fields(fields)
            if not label.value:
                raise FormError("label", "pick the label of the devices to command")
            broadcast_id, count = await run.io_bound(ui_data.send_broadcast, ctx, label.value, body)
        except FormError as exc:
            target = label if exc.field == "label" else fields.get(exc.field)
            if target is None:
                notify_error(exc)
            else:
                target.error = exc.reason
            return
        except (web_session.Forbidden, ValueError) as exc:
            notify_error(exc)
            return
        if count == 0:
            label.error = f"no device carries the label {label.value!r} now"
            return
        current["id"] = broadcast_id
        table.set_visibility(True)
        await poll()
        timer.activate()

    def open_dialog() -> None:
        label.set_options(labels(), value=label.value if label.value in labels() else None)
        dialog.open()

    send.on_click(submit)
    timer = ui.timer(POLL_S, poll, active=False)
    ui.button("Send to a label", icon="campaign", on_click=open_dialog).props("outline")
