"""A run's page: status, timings, Robot Framework statistics, the live log, log.html, artifacts and cancel."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from nicegui import run, ui

from controltower.core.auth import Role
from controltower.core.context import Context
from controltower.rpa import runs, ui_data, ui_ops
from controltower.rpa.schemas import FINISHED, RunPublic
from controltower.rpa.ui_files import file_url
from controltower.rpa.ui_nav import RUN_COLORS, seconds, submenu, when
from controltower.web import session as web_session
from controltower.web.areas import page
from controltower.web.layout import frame, notify_error

POLL_S = 1.0
LOG_LINES = 10_000


def _facts(view: RunPublic, agent: str) -> list[tuple[str, str]]:
    env = ""
    if view.env_build_s is not None:
        env = f"built in {seconds(view.env_build_s)}" if view.env_built else "reused (cached)"
    return [("Robot", f"{view.robot} v{view.version}"), ("Task", view.task),
            ("Target", ", ".join(view.labels) or (f"agent {view.target_agent_id}" if view.target_agent_id
                                                  else "any agent")),
            ("Agent", agent), ("Attempts", str(view.attempts)),
            ("Queued", when(view.created_at)), ("Started", when(view.started_at)),
            ("Finished", when(view.finished_at)), ("Environment", env), ("Duration", seconds(view.duration_s)),
            ("Exit code", "" if view.exit_code is None else str(view.exit_code)), ("Started by", view.created_by)]


def _stats(box: ui.element, stats: dict[str, Any] | None) -> None:
    box.clear()
    if not stats:
        return
    with box:
        with ui.row().classes("gap-2 items-center").props("data-testid=rf-stats"):
            ui.label("Robot Framework").classes("font-bold")
            for key, color in (("total", "primary"), ("passed", "positive"), ("failed", "negative"),
                               ("skipped", "grey")):
                ui.badge(f"{stats.get(key, 0)} {key}", color=color).props(f"data-stat={key}")
        for failure in stats.get("failures") or []:
            ui.label(f"{failure.get('task')}: {failure.get('message')}").classes("text-negative text-sm")
        for error in stats.get("errors") or []:
            ui.label(error).classes("text-negative text-sm")


def _data(box: ui.element, view: RunPublic) -> None:
    """What the run was given (variables, JSON input, input files) and what it returned (output.json)."""
    box.clear()
    given = [("Variables", "\n".join(f"{k}={v}" for k, v in view.variables.items())),
             ("Input", "" if view.input is None else json.dumps(view.input, indent=2, ensure_ascii=False)),
             ("Input files", "\n".join(f.name for f in view.input_files)),
             ("Output", "" if view.output is None else json.dumps(view.output, indent=2, ensure_ascii=False))]
    shown = [(title, text) for title, text in given if text]
    if not shown:
        return
    with box, ui.card().classes("w-full"), ui.row().classes("w-full gap-4 items-start"):
        for title, text in shown:
            with ui.column().classes("flex-1 min-w-60 gap-1").props(f"data-run-data={title.lower().replace(' ', '-')}"):
                ui.label(title).classes("font-bold")
                ui.label(text).classes("font-mono text-xs whitespace-pre-wrap break-all")


def _files(box: ui.element, run_id: int, files: dict[str, dict[str, Any]]) -> None:
    box.clear()
    with box:
        artifacts = sorted(name for name in files if name.startswith("artifacts/"))
        with ui.card().classes("w-full"):
            ui.label("Artifacts").classes("font-bold")
            if not artifacts:
                ui.label("None uploaded (yet).").classes("text-sm opacity-70")
            for name in artifacts:
                with ui.row().classes("items-center gap-2"):
                    ui.link(name.removeprefix("artifacts/"), file_url(run_id, name)).props(
                        f"download data-artifact={name}")
                    ui.label(f"{files[name].get('size', 0)} bytes").classes("text-xs opacity-70")
            others = [n for n in ("report.html", "output.xml") if n in files]
            if others:
                with ui.row().classes("gap-3"):
                    for name in others:
                        ui.link(name, file_url(run_id, name), new_tab=True)
        if "log.html" in files:
            with ui.card().classes("w-full"):
                with ui.row().classes("items-center gap-3"):
                    ui.label("Robot Framework log").classes("font-bold")
                    ui.link("open in a new tab", file_url(run_id, "log.html"), new_tab=True).props(
                        "data-testid=rf-log-tab")
                ui.element("iframe").props(f'src="{file_url(run_id, "log.html")}" title="Robot Framework log" '
                                           'data-testid=rf-log').classes("w-full h-[70vh] border-0")


def register(ctx: Context) -> None:
    @page("/robots/runs/{run_id}")
    async def run_page(request: Request, run_id: int) -> Response | None:
        user = web_session.page_user(ctx, request)
        if isinstance(user, Response):
            return user
        with frame(ctx, user, f"Run {run_id}", "/robots/runs"):
            submenu("/robots/runs")
            found = await run.io_bound(ui_data.run_view, ctx, run_id, 0)
            if found is None:
                ui.label(f"Run {run_id} not found.").classes("text-lg")
                return None
            first, agent, lines, seq = found
            with ui.row().classes("items-center gap-3"):
                ui.label(f"Run {run_id}").classes("text-2xl font-bold")
                status = ui.badge("").classes("text-base").props("data-testid=run-status")
                ui.link(first.robot, f"/robots/{first.robot}")
                cancel_button = None
                if user.can(Role.operator):
                    cancel_button = ui.button("Cancel run", icon="cancel", color="negative").props(
                        "data-testid=cancel-run")
            message = ui.label().classes("text-sm whitespace-pre-wrap")
            with ui.row().classes("w-full gap-4 items-start"):
                with ui.card().classes("min-w-72"):
                    facts = ui.column().classes("gap-0")
                with ui.column().classes("flex-1 min-w-72 gap-2"):
                    stats = ui.column().classes("gap-1")
                    ui.label("Log").classes("font-bold")
                    log = ui.log(max_lines=LOG_LINES).classes("w-full h-96 text-xs").props("data-testid=run-log")
            data_box = ui.column().classes("w-full")
            files_box = ui.column().classes("w-full gap-4")
            state: dict[str, Any] = {"seq": seq, "files": None, "status": None, "view": None}

            def show(view: RunPublic, agent: str, new_lines: list[str]) -> None:
                for line in new_lines:
                    log.push(line)
                if view.status != state["status"]:
                    state["status"] = view.status
                    status.set_text(view.status.upper())
                    status.props(f"color={RUN_COLORS.get(view.status, 'grey')} data-status={view.status}")
                    if cancel_button is not None:
                        cancel_button.set_visibility(view.status not in FINISHED)
                if view.model_copy(update={"log_lines": 0}) == state["view"]:
                    return
                state["view"] = view.model_copy(update={"log_lines": 0})
                message.set_text(view.message or "")
                facts.clear()
                with facts:
                    for key, value in _facts(view, agent):
                        with ui.row().classes("gap-2 no-wrap"):
                            ui.label(key).classes("text-sm font-bold w-28")
                            ui.label(value).classes("text-sm").props(f"data-fact={key.lower().replace(' ', '-')}")
                _stats(stats, view.stats)
                _data(data_box, view)
                if view.files != state["files"]:
                    state["files"] = dict(view.files)
                    _files(files_box, run_id, view.files)

            show(first, agent, lines)

            async def poll() -> None:
                again = await run.io_bound(ui_data.run_view, ctx, run_id, state["seq"])
                if again is None:
                    return
                view, agent_now, new_lines, state["seq"] = again
                show(view, agent_now, new_lines)
                if view.status in FINISHED and not new_lines:
                    timer.deactivate()

            timer = ui.timer(POLL_S, poll, active=first.status not in FINISHED)

            async def cancel() -> None:
                try:
                    web_session.require(ctx, Role.operator)
                    await run.io_bound(ui_ops.cancel, ctx, run_id)
                except (web_session.Forbidden, runs.RunConflict) as exc:
                    notify_error(exc)
                    return
                ui.notify(f"run {run_id} cancelled")
                await poll()

            if cancel_button is not None:
                cancel_button.on_click(cancel)
        return None
