"""What monitor's pages share: the sub-navigation and the colours of states."""

from __future__ import annotations

from nicegui import ui

STATUS_COLORS = {"up": "positive", "down": "negative", "unknown": "grey", "disabled": "grey"}
SEVERITY_COLORS = {"critical": "negative", "warning": "warning", "info": "info"}


def submenu(active: str) -> None:
    with ui.row().classes("gap-2"):
        for label, path in (("Fleet", "/monitor"), ("Checks", "/monitor/checks"), ("Alerts", "/monitor/alerts")):
            ui.link(label, path).classes(
                "px-3 py-1 rounded no-underline " + ("bg-primary text-white" if path == active else "border")
            )
