"""The device page: header, a chart per numeric telemetry key over a chosen range, attributes, files, commands."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.context import Context
from controltower.iot import ui_commands, ui_data
from controltower.iot.ui_nav import STATUS_COLORS, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.charts import RANGES, line_options, parse_local, plan_for
from controltower.web.layout import frame

REFRESH_S = 5.0
CHART_REFRESH_S = 10.0
SYMBOLS_UP_TO = 60
VALUE_STYLE = "white-space: pre-wrap; word-break: break-all"


class _Charts:
    """One chart per numeric key; the grid is rebuilt only when the set of keys changes."""

    def __init__(self) -> None:
        with ui.row().classes("items-center gap-3 w-full"):
            ui.label("Telemetry").classes("text-lg font-bold")
            self.picker = ui.toggle([*RANGES, "custom"], value="15m").props("data-testid=range")
            self.custom = ui.row().classes("items-center gap-2")
            with self.custom:
                now = dt.datetime.now().replace(microsecond=0, second=0)
                self.start_in = ui.input("From", value=(now - dt.timedelta(hours=6)).isoformat()).props(
                    "type=datetime-local")
                self.end_in = ui.input("To", value=now.isoformat()).props("type=datetime-local")
                self.apply = ui.button("Apply")
            self.custom.set_visibility(False)
        self.grid = ui.grid().classes("w-full gap-4 grid-cols-1 lg:grid-cols-2")
        self.charts: dict[str, tuple[ui.echart, ui.label]] = {}

    def window(self) -> tuple[float, float] | None:
        """The range picked, or None (with the reason under the field) when the custom one is wrong."""
        if self.picker.value != "custom":
            end = time.time()
            return end - RANGES[self.picker.value], end
        start, end = parse_local(self.start_in.value or ""), parse_local(self.end_in.value or "")
        self.start_in.error = None if start is not None else "pick a date and time"
        self.end_in.error = None if end is not None else "pick a date and time"
        if start is None or end is None:
            return None
        if end <= start:
            self.end_in.error = "must be after From"
            return None
        return start, end

    def live(self) -> bool:
        return self.picker.value != "custom" and plan_for(RANGES[self.picker.value]).live

    def ensure(self, keys: list[str]) -> None:
        if list(self.charts) == keys:
            return
        self.grid.clear()
        self.charts.clear()
        with self.grid:
            if not keys:
                ui.label("No numeric telemetry yet.").classes("text-sm opacity-70")
            for key in keys:
                with ui.card().classes("w-full").props(f"data-chart={key}"):
                    ui.label(key).classes("font-bold")
                    chart = ui.echart(line_options([], "")).classes("w-full h-56")
                    caption = ui.label("loading…").classes("text-xs opacity-70").props(f"data-caption={key}")
                self.charts[key] = (chart, caption)

    def show(self, data: ui_data.Telemetry, window: tuple[float, float], step_s: float | None) -> None:
        for key, (chart, caption) in self.charts.items():
            points = data.lines.get(key, [])
            chart.options.clear()
            chart.options.update(line_options([(key, points)], "", window=window))
            chart.options["yAxis"].pop("min", None)  # telemetry can be negative (°C below zero)
            chart.options["yAxis"]["scale"] = True
            chart.options["series"][0]["showSymbol"] = len(points) <= SYMBOLS_UP_TO  # a lone sample stays visible
            chart.update()
            step = "raw samples" if step_s is None else f"{step_s:.0f} s steps"
            latest = f", latest {ui_data.number(points[-1][1])}" if points else ""
            caption.set_text(f"{len(points)} points ({step}){latest}")


def _header(view: ui_data.DeviceView) -> dict[str, Any]:
    with ui.row().classes("items-center gap-3"):
        ui.label(view.device.name).classes("text-2xl font-bold").props("data-testid=device-name")
        status = ui.badge("").props("data-testid=device-status")
        ui.label(view.device.type).classes("text-sm opacity-70")
        for label in view.device.labels:
            ui.chip(label, icon="label").props("dense outline")
    with ui.row().classes("items-center gap-3"):
        details = ui.label().classes("text-sm")
        ui.link("its dead letters", f"/devices/dead-letters?device={quote(view.device.id)}").classes("text-sm")
    if view.device.description:
        ui.label(view.device.description).classes("text-sm opacity-80")
    return {"status": status, "details": details}


def _attributes(ctx: Context, device_id: str) -> ui.table:
    with ui.dialog() as dialog, ui.card().classes("w-[40rem] max-w-full"):
        title = ui.label().classes("font-bold")
        history = ui.table(columns=[{"name": "ts", "label": "When", "field": "ts", "align": "left"},
                                    {"name": "value", "label": "Value", "field": "value", "align": "left",
                                     "classes": "font-mono text-xs", "style": VALUE_STYLE}],
                           rows=[], row_key="ts", pagination=20).classes("w-full").props("dense flat")
        ui.button("Close", on_click=dialog.close).props("flat")

    async def open_history(key: str) -> None:
        title.set_text(f"History of {key} (newest first)")
        history.rows = await run.io_bound(ui_data.attribute_history, ctx, device_id, key)
        history.update()
        dialog.open()

    table = ui.table(columns=[{"name": "key", "label": "Attribute", "field": "key", "align": "left"},
                              {"name": "value", "label": "Value", "field": "value", "align": "left",
                               "classes": "font-mono text-xs", "style": VALUE_STYLE},
                              {"name": "ts", "label": "Since", "field": "ts", "align": "left"}],
                     rows=[], row_key="key").classes("w-full").props("dense flat data-testid=attributes")
    table.add_slot("body-cell-key", '<q-td :props="props">{{ props.value }}<q-btn flat dense round size="sm" '
                                    'icon="history" aria-label="History" '
                                    '@click="$parent.$emit(\'history\', props.row.key)"/></q-td>')
    table.on("history", lambda e: open_history(e.args))
    return table


def _gallery(container: ui.element, files: list[dict[str, Any]]) -> None:
    container.clear()
    with container:
        if not files:
            ui.label("No files yet.").classes("text-sm opacity-70")
        for f in files:
            with ui.card().classes("w-52 p-2 gap-1").props(f"data-file={f['id']}"):
                if f["image"]:
                    with ui.link(target=f["url"], new_tab=True):
                        img = ui.element("img").classes("w-48 h-36 object-cover rounded")
                        img.props.update(src=f["url"], alt=f["name"], loading="lazy")  # the name is the device's
                else:
                    with ui.link(target=f["url"]).classes("flex items-center gap-1").props("download"):
                        ui.icon("download")
                        ui.label(f["name"]).classes("break-all")
                ui.label(f"{f['ts']} · {f['size']}").classes("text-xs")
                ui.label(f["content_type"] + (f" · command #{f['command_id']}" if f["command_id"] else "")).classes(
                    "text-xs opacity-70 break-all")


def register(ctx: Context) -> None:
    @page("/devices/{device_id}")
    async def device_page(request: Request, device_id: str) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, f"Device {device_id}", "/devices"):
            submenu("")
            view = await run.io_bound(ui_data.device_view, ctx, device_id)
            if view is None:
                ui.label(f"No device with id {device_id!r}.").classes("text-lg").props("data-testid=not-found")
                return None
            header = _header(view)
            charts = _Charts()
            with ui.row().classes("w-full gap-4 items-start"):
                with ui.card().classes("flex-1 min-w-80"):
                    ui.label("Attributes").classes("text-lg font-bold")
                    attributes = _attributes(ctx, device_id)
                with ui.card().classes("flex-1 min-w-80"):
                    ui.label("Send a command").classes("text-lg font-bold")

                    async def reload_now() -> None:
                        await refresh()

                    ui_commands.form(ctx, user, device_id, reload_now)
            with ui.card().classes("w-full"):
                ui.label("Recent commands").classes("text-lg font-bold")
                recent = ui_commands.recent_table()
            with ui.card().classes("w-full"):
                ui.label("Files").classes("text-lg font-bold")
                gallery = ui.row().classes("w-full gap-3").props("data-testid=files")
            shown_files: list[int] = [-1]

            def show(v: ui_data.DeviceView) -> None:
                d = v.device
                header["status"].set_text(d.status.upper())
                header["status"].props(f"color={STATUS_COLORS.get(d.status, 'grey')} data-status={d.status}")
                via = f" via {d.connected_via}" if d.connected_via else ""
                header["details"].set_text(f"id {d.id} · last seen {ui_data.when(d.last_seen_at)}{via} · "
                                           f"{d.messages_received} messages")
                if attributes.rows != v.attributes:
                    attributes.rows = v.attributes
                    attributes.update()
                if recent.rows != v.commands:
                    recent.rows = v.commands
                    recent.update()
                ids = [f["id"] for f in v.files]
                if ids != shown_files:
                    shown_files[:] = ids
                    _gallery(gallery, v.files)

            async def load_charts(keys: list[str]) -> None:
                charts.ensure(keys)
                window = charts.window()
                if window is None:
                    return
                start, end = window
                plan = plan_for(end - start)
                data = await run.io_bound(ui_data.telemetry, ctx, device_id, keys, start, end, plan)
                charts.show(data, (start, end), plan.step_s)

            async def refresh() -> None:
                latest = await run.io_bound(ui_data.device_view, ctx, device_id)
                if latest is not None:
                    show(latest)
                    if sorted(latest.telemetry) != list(charts.charts):
                        await load_charts(sorted(latest.telemetry))

            async def tick_charts() -> None:
                if charts.live():
                    await load_charts(list(charts.charts))

            async def on_range() -> None:
                charts.custom.set_visibility(charts.picker.value == "custom")
                await load_charts(list(charts.charts))

            show(view)
            await load_charts(sorted(view.telemetry))
            charts.picker.on_value_change(on_range)
            charts.apply.on_click(lambda: load_charts(list(charts.charts)))
            ui.timer(REFRESH_S, refresh)
            ui.timer(CHART_REFRESH_S, tick_charts)
        return None
