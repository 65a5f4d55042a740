"""The runs page: every run with status, robot, task, agent, duration and pass/fail counts; filter by robot/status."""

from __future__ import annotations

from typing import get_args

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.context import Context
from controltower.rpa import ui_data
from controltower.rpa.schemas import RunStatus
from controltower.rpa.ui_nav import link_slot, status_slot, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame

REFRESH_S = 3.0
ALL = ""
COLUMNS = [
    {"name": "id", "label": "Run", "field": "id", "align": "left", "sortable": True},
    {"name": "status", "label": "Status", "field": "status", "align": "left"},
    {"name": "robot", "label": "Robot", "field": "robot", "align": "left", "sortable": True},
    {"name": "version", "label": "Version", "field": "version", "align": "right"},
    {"name": "task", "label": "Task", "field": "task", "align": "left"},
    {"name": "agent", "label": "Agent", "field": "agent", "align": "right"},
    {"name": "created", "label": "Started", "field": "created", "align": "left"},
    {"name": "duration", "label": "Duration", "field": "duration", "align": "right"},
    {"name": "counts", "label": "Tasks", "field": "counts", "align": "left"},
]


def runs_table(rows: list[dict[str, object]] | None = None) -> ui.table:
    """A table of runs linking to each run's page (the robot page shows one too)."""
    table = ui.table(columns=COLUMNS, rows=rows or [], row_key="id", pagination=50).classes("w-full")
    table.props("data-testid=runs")
    link_slot(table, "id", "'/robots/runs/' + props.row.id")
    link_slot(table, "robot", "'/robots/' + encodeURIComponent(props.row.robot)")
    status_slot(table)
    return table


def register(ctx: Context) -> None:
    @page("/robots/runs")
    async def runs_page(request: Request, robot: str = ALL, status: str = ALL) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Runs", "/robots/runs"):
            submenu("/robots/runs")
            names = await run.io_bound(ui_data.robot_names, ctx)
            with ui.row().classes("items-center gap-3"):
                robot_in = ui.select({ALL: "all robots", **{n: n for n in names}},
                                     value=robot if robot in names else ALL, label="Robot").classes("w-56")
                statuses = {ALL: "any status", **{s: s for s in get_args(RunStatus)}}
                status_in = ui.select(statuses, value=status if status in statuses else ALL,
                                      label="Status").classes("w-44")
            table = runs_table()

            async def reload() -> None:
                table.rows = await run.io_bound(ui_data.run_rows, ctx, robot_in.value or None,
                                                status_in.value or None)
                table.update()

            robot_in.on_value_change(reload)
            status_in.on_value_change(reload)
            await reload()
            ui.timer(REFRESH_S, reload)
        return None
