"""The dead-letter page: messages ingestion refused, with the reason, device, topic, time and a payload preview."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.context import Context
from controltower.iot import deadletters, ui_data
from controltower.iot.ui_nav import submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame

REFRESH_S = 5.0
COLUMNS = [
    {"name": "ts", "label": "When", "field": "ts", "align": "left"},
    {"name": "kind", "label": "Kind", "field": "kind", "align": "left"},
    {"name": "reason", "label": "Reason", "field": "reason", "align": "left",
     "style": "white-space: normal; min-width: 16rem"},
    {"name": "device", "label": "Device", "field": "device", "align": "left"},
    {"name": "topic", "label": "Topic / path", "field": "topic", "align": "left"},
    {"name": "size", "label": "Size", "field": "size", "align": "right"},
    {"name": "payload", "label": "Payload", "field": "payload", "align": "left",
     "classes": "font-mono text-xs", "style": "white-space: pre-wrap; word-break: break-all; max-width: 28rem"},
]


def register(ctx: Context) -> None:
    @page("/devices/dead-letters")
    async def dead_letters_page(request: Request, device: str | None = None) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Dead letters", "/devices/dead-letters"):
            submenu("/devices/dead-letters")
            ui.label("Messages ingestion refused, newest first (the first 4 KB of each payload is kept).").classes(
                "text-sm opacity-70")
            counts = ui.row().classes("items-center gap-2").props("data-testid=dead-letter-counts")
            if device:
                with ui.row().classes("items-center gap-2"):
                    ui.label(f"Only device {device}").classes("font-bold").props("data-testid=device-filter")
                    ui.link("all devices", "/devices/dead-letters")
            kind = ui.select({"": "every kind", **{k: k for k in deadletters.KINDS}}, value="",
                             label="Kind").classes("w-48")
            table = ui.table(columns=COLUMNS, rows=[], row_key="id", pagination=50).classes("w-full").props(
                "dense")
            table.add_slot("body-cell-device", '<q-td :props="props"><a v-if="props.value" :href="\'/devices/\' + '
                                               'encodeURIComponent(props.value)" class="text-primary">'
                                               '{{ props.value }}</a></q-td>')
            shown: dict[str, int] = {}

            async def refresh() -> None:
                view = await run.io_bound(ui_data.dead_letters, ctx, kind.value or None, device or None)
                if view.counts != shown:
                    shown.clear()
                    shown.update(view.counts)
                    counts.clear()
                    with counts:
                        ui.label(f"{sum(view.counts.values())} in all (every device)").classes("font-bold")
                        for name, n in sorted(view.counts.items(), key=lambda kv: -kv[1]):
                            ui.badge(f"{name}: {n}", color="negative" if n else "grey").props(f"data-kind={name}")
                if table.rows != view.rows:
                    table.rows = view.rows
                    table.update()

            kind.on_value_change(refresh)
            await refresh()
            ui.timer(REFRESH_S, refresh)
        return None
