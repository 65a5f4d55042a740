"""Checks pages: the list with state, latency and uptime; the add/edit form; a check's response times and history."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.monitor import check_runner, checks, ui_data
from controltower.monitor.schemas import CheckCreate, CheckUpdate
from controltower.monitor.ui_nav import STATUS_COLORS, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.charts import line_options
from controltower.web.layout import frame, notify_error

REFRESH_S = 5.0
TYPES = ["http", "tcp", "icmp", "dns", "tls"]
COLUMNS = [
    {"name": "name", "label": "Name", "field": "name", "align": "left", "sortable": True},
    {"name": "state", "label": "State", "field": "state", "align": "left", "sortable": True},
    {"name": "type", "label": "Type", "field": "type", "align": "left"},
    {"name": "target", "label": "Target", "field": "target", "align": "left"},
    {"name": "latency", "label": "Latency", "field": "latency", "align": "right"},
    {"name": "uptime", "label": "Uptime 24 h", "field": "uptime", "align": "right"},
]


class FormError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _save(ctx: Context, original: str | None, values: dict[str, Any]) -> None:
    """Create (original None) or update a check; FormError names the field that is wrong."""
    try:
        if original is None:
            data: CheckCreate | CheckUpdate = CheckCreate(**values)
        else:
            data = CheckUpdate(**{k: v for k, v in values.items() if k != "name"})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise FormError(str(err["loc"][0]) if err["loc"] else "name", err["msg"]) from None
    try:
        with ctx.db.session() as session:
            if original is None:
                assert isinstance(data, CheckCreate)
                checks.create_check(session, data)
            else:
                assert isinstance(data, CheckUpdate)
                checks.update_check(session, original, data)
    except checks.CheckInvalid as exc:
        field = exc.field.split(".", 1)[0]
        raise FormError(field, exc.reason) from None
    except (checks.CheckExists, IntegrityError):
        raise FormError("name", f"a check named {values['name']!r} already exists") from None
    check_runner.runner_for(ctx).notify_changed()


def _delete(ctx: Context, name: str) -> None:
    with ctx.db.session() as session:
        checks.delete_check(session, name)
    check_runner.runner_for(ctx).notify_changed()


def _form(ctx: Context, on_saved: Any) -> Any:
    """A dialog to add or edit a check; returns `open(row | None)`."""
    state: dict[str, Any] = {"original": None}
    with ui.dialog() as dialog, ui.card().classes("w-[32rem] max-w-full"):
        title = ui.label().classes("text-lg font-bold")
        fields: dict[str, Any] = {
            "name": ui.input("Name").classes("w-full"),
            "type": ui.select(TYPES, value="http", label="Type").classes("w-full"),
            "target": ui.input("Target", placeholder="https://example.com/health or host:port").classes("w-full"),
            "interval": ui.input("Interval", value="60s").classes("w-full"),
            "timeout": ui.input("Timeout (empty: interval, at most 10 s)").classes("w-full"),
            "retries": ui.number("Retries", value=0, min=0, max=20, precision=0).classes("w-full"),
        }
        enabled = ui.switch("Enabled", value=True)
        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat")
            save_button = ui.button("Save")

    def open_form(row: dict[str, Any] | None) -> None:
        state["original"] = row["name"] if row else None
        for field in fields.values():
            field.error = None
        title.set_text(f"Edit check {row['name']}" if row else "Add a check")
        fields["name"].set_value(row["name"] if row else "")
        fields["name"].set_enabled(row is None)
        fields["type"].set_value(row["type"] if row else "http")
        fields["target"].set_value(row["target"] if row else "")
        fields["interval"].set_value(f"{row['interval']:g}s" if row else "60s")
        fields["timeout"].set_value(f"{row['timeout']:g}s" if row else "")
        fields["retries"].set_value(row["retries"] if row else 0)
        enabled.set_value(row["enabled"] if row else True)
        dialog.open()

    async def save() -> None:
        for field in fields.values():
            field.error = None
        values: dict[str, Any] = {
            "name": (fields["name"].value or "").strip(),
            "type": fields["type"].value,
            "target": (fields["target"].value or "").strip(),
            "interval": (fields["interval"].value or "").strip() or "60s",
            "timeout": (fields["timeout"].value or "").strip() or None,
            "retries": int(fields["retries"].value or 0),
            "enabled": bool(enabled.value),
        }
        try:
            web_session.require(ctx, Role.operator)
            await run.io_bound(_save, ctx, state["original"], values)
        except FormError as exc:
            target = fields.get(exc.field)
            if target is None:
                notify_error(exc)
            else:
                target.error = exc.reason
            return
        except web_session.Forbidden as exc:
            notify_error(exc)
            return
        dialog.close()
        ui.notify(f"check {values['name'] or state['original']} saved", type="positive")
        await on_saved()

    save_button.on_click(save)
    return open_form


def _list_page(ctx: Context) -> None:
    @page("/monitor/checks")
    async def checks_page(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        can_edit = user.can(Role.operator)
        with frame(ctx, user, "Checks", "/monitor/checks"):
            submenu("/monitor/checks")
            table = ui.table(columns=[*COLUMNS, *([{"name": "actions", "label": "", "field": "name"}]
                                                  if can_edit else [])],
                             rows=[], row_key="name", pagination=50).classes("w-full")
            table.add_slot("body-cell-name", '<q-td :props="props"><a :href="\'/monitor/checks/\' + '
                                             'encodeURIComponent(props.value)" class="text-primary">{{ props.value }}'
                                             '</a></q-td>')
            table.add_slot("body-cell-state", '<q-td :props="props"><q-badge :color="{up: \'positive\', '
                                              'down: \'negative\'}[props.value] || \'grey\'" :label="props.value" '
                                              ':data-state="props.value"/></q-td>')

            async def reload() -> None:
                table.rows = await run.io_bound(ui_data.check_rows, ctx)
                table.update()

            if can_edit:
                open_form = _form(ctx, reload)
                table.add_slot("body-cell-actions", '<q-td :props="props" auto-width>'
                                                    '<q-btn flat dense icon="edit" aria-label="Edit" '
                                                    '@click="$parent.$emit(\'edit\', props.row)"/>'
                                                    '<q-btn flat dense icon="delete" color="negative" '
                                                    'aria-label="Delete" '
                                                    '@click="$parent.$emit(\'remove\', props.row)"/></q-td>')

                async def remove(row: dict[str, Any]) -> None:
                    with ui.dialog() as confirm, ui.card():
                        ui.label(f"Delete check {row['name']} and its history?")
                        with ui.row():
                            ui.button("Cancel", on_click=lambda: confirm.submit(False)).props("flat")
                            ui.button("Delete", color="negative", on_click=lambda: confirm.submit(True))
                    if not await confirm:
                        return
                    try:
                        web_session.require(ctx, Role.operator)
                        await run.io_bound(_delete, ctx, row["name"])
                    except (web_session.Forbidden, checks.CheckNotFound) as exc:
                        notify_error(exc)
                        return
                    ui.notify(f"check {row['name']} deleted")
                    await reload()

                table.on("edit", lambda e: open_form(e.args))
                table.on("remove", lambda e: remove(e.args))
                ui.button("Add check", icon="add", on_click=lambda: open_form(None)).props("data-testid=add-check")
            await reload()
            ui.timer(REFRESH_S, reload)
        return None


def _detail_page(ctx: Context) -> None:
    @page("/monitor/checks/{name}")
    async def check_page(request: Request, name: str) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, f"Check {name}", "/monitor/checks"):
            submenu("/monitor/checks")
            with ui.row().classes("items-center gap-3"):
                ui.label(name).classes("text-2xl font-bold")
                state = ui.badge("").props("data-testid=check-state")
            summary = ui.label().classes("text-sm")
            span = ui.toggle({3600.0: "1h", 86400.0: "24h", 7 * 86400.0: "7d"}, value=86400.0)
            with ui.card().classes("w-full"):
                ui.label("Response time").classes("font-bold")
                chart = ui.echart(line_options([], "ms")).classes("w-full h-64")
            with ui.card().classes("w-full"):
                ui.label("State history").classes("font-bold")
                history = ui.table(columns=[{"name": c, "label": c.capitalize(), "field": c, "align": "left"}
                                            for c in ("ts", "from", "to", "error")],
                                   rows=[], row_key="ts").classes("w-full").props("dense flat")

            async def load() -> None:
                info = await run.io_bound(ui_data.check_detail, ctx, name, float(span.value))
                if info is None:
                    state.set_text("NOT FOUND")
                    return
                state.set_text(info["state"].upper())
                state.props(f"color={STATUS_COLORS.get(info['state'], 'grey')}")
                up = info["uptime"]
                fmt = {d: "-" if up[d] is None else f"{up[d]:.2f} %" for d in up}
                summary.set_text(f"{info['type']} {info['target']} every {info['interval_s']:g} s · uptime 24 h "
                                 f"{fmt[1]}, 7 d {fmt[7]}, 30 d {fmt[30]}"
                                 + (f" · last error: {info['last_error']}" if info["last_error"] else ""))
                chart.options.clear()
                now = time.time()
                window = (now - float(span.value), now)
                chart.options.update(line_options([("latency", info["latency"])], "ms", window=window))
                chart.update()
                history.rows = info["history"]
                history.update()

            span.on_value_change(load)
            await load()
            ui.timer(REFRESH_S, load)
        return None


def register(ctx: Context) -> None:
    _list_page(ctx)
    _detail_page(ctx)
