"""Actions over REST: list them with their JSON schemas, and call one by name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from controltower.core.actions import (
    ActionFailed,
    ActionForbidden,
    ActionNotFound,
    ActionParamsInvalid,
    ActionSpec,
)
from controltower.core.auth import Viewer
from controltower.core.deps import CtxDep

router = APIRouter(tags=["actions"])


class ActionPublic(BaseModel):
    name: str
    description: str
    role: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None

    @classmethod
    def of(cls, spec: ActionSpec) -> ActionPublic:
        return cls.model_validate(spec.to_json())


class ActionResult(BaseModel):
    result: Any


@router.get("/actions", response_model=list[ActionPublic])
def list_actions(ctx: CtxDep, _principal: Viewer) -> list[ActionPublic]:
    """Every registered action with the role it needs and its input and output JSON schemas."""
    return [ActionPublic.of(spec) for spec in ctx.actions.list()]


@router.get("/actions/{name}", response_model=ActionPublic)
def get_action(name: str, ctx: CtxDep, _principal: Viewer) -> ActionPublic:
    try:
        return ActionPublic.of(ctx.actions.get(name))
    except ActionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None


@router.post(
    "/actions/{name}",
    response_model=ActionResult,
    responses={403: {"description": "Role too low"}, 404: {"description": "No such action"},
               422: {"description": "Bad params"}, 502: {"description": "The action failed"}},
)
async def call_action(
    name: str,
    ctx: CtxDep,
    principal: Viewer,
    params: Annotated[dict[str, Any] | None, Body(description="The params, per the input schema")] = None,
) -> ActionResult | JSONResponse:
    """Call an action; the body is its params. Errors: 404 unknown, 403 role, 422 bad params, 502 failed."""
    try:
        result = await ctx.actions.call(name, params or {}, principal)
    except ActionNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    except ActionForbidden as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=str(exc)) from None
    except ActionParamsInvalid as exc:
        return JSONResponse(
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
            content={"detail": exc.summary, "errors": exc.errors},
        )
    except ActionFailed as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, detail=str(exc)) from None
    return ActionResult(result=result)
