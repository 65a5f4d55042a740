"""The schedules page: every cron schedule with its next fire, last run and errors; pause and resume."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.rpa import schedules, ui_data, ui_ops
from controltower.rpa.ui_nav import link_slot, submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame, notify_error

REFRESH_S = 5.0
COLUMNS = [
    {"name": c, "label": label, "field": c, "align": "left"}
    for c, label in (("id", "Schedule"), ("robot", "Robot"), ("task", "Task"), ("cron", "Cron"),
                     ("timezone", "Zone"), ("next", "Next fire"), ("target", "Runs on"), ("last", "Last fire"),
                     ("last_run_id", "Last run"), ("fires", "Fires"), ("error", "Last error"),
                     ("description", "Description"))
]


def register(ctx: Context) -> None:
    @page("/robots/schedules")
    async def schedules_page(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        can_act = user.can(Role.operator)
        with frame(ctx, user, "Schedules", "/robots/schedules"):
            submenu("/robots/schedules")
            empty = ui.markdown("No schedule yet. Run a robot's task at 06:00 on weekdays on the desktops "
                                "labelled `finance`:\n\n```sh\nctower robot schedule add invoice-bot "
                                "--cron \"0 6 * * mon-fri\" --tz Europe/Berlin --on finance\n```")
            ui.label("Times are in the server's time zone; each cron is read in its own zone (Zone).").classes(
                "text-xs opacity-70")
            actions = [{"name": "actions", "label": "", "field": "id"}] if can_act else []
            table = ui.table(columns=[*COLUMNS[:2], *actions, *COLUMNS[2:]], rows=[], row_key="id",
                             pagination=50).classes("w-full").props("data-testid=schedules")
            link_slot(table, "robot", "'/robots/' + encodeURIComponent(props.row.robot)")
            table.add_slot("body-cell-next", '<q-td :props="props" :data-next="props.row.id"><q-badge '
                                             'v-if="props.row.paused" color="grey" label="paused"/>'
                                             '<span v-else>{{ props.value }}</span></q-td>')
            table.add_slot("body-cell-last_run_id", '<q-td :props="props"><a v-if="props.value" class="text-primary"'
                                                    ' :href="\'/robots/runs/\' + props.value">{{ props.value }}</a>'
                                                    '</q-td>')
            if can_act:
                table.add_slot("body-cell-actions", '<q-td :props="props" auto-width><q-btn flat dense '
                                                    'color="primary" :icon="props.row.paused ? \'play_arrow\' : '
                                                    '\'pause\'" :label="props.row.paused ? \'Resume\' : \'Pause\'" '
                                                    '@click="$parent.$emit(\'toggle\', props.row)"/></q-td>')

            async def reload() -> None:
                rows = await run.io_bound(ui_data.schedule_rows, ctx)
                empty.set_visibility(not rows)
                table.set_visibility(bool(rows))
                if rows != table.rows:
                    table.rows = rows
                    table.update()

            async def toggle(row: dict[str, object]) -> None:
                pause = not row["paused"]
                try:
                    web_session.require(ctx, Role.operator)
                    await run.io_bound(ui_ops.set_paused, ctx, int(str(row["id"])), pause)
                except (web_session.Forbidden, schedules.ScheduleNotFound) as exc:
                    notify_error(exc)
                    return
                ui.notify(f"schedule {row['id']} {'paused' if pause else 'resumed'}", type="positive")
                await reload()

            if can_act:
                table.on("toggle", lambda e: toggle(e.args))
            await reload()
            ui.timer(REFRESH_S, reload)
        return None
