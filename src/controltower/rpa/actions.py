"""The action `rpa.run_robot`: start a run, and either return its id or wait for its result."""

from __future__ import annotations

from pydantic import Field

from controltower.core.actions import ActionFailed
from controltower.core.auth import Principal, Role
from controltower.core.context import Context
from controltower.rpa import runs
from controltower.rpa.schemas import RunCreate, RunPublic


class RunRobotParams(RunCreate):
    wait: bool = Field(False, description="Wait for the run to finish and return its result")
    wait_timeout_s: float = Field(600.0, gt=0, le=24 * 3600, description="Give up waiting after this long")


def register(ctx: Context) -> None:
    def run_robot(params: RunRobotParams, principal: Principal) -> RunPublic:
        body = RunCreate.model_validate(params.model_dump(exclude={"wait", "wait_timeout_s"}))
        try:
            with ctx.db.session() as session:
                run = runs.start_run(ctx, session, body, f"{principal.name} ({principal.subject})")
                run_id = run.id
                public = runs.run_public(session, run)
        except (LookupError, ValueError) as exc:
            raise ActionFailed(str(exc)) from exc
        if not params.wait:
            return public
        return runs.wait_finished(ctx, run_id, params.wait_timeout_s)

    ctx.actions.register(
        "rpa.run_robot", RunRobotParams, run_robot, role=Role.operator, output_model=RunPublic,
        description="Run a robot's task on an agent; with wait=true, return once it has finished",
    )
