"""Alerts page: firing, pending and resolved alerts with acknowledge and silence; silences; the rule list and editor."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui
from sqlalchemy.exc import IntegrityError

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.monitor import alerts, ui_data
from controltower.monitor.rules import RuleError, parse_duration
from controltower.monitor.ui_nav import submenu
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame, notify_error

REFRESH_S = 5.0
SILENCE_FOR = {"1h": "1 hour", "4h": "4 hours", "1d": "1 day", "7d": "7 days"}


def _ack(ctx: Context, alert_id: int, by: str) -> None:
    with ctx.db.session() as session:
        alerts.ack_alert(session, ctx.events, alert_id, by)


def _silence(ctx: Context, rule: str, labels: dict[str, str], duration: str, reason: str, by: str) -> None:
    ends_at = utcnow() + dt.timedelta(seconds=parse_duration(duration, "duration"))
    with ctx.db.session() as session:
        alerts.create_silence(session, ends_at=ends_at, rule_name=rule, labels=labels, reason=reason, created_by=by)


def _expire(ctx: Context, silence_id: int) -> None:
    with ctx.db.session() as session:
        alerts.expire_silence(session, silence_id)


def _save_rule(ctx: Context, original: str | None, values: dict[str, Any]) -> None:
    try:
        with ctx.db.session() as session:
            if original is None:
                alerts.create_rule(session, **values)
            else:
                changes = {k: v for k, v in values.items() if k != "name"}
                alerts.update_rule(session, ctx.events, original, changes, server_name=ctx.settings.name)
    except IntegrityError:
        raise alerts.Conflict(f"an alert rule named {values['name']!r} already exists") from None


def _delete_rule(ctx: Context, name: str) -> None:
    with ctx.db.session() as session:
        alerts.delete_rule(session, name)


def _alert_table(title: str, state: str, can_act: bool) -> ui.table:
    columns = [
        {"name": "rule", "label": "Rule", "field": "rule", "align": "left"},
        {"name": "severity", "label": "Severity", "field": "severity", "align": "left"},
        {"name": "labels", "label": "Labels", "field": "labels", "align": "left"},
        {"name": "value", "label": "Value", "field": "value", "align": "right"},
        {"name": "summary", "label": "Summary", "field": "summary", "align": "left"},
        {"name": "since", "label": "Since", "field": "since", "align": "left"},
    ]
    if state == "resolved":
        columns.append({"name": "resolved", "label": "Resolved", "field": "resolved", "align": "left"})
    columns.append({"name": "acked_by", "label": "Acknowledged by", "field": "acked_by", "align": "left"})
    if can_act and state != "resolved":
        columns.append({"name": "actions", "label": "", "field": "id"})
    ui.label(title).classes("text-lg font-bold")
    table = ui.table(columns=columns, rows=[], row_key="id", pagination=20).classes("w-full").props(
        f"dense data-alerts={state} no-data-label='None'"
    )
    table.add_slot("body-cell-severity", '<q-td :props="props"><q-badge :label="props.value" '
                                         ':color="{critical: \'negative\', warning: \'warning\'}[props.value] '
                                         '|| \'info\'"/></q-td>')
    if can_act and state != "resolved":
        table.add_slot("body-cell-actions", '<q-td :props="props" auto-width>'
                                            '<q-btn v-if="!props.row.acked_by" dense flat color="primary" '
                                            'label="Acknowledge" @click="$parent.$emit(\'ack\', props.row)"/>'
                                            '<q-btn dense flat label="Silence" '
                                            '@click="$parent.$emit(\'silence\', props.row)"/></q-td>')
    return table


def _rule_dialog(ctx: Context, on_saved: Any) -> Any:
    state: dict[str, Any] = {"original": None}
    with ui.dialog() as dialog, ui.card().classes("w-[34rem] max-w-full"):
        title = ui.label().classes("text-lg font-bold")
        fields: dict[str, Any] = {
            "name": ui.input("Name").classes("w-full"),
            "expr": ui.input("Condition", placeholder="host.cpu.percent{host=web1} > 90 for 5m").classes("w-full"),
            "severity": ui.select(["info", "warning", "critical"], value="warning", label="Severity").classes("w-full"),
            "description": ui.input("Description").classes("w-full"),
        }
        enabled = ui.switch("Enabled", value=True)
        with ui.row().classes("w-full justify-end"):
            ui.button("Cancel", on_click=dialog.close).props("flat")
            save_button = ui.button("Save rule")

    def open_dialog(row: dict[str, Any] | None) -> None:
        state["original"] = row["name"] if row else None
        for field in fields.values():
            field.error = None
        title.set_text(f"Edit rule {row['name']}" if row else "Add an alert rule")
        fields["name"].set_value(row["name"] if row else "")
        fields["name"].set_enabled(row is None)
        fields["expr"].set_value(row["expr"] if row else "")
        fields["severity"].set_value(row["severity"] if row else "warning")
        fields["description"].set_value(row["description"] if row else "")
        enabled.set_value(row["enabled"] if row else True)
        dialog.open()

    async def save() -> None:
        for field in fields.values():
            field.error = None
        values = {
            "name": (fields["name"].value or "").strip(),
            "expr": (fields["expr"].value or "").strip(),
            "severity": fields["severity"].value,
            "description": fields["description"].value or "",
            "enabled": bool(enabled.value),
        }
        try:
            web_session.require(ctx, Role.operator)
            await run.io_bound(_save_rule, ctx, state["original"], values)
        except RuleError as exc:
            field = exc.field if exc.field in fields else "expr"
            fields[field].error = exc.message
            return
        except alerts.Conflict as exc:
            fields["name"].error = str(exc)
            return
        except (alerts.NotFound, web_session.Forbidden) as exc:
            notify_error(exc)
            return
        dialog.close()
        ui.notify(f"rule {values['name'] or state['original']} saved", type="positive")
        await on_saved()

    save_button.on_click(save)
    return open_dialog


def register(ctx: Context) -> None:
    @page("/monitor/alerts")
    async def alerts_page(request: Request) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        can_act = user.can(Role.operator)
        with frame(ctx, user, "Alerts", "/monitor/alerts"):
            submenu("/monitor/alerts")
            tables = {
                "firing": _alert_table("Firing", "firing", can_act),
                "pending": _alert_table("Pending", "pending", can_act),
                "resolved": _alert_table("Resolved", "resolved", can_act),
            }
            ui.label("Silences").classes("text-lg font-bold")
            silences = ui.table(columns=[{"name": c, "label": c.capitalize(), "field": c, "align": "left"}
                                         for c in ("rule", "labels", "ends", "by", "reason")]
                                + ([{"name": "actions", "label": "", "field": "id"}] if can_act else []),
                                rows=[], row_key="id").classes("w-full").props("dense no-data-label='None'")
            ui.label("Rules").classes("text-lg font-bold")
            rules = ui.table(columns=[
                {"name": "name", "label": "Name", "field": "name", "align": "left", "sortable": True},
                {"name": "expr", "label": "Condition", "field": "expr", "align": "left"},
                {"name": "severity", "label": "Severity", "field": "severity", "align": "left"},
                {"name": "enabled", "label": "Enabled", "field": "enabled", "align": "left"},
                {"name": "firing", "label": "Firing", "field": "firing", "align": "right"},
                {"name": "pending", "label": "Pending", "field": "pending", "align": "right"},
                *([{"name": "actions", "label": "", "field": "name"}] if can_act else []),
            ], rows=[], row_key="name", pagination=50).classes("w-full").props("dense data-testid=rules")

            async def reload() -> None:
                data = await run.io_bound(ui_data.alert_lists, ctx)
                for state, table in tables.items():
                    table.rows = data[state]
                    table.update()
                silences.rows = data["silences"]
                silences.update()
                rules.rows = data["rules"]
                rules.update()

            if can_act:
                open_rule = _rule_dialog(ctx, reload)
                ui.button("Add rule", icon="add", on_click=lambda: open_rule(None)).props("data-testid=add-rule")
                rules.add_slot("body-cell-actions", '<q-td :props="props" auto-width>'
                                                    '<q-btn flat dense icon="edit" aria-label="Edit rule" '
                                                    '@click="$parent.$emit(\'edit\', props.row)"/>'
                                                    '<q-btn v-if="!props.row.builtin" flat dense icon="delete" '
                                                    'color="negative" aria-label="Delete rule" '
                                                    '@click="$parent.$emit(\'remove\', props.row)"/></q-td>')
                silences.add_slot("body-cell-actions", '<q-td :props="props" auto-width><q-btn flat dense '
                                                       'label="End" @click="$parent.$emit(\'expire\', props.row)"/>'
                                                       '</q-td>')

                async def ack(row: dict[str, Any]) -> None:
                    try:
                        who = web_session.require(ctx, Role.operator)
                        await run.io_bound(_ack, ctx, int(row["id"]), who.name)
                    except (web_session.Forbidden, alerts.NotFound, alerts.Conflict) as exc:
                        notify_error(exc)
                        return
                    ui.notify(f"alert {row['rule']} acknowledged", type="positive")
                    await reload()

                async def silence(row: dict[str, Any]) -> None:
                    with ui.dialog() as dialog, ui.card().classes("w-96 max-w-full"):
                        ui.label(f"Silence {row['rule']} for {row['labels'] or 'all series'}").classes("font-bold")
                        duration = ui.select(SILENCE_FOR, value="1h", label="For").classes("w-full")
                        reason = ui.input("Reason").classes("w-full")
                        with ui.row():
                            ui.button("Cancel", on_click=lambda: dialog.submit(False)).props("flat")
                            ui.button("Silence", on_click=lambda: dialog.submit(True))
                    if not await dialog:
                        return
                    try:
                        who = web_session.require(ctx, Role.operator)
                        await run.io_bound(_silence, ctx, row["rule"], row["label_map"], duration.value,
                                           reason.value or "", who.name)
                    except (web_session.Forbidden, RuleError) as exc:
                        notify_error(exc)
                        return
                    ui.notify(f"{row['rule']} silenced for {SILENCE_FOR[duration.value]}", type="positive")
                    await reload()

                async def expire(row: dict[str, Any]) -> None:
                    try:
                        web_session.require(ctx, Role.operator)
                        await run.io_bound(_expire, ctx, int(row["id"]))
                    except (web_session.Forbidden, alerts.NotFound) as exc:
                        notify_error(exc)
                        return
                    await reload()

                async def remove_rule(row: dict[str, Any]) -> None:
                    try:
                        web_session.require(ctx, Role.operator)
                        await run.io_bound(_delete_rule, ctx, row["name"])
                    except (web_session.Forbidden, alerts.NotFound, alerts.Conflict) as exc:
                        notify_error(exc)
                        return
                    ui.notify(f"rule {row['name']} deleted")
                    await reload()

                for state in ("firing", "pending"):
                    tables[state].on("ack", lambda e: ack(e.args))
                    tables[state].on("silence", lambda e: silence(e.args))
                silences.on("expire", lambda e: expire(e.args))
                rules.on("edit", lambda e: open_rule(e.args))
                rules.on("remove", lambda e: remove_rule(e.args))
            await reload()
            ui.timer(REFRESH_S, reload)
        return None


