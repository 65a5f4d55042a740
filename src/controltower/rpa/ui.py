"""Robots' dashboard pages: the robot list here; a robot, the runs and a run in ui_robot / ui_runs / ui_run."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.context import Context
from controltower.rpa import ui_data, ui_files, ui_queues, ui_robot, ui_run, ui_runs, ui_schedules, ui_vault
from controltower.rpa.ui_nav import link_slot, status_slot, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame

REFRESH_S = 5.0
COLUMNS = [
    {"name": "name", "label": "Robot", "field": "name", "align": "left", "sortable": True},
    {"name": "description", "label": "Description", "field": "description", "align": "left"},
    {"name": "latest", "label": "Latest", "field": "latest", "align": "right"},
    {"name": "production", "label": "Production", "field": "production", "align": "right"},
    {"name": "last_status", "label": "Last run", "field": "last_status", "align": "left"},
    {"name": "last_run", "label": "Started", "field": "last_run", "align": "left"},
]


def _list_page(ctx: Context) -> None:
    @page("/robots")
    async def robots_page(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Robots", "/robots"):
            submenu("/robots")
            empty = ui.column().classes("gap-1")
            with empty:
                ui.label("No robot yet.").classes("text-lg font-bold")
                ui.markdown("Create one from a template and push it:\n\n"
                            "```sh\nctower robot new invoice-bot\nctower robot push invoice-bot\n```\n\n"
                            "Each push becomes a new version here; promote one to production and start runs "
                            "on the agents.")
            table = ui.table(columns=COLUMNS, rows=[], row_key="name", pagination=50).classes("w-full")
            link_slot(table, "name", "'/robots/' + encodeURIComponent(props.row.name)")
            status_slot(table, "last_status")

            async def reload() -> None:
                rows = await run.io_bound(ui_data.robot_rows, ctx)
                empty.set_visibility(not rows)
                table.set_visibility(bool(rows))
                table.rows = rows
                table.update()

            await reload()
            ui.timer(REFRESH_S, reload)
        return None


def register(ctx: Context) -> None:
    """Every Robots page; called from rpa's setup(ctx). The fixed paths come before /robots/{name}."""
    _list_page(ctx)
    ui_runs.register(ctx)
    ui_schedules.register(ctx)
    ui_queues.register(ctx)
    ui_vault.register(ctx)
    ui_run.register(ctx)
    ui_files.register(ctx)
    ui_robot.register(ctx)
