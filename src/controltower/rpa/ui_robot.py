"""A robot's page: versions with promote and roll back, the diff of two, the start-run form, runs and history."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.rpa import robots, ui_data, ui_ops
from controltower.rpa.ui_diff import diff_card
from controltower.rpa.ui_nav import submenu
from controltower.rpa.ui_runs import runs_table
from controltower.rpa.ui_start import start_card
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame, notify_error

REFRESH_S = 5.0
VERSION_COLUMNS = [
    {"name": "number", "label": "Version", "field": "number", "align": "left"},
    {"name": "sha", "label": "sha256", "field": "sha", "align": "left"},
    {"name": "by", "label": "Pushed by", "field": "by", "align": "left"},
    {"name": "at", "label": "Pushed at", "field": "at", "align": "left"},
    {"name": "note", "label": "Note", "field": "note", "align": "left"},
]
HISTORY_COLUMNS = [
    {"name": c, "label": label, "field": c, "align": "left"}
    for c, label in (("at", "When"), ("action", "Action"), ("version", "Version"), ("previous", "Before"),
                     ("actor", "Who"))
]


def _versions_table(can_act: bool) -> ui.table:
    columns = [*VERSION_COLUMNS, *([{"name": "actions", "label": "", "field": "number"}] if can_act else [])]
    table = ui.table(columns=columns, rows=[], row_key="number").classes("w-full").props(
        "dense flat data-testid=versions")
    table.add_slot("body-cell-number", '<q-td :props="props" :data-version="props.value">v{{ props.value }} '
                                       '<q-badge v-if="props.row.production" color="positive" label="production" '
                                       'data-testid=production-badge /></q-td>')
    table.add_slot("body-cell-sha", '<q-td :props="props"><code>{{ props.value }}</code></q-td>')
    if can_act:
        table.add_slot("body-cell-actions", '<q-td :props="props" auto-width><q-btn v-if="!props.row.production" '
                                            'flat dense color="primary" label="Promote" icon="publish" '
                                            '@click="$parent.$emit(\'promote\', props.row.number)"/></q-td>')
    return table


def register(ctx: Context) -> None:
    @page("/robots/{name}")
    async def robot_page(request: Request, name: str) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        can_act = user.can(Role.operator)
        with frame(ctx, user, f"Robot {name}", "/robots"):
            submenu("")
            view = await run.io_bound(ui_data.robot_view, ctx, name)
            if view is None:
                ui.label(f"No robot named {name!r}.").classes("text-lg")
                ui.link("all robots", "/robots")
                return None
            with ui.row().classes("items-center gap-3"):
                ui.label(name).classes("text-2xl font-bold")
                production = ui.badge("").props("data-testid=production")
            ui.label(view["description"]).classes("text-sm opacity-80")
            with ui.card().classes("w-full"):
                with ui.row().classes("items-center gap-3"):
                    ui.label("Versions").classes("font-bold")
                    if can_act:
                        rollback_button = ui.button("Roll back", icon="undo").props("flat data-testid=rollback")
                versions = _versions_table(can_act)
            await diff_card(ctx, name, [v["number"] for v in view["versions"]])
            start_box = ui.column().classes("w-full")
            with ui.card().classes("w-full"):
                with ui.row().classes("items-center gap-3"):
                    ui.label("Recent runs").classes("font-bold")
                    ui.link("all runs of this robot", f"/robots/runs?robot={name}")
                recent = runs_table()
            with ui.card().classes("w-full"):
                ui.label("History").classes("font-bold")
                history = ui.table(columns=HISTORY_COLUMNS, rows=[], row_key="at").classes("w-full").props(
                    "dense flat data-testid=history")

            shown: dict[str, Any] = {"form": None}

            def show(data: dict[str, Any]) -> None:
                form_key = ([v["number"] for v in data["versions"]], data["production"], data["agents"],
                            data["secrets"])
                if can_act and form_key != shown["form"]:  # the form offers the versions as they are now
                    shown["form"] = form_key
                    start_box.clear()
                    with start_box:
                        start_card(ctx, name, data)
                production.set_text(f"production v{data['production']}" if data["production"]
                                    else "no production version")
                production.props(f"color={'positive' if data['production'] else 'grey'}")
                for table, rows in ((versions, data["versions"]), (recent, data["runs"]),
                                    (history, data["history"])):
                    if table.rows != rows:
                        table.rows = rows
                        table.update()

            async def reload() -> None:
                data = await run.io_bound(ui_data.robot_view, ctx, name)
                if data is not None:
                    show(data)

            async def act(number: int | None) -> None:
                """Promote `number`, or roll back when it is None."""
                try:
                    acting = web_session.require(ctx, Role.operator)
                    if number is not None:
                        await run.io_bound(ui_ops.promote, ctx, acting, name, number)
                        ui.notify(f"v{number} is in production", type="positive")
                    else:
                        back = await run.io_bound(ui_ops.rollback, ctx, acting, name)
                        ui.notify(f"rolled back: v{back} is in production", type="positive")
                except (web_session.Forbidden, robots.RobotNotFound, robots.RollbackImpossible) as exc:
                    notify_error(exc)
                    return
                await reload()

            if can_act:
                versions.on("promote", lambda e: act(int(e.args)))
                rollback_button.on_click(lambda: act(None))
            show(view)
            ui.timer(REFRESH_S, reload)
        return None
