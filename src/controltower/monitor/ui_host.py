"""The host page: time-range picker, charts of CPU, memory, disk, network and load, status history and facts."""

from __future__ import annotations

import datetime as dt
import time

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.context import Context
from controltower.monitor import ui_data
from controltower.monitor.ui_nav import STATUS_COLORS, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.charts import RANGES, line_options, parse_local, plan_for
from controltower.web.layout import frame

LIVE_REFRESH_S = 10.0
CHARTS = (
    ("cpu", "CPU", "%", 100.0),
    ("memory", "Memory", "%", 100.0),
    ("disk", "Disk use", "%", 100.0),
    ("network", "Network", "B/s", None),
    ("load", "Load", "", None),
)


def register(ctx: Context) -> None:
    @page("/monitor/hosts/{name}")
    async def host_page(request: Request, name: str) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, f"Host {name}", "/monitor/hosts"):
            submenu("")
            with ui.row().classes("items-center gap-3"):
                ui.label(name).classes("text-2xl font-bold")
                status = ui.badge("")
            with ui.row().classes("items-center gap-3 w-full"):
                picker = ui.toggle([*RANGES, "custom"], value="15m").props("data-testid=range")
                custom = ui.row().classes("items-center gap-2")
                with custom:
                    now = dt.datetime.now().replace(microsecond=0, second=0)
                    six_hours_ago = (now - dt.timedelta(hours=6)).isoformat()
                    start_in = ui.input("From", value=six_hours_ago).props("type=datetime-local")
                    end_in = ui.input("To", value=now.isoformat()).props("type=datetime-local")
                    apply = ui.button("Apply")
                custom.set_visibility(False)
            charts: dict[str, tuple[ui.echart, ui.label]] = {}
            with ui.grid().classes("w-full gap-4 grid-cols-1 lg:grid-cols-2"):
                for key, title, unit, y_max in CHARTS:
                    with ui.card().classes("w-full").props(f"data-chart={key}"):
                        ui.label(title).classes("font-bold")
                        chart = ui.echart(line_options([], unit, y_max)).classes("w-full h-56")
                        caption = ui.label("loading…").classes("text-xs opacity-70").props(f"data-caption={key}")
                    charts[key] = (chart, caption)
            with ui.row().classes("w-full gap-4 items-start"):
                with ui.card().classes("flex-1 min-w-72"):
                    ui.label("Facts").classes("font-bold")
                    facts = ui.table(columns=[{"name": "k", "label": "Fact", "field": "k", "align": "left"},
                                              {"name": "v", "label": "Value", "field": "v", "align": "left"}],
                                     rows=[], row_key="k", pagination=15).classes("w-full").props("dense flat")
                with ui.card().classes("flex-1 min-w-72"):
                    ui.label("Status history").classes("font-bold")
                    history = ui.table(columns=[{"name": "ts", "label": "When", "field": "ts", "align": "left"},
                                                {"name": "change", "label": "Change", "field": "change",
                                                 "align": "left"}],
                                       rows=[], row_key="ts").classes("w-full").props("dense flat")

            async def load() -> None:
                if picker.value == "custom":
                    start, end = parse_local(start_in.value or ""), parse_local(end_in.value or "")
                    start_in.error = None if start is not None else "pick a date and time"
                    end_in.error = None if end is not None else "pick a date and time"
                    if start is None or end is None:
                        return
                    if end <= start:
                        end_in.error = "must be after From"
                        return
                else:
                    end = time.time()
                    start = end - RANGES[picker.value]
                plan = plan_for(end - start)
                view = await run.io_bound(ui_data.host, ctx, name, start, end, plan)
                if view is None:
                    status.set_text("NOT FOUND")
                    return
                status.set_text(view.host["status"].upper())
                status.props(f"color={STATUS_COLORS.get(view.host['status'], 'grey')}")
                for key, _title, unit, y_max in CHARTS:
                    chart, caption = charts[key]
                    lines = view.charts.get(key, [])
                    chart.options.clear()
                    chart.options.update(line_options(lines, unit, y_max, window=(start, end)))
                    chart.update()
                    count = sum(len(p) for _, p in lines)
                    latest = [p[-1][1] for _, p in lines if p]
                    step = "raw samples" if plan.step_s is None else f"{plan.step_s:.0f} s steps"
                    caption.set_text(f"{count} points ({step})" + (f", latest {latest[0]:.1f} {unit}" if latest
                                                                   else ""))
                facts.rows = [{"k": k, "v": v} for k, v in sorted(view.host["facts_flat"].items())]
                facts.update()
                history.rows = [{"ts": h["ts"].astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                                 "change": f"{h['from_status']} → {h['to_status']}"} for h in view.host["history"]]
                history.update()

            async def on_range() -> None:
                custom.set_visibility(picker.value == "custom")
                await load()

            async def tick() -> None:
                if picker.value != "custom" and plan_for(RANGES[picker.value]).live:
                    await load()

            picker.on_value_change(on_range)
            apply.on_click(load)
            await load()
            ui.timer(LIVE_REFRESH_S, tick)
        return None
