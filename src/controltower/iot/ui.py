"""IoT's dashboard pages: the devices list and the file route here; others in ui_device, ui_deadletters."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import FileResponse, Response
from nicegui import app, run, ui

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.iot import ui_broadcast, ui_data, ui_deadletters, ui_device
from controltower.iot.ui_nav import STATUS_COLORS, badge_slot, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame

REFRESH_S = 5.0
COLUMNS = [
    {"name": "name", "label": "Name", "field": "name", "align": "left", "sortable": True},
    {"name": "status", "label": "Status", "field": "status", "align": "left", "sortable": True},
    {"name": "last_seen", "label": "Last seen", "field": "last_seen", "align": "left", "sortable": True},
    {"name": "type", "label": "Type", "field": "type", "align": "left", "sortable": True},
    {"name": "labels", "label": "Labels", "field": "labels", "align": "left"},
    {"name": "latest", "label": "Latest values", "field": "latest", "align": "left"},
]
STATUSES = {"": "any status", "online": "online", "offline": "offline", "unknown": "unknown"}
# Served as the device sent it; a file that is not a plain raster image never renders in the dashboard's origin.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox; default-src 'none'",
                "Cache-Control": "private, max-age=3600"}


def _empty_state() -> None:
    with ui.card().classes("w-full max-w-2xl").props("data-testid=no-devices"):
        ui.label("No devices yet").classes("text-lg font-bold")
        ui.markdown(
            "Register one and flash its id and token onto it:\n\n"
            "```sh\nctower devices add NAME --json\n```\n\n"
            "or try the pages with simulated sensors and cameras:\n\n"
            "```sh\nctower device simulate --count 10\n```"
        )


def _list_page(ctx: Context) -> None:
    @page("/devices")
    async def devices_page(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Devices", "/devices"):
            submenu("/devices")
            with ui.row().classes("w-full items-end gap-3"):
                search = ui.input("Search", placeholder="name, id, type or label").props(
                    "clearable debounce=300").classes("w-64")
                label = ui.select({"": "any label"}, value="", label="Label").classes("w-48")
                status = ui.select(STATUSES, value="", label="Status").classes("w-40")
                counter = ui.label().classes("text-sm opacity-70").props("data-testid=device-count")
                known_labels: list[str] = []
                if user.can(Role.operator):
                    ui.space()
                    ui_broadcast.button(ctx, lambda: known_labels)
            empty = ui.column().classes("w-full")
            table = ui.table(columns=COLUMNS, rows=[], row_key="id", pagination=50).classes("w-full")
            table.add_slot("body-cell-name", '<q-td :props="props"><a :href="\'/devices/\' + '
                                             'encodeURIComponent(props.row.id)" class="text-primary">'
                                             '{{ props.value }}</a></q-td>')
            table.add_slot("body-cell-status", badge_slot("status", STATUS_COLORS))

            async def refresh() -> None:
                view = await run.io_bound(ui_data.device_list, ctx, label.value or None, status.value or None,
                                          search.value or "")
                known_labels[:] = view.labels
                options = {"": "any label", **{lab: lab for lab in view.labels}}
                if label.options != options:
                    label.set_options(options, value=label.value if label.value in options else "")
                if table.rows != view.rows:
                    table.rows = view.rows
                    table.update()
                counter.set_text(f"{len(view.rows)} of {view.total} devices")
                table.set_visibility(view.total > 0)
                empty.clear()
                if view.total == 0:
                    with empty:
                        _empty_state()

            for control in (search, label, status):
                control.on_value_change(refresh)
            await refresh()
            ui.timer(REFRESH_S, refresh)
        return None


def _file_route(ctx: Context) -> None:
    """Device files for the dashboard, behind the web session (the API route wants a bearer token)."""
    path = "/devices/files/{file_id}"
    app.remove_route(path)  # one route per process even when tests build several apps

    @app.get(path, include_in_schema=False)
    async def device_file(request: Request, file_id: int) -> Response:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        found = await run.io_bound(ui_data.stored_file, ctx, file_id)
        if found is None:
            return Response(f"no file with id {file_id}", status_code=404, media_type="text/plain")
        inline = ui_data.is_image(found.content_type)
        return FileResponse(found.path, media_type=found.content_type,
                            filename=found.filename, content_disposition_type="inline" if inline else "attachment",
                            headers=FILE_HEADERS)


def register(ctx: Context) -> None:
    """Every IoT page; called from iot's setup(ctx). Dead letters before /devices/{id}, which would match it."""
    _list_page(ctx)
    _file_route(ctx)
    ui_deadletters.register(ctx)
    ui_device.register(ctx)
