"""The robot page's start-run form: version, task, target label or agent, variables, JSON input, vault secrets."""

from __future__ import annotations

from typing import Any

from nicegui import run, ui

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.rpa import ui_ops
from controltower.web import session as web_session
from controltower.web.layout import notify_error

ANY_AGENT = 0


def start_card(ctx: Context, name: str, view: dict[str, Any]) -> None:
    """Starting jumps to the new run's page; a wrong field shows its reason next to it.

    `view` is ui_data.robot_view's: the versions with their tasks, the agents and the vault's secret names.
    """
    versions, production, agents = view["versions"], view["production"], view["agents"]
    tasks_of = {v["number"]: v["tasks"] for v in versions}
    with ui.card().classes("w-full").props("data-testid=start-run"):
        ui.label("Start a run").classes("font-bold")
        with ui.row().classes("w-full gap-3 items-start"):
            version = ui.select({v["number"]: f"v{v['number']}" + (" (production)" if v["production"] else "")
                                 for v in versions},
                                value=production or versions[0]["number"], label="Version").classes("w-44")
            task = ui.select([], label="Task").classes("w-56")
            labels = ui.input("Target labels", placeholder="e.g. finance, desktop").classes("w-56")
            agent = ui.select({ANY_AGENT: "any agent with the labels",
                               **{a["id"]: f"{a['name']} ({', '.join(a['labels']) or 'no labels'})" for a in agents}},
                              value=ANY_AGENT, label="Agent").classes("w-64")
        with ui.row().classes("w-full gap-3 items-start"):
            variables = ui.textarea("Variables", placeholder="NAME=value, one per line").classes("flex-1 min-w-60")
            data = ui.textarea("JSON input", placeholder='{"invoice": 42}').classes("flex-1 min-w-60")
            secrets = ui.select(view["secrets"], multiple=True, value=[], label="Vault secrets").classes(
                "w-64").props("use-chips")
        start = ui.button("Start run", icon="play_arrow").props("data-testid=start-button")
    fields = {"version": version, "task": task, "labels": labels, "agent_id": agent, "variables": variables,
              "input": data, "secrets": secrets}

    def pick_tasks() -> None:
        names = tasks_of.get(version.value, [])
        task.set_options(names, value=task.value if task.value in names else (names[0] if names else None))

    async def submit() -> None:
        for field in fields.values():
            field.error = None
        form = {"robot": name, "version": version.value, "task": task.value, "labels": labels.value,
                "agent_id": agent.value or None, "variables": variables.value, "input": data.value,
                "secrets": secrets.value or []}
        try:
            user = web_session.require(ctx, Role.operator)
            run_id = await run.io_bound(ui_ops.start_run, ctx, user, form)
        except ui_ops.FormError as exc:
            target = fields.get(exc.field)
            if target is None:
                notify_error(exc)
            else:
                target.error = exc.reason
            return
        except web_session.Forbidden as exc:
            notify_error(exc)
            return
        ui.navigate.to(f"/robots/runs/{run_id}")

    version.on_value_change(pick_tasks)
    start.on_click(submit)
    pick_tasks()
