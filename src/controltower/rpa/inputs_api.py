"""Routes for runs' input files: upload one (returns the reference a run or work item names), fetch one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response, status

from controltower.core.auth import Operator, Principal, Role, require
from controltower.core.blobs import BlobTooLargeError
from controltower.core.deps import CtxDep, SessionDep
from controltower.rpa import runs
from controltower.rpa.inputs import find_file

router = APIRouter(prefix="/rpa", tags=["rpa"])

ViewerOrAgent = Annotated[Principal, require(Role.viewer, Role.agent)]


@router.post("/files", status_code=status.HTTP_201_CREATED)
async def upload(request: Request, ctx: CtxDep, _: Operator) -> dict[str, object]:
    """Store the raw body as an input file; name it in a run's or work item's `files` by the sha256 returned."""
    limit = min(ctx.settings.rpa_input_file_max_bytes, ctx.blobs.max_bytes)

    async def limited() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                    detail=f"file: larger than the limit of {limit} bytes "
                                           "(CT_RPA_INPUT_FILE_MAX_BYTES)")
            yield chunk

    try:
        ref = await ctx.blobs.put_stream(limited())
    except BlobTooLargeError as exc:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail=f"file: {exc}") from exc
    return {"sha256": ref.sha256, "size": ref.size}


@router.get("/runs/{run_id}/inputs/{name}")
def get_input(run_id: int, name: str, ctx: CtxDep, session: SessionDep, principal: ViewerOrAgent) -> Response:
    """One of the run's input files: for viewers, and for the agent that holds the run."""
    try:
        run = runs.get_run(session, run_id)
        if principal.role == Role.agent:
            runs.agent_run(session, run_id, int(principal.subject_id))
    except runs.RunNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from exc
    except runs.NotRunOwner as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    entry = find_file(run.input_files or [], name)
    session.commit()
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id} has no input file {name!r}")
    with ctx.blobs.open(entry["sha256"]) as fh:
        data = fh.read()
    return Response(data, media_type="application/octet-stream", headers={"X-Sha256": entry["sha256"]})
