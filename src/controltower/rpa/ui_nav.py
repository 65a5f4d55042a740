"""What the Robots pages share: the sub-navigation, the colours of run and item states and how times read."""

from __future__ import annotations

import datetime as dt

from nicegui import ui

RUN_COLORS = {"queued": "grey", "running": "info", "passed": "positive", "failed": "negative",
              "timed_out": "warning", "error": "negative", "lost": "warning", "cancelled": "grey",
              "pending": "grey", "in_progress": "info", "done": "positive", "dead": "negative"}
# Quasar's badge colour per status, for table cells rendered in the browser.
RUN_COLORS_JS = "{" + ", ".join(f"{k}: '{v}'" for k, v in RUN_COLORS.items()) + "}"


def submenu(active: str) -> None:
    with ui.row().classes("gap-2"):
        for label, path in (("Robots", "/robots"), ("Runs", "/robots/runs"), ("Schedules", "/robots/schedules"),
                            ("Queues", "/robots/queues"), ("Vault", "/robots/vault")):
            ui.link(label, path).classes(
                "px-3 py-1 rounded no-underline " + ("bg-primary text-white" if path == active else "border")
            )


def when(ts: dt.datetime | None) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def status_slot(table: ui.table, column: str = "status") -> None:
    """Show a table's status column as a coloured badge carrying `data-status`."""
    table.add_slot(f"body-cell-{column}", '<q-td :props="props"><q-badge v-if="props.value" '
                                          f':color="{RUN_COLORS_JS}[props.value] || \'grey\'" :label="props.value" '
                                          ':data-status="props.value"/></q-td>')


def link_slot(table: ui.table, column: str, href: str) -> None:
    """Make a table column a link; `href` is a JS expression over `props.row`."""
    table.add_slot(f"body-cell-{column}", f'<q-td :props="props"><a :href="{href}" class="text-primary">'
                                          '{{ props.value }}</a></q-td>')
