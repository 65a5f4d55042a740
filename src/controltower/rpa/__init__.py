"""RPA: robot packages, their versions on the server, runs on agents, and the development CLI."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controltower.core.context import Context

# Nothing is imported at package level: the agent loads `rpa.runner` and must stay small.


def setup(ctx: Context) -> None:
    """Mount RPA's routes, its action `rpa.run_robot`, the handler that marks runs of lost agents, its pages."""
    from controltower.rpa import actions, api, runs, ui

    ctx.include_router(api.router)
    from controltower.rpa import schedules, schedules_api, vault_api

    ctx.include_router(vault_api.router)
    ctx.include_router(schedules_api.router)
    schedules.register(ctx)
    from controltower.rpa import inputs_api, workitems, workitems_api

    ctx.include_router(inputs_api.router)
    ctx.include_router(workitems_api.router)
    workitems.register(ctx)
    actions.register(ctx)
    ctx.events.subscribe("work.item.expired", lambda event: runs.on_work_expired(ctx, event))
    ui.register(ctx)
