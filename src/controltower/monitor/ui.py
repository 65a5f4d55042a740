"""Monitor's dashboard pages: the fleet overview here; hosts, checks and alerts in ui_host / ui_checks / ui_alerts."""

from __future__ import annotations

from html import escape

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.context import Context
from controltower.monitor import ui_alerts, ui_checks, ui_data, ui_host
from controltower.monitor.ui_nav import STATUS_COLORS, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.charts import percent, rate, sparkline
from controltower.web.layout import frame

REFRESH_S = 5.0


_METRICS = (("cpu", "CPU"), ("memory", "Memory"), ("disk", "Disk"), ("net", "Network"))


class _Card:
    """One host's card: a single HTML element (its name, status and metric rows), replaced when it changes. A
    fleet page of 500 cards builds 1,000 elements, where it built 10,000 when every row, label and sparkline
    was an element of its own (docs/benchmarks.md: load 3.6 s -> 1.55 s)."""

    def __init__(self, name: str) -> None:
        self.name = name
        with ui.card().classes("w-72 max-sm:w-full").props(f"data-host={name}"):
            self.body = ui.html("", sanitize=False).classes("w-full")  # filled by show(), in the same refresh

    def show(self, fleet: ui_data.FleetView, host: ui_data.HostPublic) -> None:
        values = {"cpu": percent(host.cpu_percent), "memory": percent(host.memory_percent),
                  "disk": percent(host.disk_percent), "net": rate(fleet.net_now.get(host.name))}
        body = self._html(host.status, values, fleet.sparks.get(host.name, {}))
        if self.body.content != body:
            self.body.set_content(body)

    def _html(self, status: str, values: dict[str, str], sparks: dict[str, list[float]]) -> str:
        name = escape(self.name)
        color = STATUS_COLORS.get(status, "grey")
        return (
            '<div class="w-full flex items-center justify-between no-wrap pb-2">'
            f'<a class="nicegui-link font-bold text-base truncate" href="/monitor/hosts/{name}">{name}</a>'
            f'<span class="q-badge bg-{color} text-white">{escape(status.upper())}</span></div>'
            + _metric_rows(values, sparks)
        )


def _metric_rows(values: dict[str, str], sparks: dict[str, list[float]]) -> str:
    """CPU, memory, disk and network: title, sparkline and figure (`data-metric=<key>`) per row."""
    return "".join(
        '<div class="w-full flex items-center justify-between no-wrap gap-2 py-0.5">'
        f'<span class="text-xs w-14">{title}</span>'
        f'<span class="text-primary">{sparkline(sparks.get(key, []), None if key == "net" else 100.0)}</span>'
        f'<span class="text-xs w-20 text-right" data-metric="{key}">{escape(values.get(key, "-"))}</span></div>'
        for key, title in _METRICS
    )


def _fleet_page(ctx: Context) -> None:
    @page("/monitor")
    async def fleet(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Fleet", "/monitor"):
            submenu("/monitor")
            alerts_box = ui.column().classes("w-full gap-2")
            with ui.row().classes("items-center gap-4"):
                ui.label("Checks").classes("font-bold")
                counts = {s: ui.badge("", color=STATUS_COLORS[s]).props(f"data-checks={s}") for s in ("up", "down",
                                                                                                      "unknown")}
                ui.link("all checks", "/monitor/checks")
            ui.label("Hosts").classes("text-xl font-bold")
            grid = ui.row().classes("w-full gap-4")
            cards: dict[str, _Card] = {}

            async def refresh() -> None:
                view = await run.io_bound(ui_data.fleet, ctx)
                for state, badge in counts.items():
                    badge.set_text(f"{view.check_states.get(state, 0)} {state}")
                alerts_box.clear()
                with alerts_box:
                    for row in view.firing:
                        with ui.row().classes("w-full items-center gap-2 rounded p-2 bg-negative text-white"):
                            ui.icon("warning")
                            ui.label(f"{row['rule']} ({row['severity']})").classes("font-bold")
                            ui.label(row["summary"] or row["labels"]).classes("text-sm")
                            ui.link("alerts", "/monitor/alerts").classes("text-white")
                names = [h.name for h in view.hosts]
                if list(cards) != names:
                    grid.clear()
                    cards.clear()
                    with grid:
                        if not names:
                            ui.label("No host reports yet: start `ctower agent` on a machine, or `ctower up` "
                                     "without --no-agent.")
                        for name in names:
                            cards[name] = _Card(name)
                for host in view.hosts:
                    cards[host.name].show(view, host)

            await refresh()
            ui.timer(REFRESH_S, refresh)
        return None


def register(ctx: Context) -> None:
    """Every monitor page; called from monitor's setup(ctx)."""
    _fleet_page(ctx)
    ui_host.register(ctx)
    ui_checks.register(ctx)
    ui_alerts.register(ctx)
