"""Work-item queue pages: every queue with its items per status; a queue's items, with retry for operators."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core import lifecycle
from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.rpa import ui_data, ui_ops, workitems
from controltower.rpa.ui_nav import RUN_COLORS, link_slot, status_slot, submenu
from controltower.rpa.workitems_schemas import ITEM_STATUSES, QueuePublic
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame, notify_error

REFRESH_S = 3.0
ALL = ""
QUEUE_COLUMNS = [
    {"name": "name", "label": "Queue", "field": "name", "align": "left", "sortable": True},
    {"name": "robot", "label": "Robot", "field": "robot", "align": "left"},
    {"name": "task", "label": "Task", "field": "task", "align": "left"},
    {"name": "target", "label": "Runs on", "field": "target", "align": "left"},
    *({"name": s, "label": s.replace("_", " "), "field": s, "align": "right"} for s in ITEM_STATUSES),
]
ITEM_COLUMNS = [
    {"name": c, "label": label, "field": c, "align": "left"}
    for c, label in (("id", "Item"), ("status", "Status"), ("attempts", "Attempts"), ("payload", "Payload"),
                     ("files", "Files"), ("run_id", "Last run"), ("error", "Last error"), ("output", "Output"),
                     ("updated", "Updated"))
]


def _target(queue: QueuePublic) -> str:
    if queue.labels:
        return ", ".join(queue.labels)
    return f"agent {queue.agent_id}" if queue.agent_id is not None else "any agent"


def _list_page(ctx: Context) -> None:
    @page("/robots/queues")
    async def queues_page(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, "Queues", "/robots/queues"):
            submenu("/robots/queues")
            empty = ui.markdown("No work-item queue yet. Create one that feeds a robot's task, then push items:\n\n"
                                "```sh\nctower queue add invoices --robot invoice-bot --on finance\n"
                                "ctower queue push invoices invoice.json\n```")
            table = ui.table(columns=QUEUE_COLUMNS, rows=[], row_key="name", pagination=50).classes("w-full")
            table.props("data-testid=queues")
            link_slot(table, "name", "'/robots/queues/' + encodeURIComponent(props.row.name)")
            link_slot(table, "robot", "'/robots/' + encodeURIComponent(props.row.robot)")

            async def reload() -> None:
                found = await run.io_bound(ui_data.queues, ctx)
                empty.set_visibility(not found)
                table.set_visibility(bool(found))
                rows = [{"name": q.name, "robot": q.robot, "task": q.task or "(first)", "target": _target(q),
                         **q.counts} for q in found]
                if rows != table.rows:
                    table.rows = rows
                    table.update()

            await reload()
            ui.timer(REFRESH_S, reload)
        return None


def _queue_page(ctx: Context) -> None:
    @page("/robots/queues/{name}")
    async def queue_page(request: Request, name: str, status: str = ALL) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        can_act = user.can(Role.operator)
        with frame(ctx, user, f"Queue {name}", "/robots/queues"):
            submenu("/robots/queues")
            first = await run.io_bound(ui_data.queue_view, ctx, name, None)
            if first is None:
                ui.label(f"No queue named {name!r}.").classes("text-lg")
                return None
            queue: QueuePublic = first["queue"]
            with ui.row().classes("items-center gap-3"):
                ui.label(name).classes("text-2xl font-bold")
                ui.link(f"feeds {queue.robot}", f"/robots/{queue.robot}")
            ui.label(f"task {queue.task or '(first)'} · runs on {_target(queue)} · at most {queue.max_attempts} "
                     f"attempt(s) per item, backoff {queue.retry_backoff_s:g} s (doubling)"
                     + (f" · at most {queue.concurrency} at once" if queue.concurrency else "")).classes("text-sm")
            counts = ui.row().classes("gap-2")
            status_in = ui.select({ALL: "every status", **{s: s for s in ITEM_STATUSES}},
                                  value=status if status in ITEM_STATUSES else ALL, label="Status").classes("w-44")
            actions = [{"name": "actions", "label": "", "field": "id"}] if can_act else []
            columns = [*ITEM_COLUMNS[:2], *actions, *ITEM_COLUMNS[2:]]  # Retry stays in sight on narrow screens
            table = ui.table(columns=columns, rows=[], row_key="id", pagination=50).classes("w-full").props(
                "data-testid=items")
            status_slot(table)
            table.add_slot("body-cell-run_id", '<q-td :props="props"><a v-if="props.value" class="text-primary" '
                                               ':href="\'/robots/runs/\' + props.value">{{ props.value }}</a></q-td>')
            if can_act:
                table.add_slot("body-cell-actions", '<q-td :props="props" auto-width><q-btn '
                                                    'v-if="[\'dead\', \'failed\'].includes(props.row.status)" flat '
                                                    'dense color="primary" icon="replay" label="Retry" '
                                                    '@click="$parent.$emit(\'retry\', props.row.id)"/></q-td>')

            def show(view: dict[str, Any]) -> None:
                counts.clear()
                with counts:
                    for state in ITEM_STATUSES:
                        ui.badge(f"{view['queue'].counts.get(state, 0)} {state.replace('_', ' ')}",
                                 color=RUN_COLORS.get(state, "grey")).props(f"data-count={state}")
                if view["items"] != table.rows:
                    table.rows = view["items"]
                    table.update()

            async def reload() -> None:
                view = await run.io_bound(ui_data.queue_view, ctx, name, status_in.value or None)
                if view is not None:
                    show(view)

            async def retry(item_id: int) -> None:
                try:
                    web_session.require(ctx, Role.operator)
                    await run.io_bound(ui_ops.retry_item, ctx, name, item_id)
                except (web_session.Forbidden, workitems.QueueNotFound, workitems.ItemNotFound,
                        lifecycle.IllegalTransition) as exc:
                    notify_error(exc)
                    return
                ui.notify(f"item {item_id} is pending again", type="positive")
                await reload()

            if can_act:
                table.on("retry", lambda e: retry(int(e.args)))
            status_in.on_value_change(reload)
            await reload()
            ui.timer(REFRESH_S, reload)
        return None


def register(ctx: Context) -> None:
    _list_page(ctx)
    _queue_page(ctx)
