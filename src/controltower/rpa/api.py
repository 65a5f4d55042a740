"""RPA's routes: robots and their versions, runs, and the endpoints the agent's runner reports to."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controltower.core.auth import AgentPrincipal, Operator, Principal, Viewer
from controltower.core.blobs import BlobTooLargeError
from controltower.core.deps import CtxDep, SessionDep
from controltower.core.work import WorkError
from controltower.rpa import robots, runs, vault
from controltower.rpa.archive import UnsafePackage
from controltower.rpa.models import Robot
from controltower.rpa.run_secrets import mask_json
from controltower.rpa.schemas import (
    AuditPublic,
    LogBatch,
    LogLinePublic,
    PromoteBody,
    RobotPublic,
    RobotVersionPublic,
    RunCreate,
    RunFinish,
    RunPublic,
    RunStatus,
    VersionDiff,
)

router = APIRouter(prefix="/rpa", tags=["rpa"])

UNPROCESSABLE = 422
ZIP = "application/zip"


def actor(principal: Principal) -> str:
    return f"{principal.name} ({principal.subject})"


def _version_ref(ref: str) -> int | Literal["production", "latest"]:
    if ref in ("production", "latest"):
        return ref  # type: ignore[return-value]
    if ref.isdigit() and int(ref) >= 1:
        return int(ref)
    raise HTTPException(UNPROCESSABLE, detail=f"version: {ref!r} must be a number, 'production' or 'latest'")


def _not_found(exc: LookupError) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                                detail=f"{what}: larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- robots ------------------------------------------------------------------------------------------


@router.post("/robots", status_code=status.HTTP_201_CREATED)
async def push(request: Request, ctx: CtxDep, session: SessionDep, principal: Operator,
               note: str = "") -> RobotVersionPublic:
    """Upload a robot package (a zip, as the request body) as the robot's next version.

    Refused with the reason: unsafe zips (absolute or `..` paths, symlinks, past the size limit),
    an invalid robot.yaml, or a failing Robot Framework dry run (each problem with file and line).
    """
    limit = ctx.settings.rpa_package_max_bytes
    data = await _read_body(request, limit, "package")
    try:
        vetted = await asyncio.to_thread(robots.vet_package, data, limit)
    except UnsafePackage as exc:
        raise HTTPException(UNPROCESSABLE, detail=f"package: {exc}") from exc
    except robots.PackageRefused as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc

    def store() -> RobotVersionPublic:
        try:
            version = robots.store_version(session, ctx.blobs, data, vetted, actor(principal), note)
            robot = robots.get_robot(session, vetted.spec.name)
            public = robots.version_public(robot, version)
            session.commit()
        except robots.DuplicateVersion as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
        except IntegrityError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                detail=f"another push of {vetted.spec.name!r} won the race; push again") from exc
        except BlobTooLargeError as exc:
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail=f"package: {exc}") from exc
        return public

    return await asyncio.to_thread(store)


@router.get("/robots")
def list_robots(session: SessionDep, _: Viewer) -> list[RobotPublic]:
    result = robots.list_robots(session)
    session.commit()
    return result


def _robot(session: Session, name: str) -> robots.Robot:
    try:
        return robots.get_robot(session, name)
    except robots.RobotNotFound as exc:
        raise _not_found(exc) from exc


@router.get("/robots/{name}/versions")
def list_versions(name: str, session: SessionDep, _: Viewer) -> list[RobotVersionPublic]:
    """Newest first."""
    robot = _robot(session, name)
    result = [robots.version_public(robot, v) for v in robots.list_versions(session, robot)]
    session.commit()
    return result


@router.get("/robots/{name}/versions/{ref}")
def get_version(name: str, ref: str, session: SessionDep, _: Viewer) -> RobotVersionPublic:
    """A version by number, or `production`, or `latest`."""
    robot = _robot(session, name)
    try:
        version = robots.get_version(session, robot, _version_ref(ref))
    except robots.RobotNotFound as exc:
        raise _not_found(exc) from exc
    result = robots.version_public(robot, version)
    session.commit()
    return result


@router.get("/robots/{name}/versions/{ref}/download")
def download(name: str, ref: str, ctx: CtxDep, session: SessionDep, _: Viewer) -> Response:
    robot = _robot(session, name)
    try:
        version = robots.get_version(session, robot, _version_ref(ref))
    except robots.RobotNotFound as exc:
        raise _not_found(exc) from exc
    session.commit()
    with ctx.blobs.open(version.sha256) as fh:
        data = fh.read()
    return Response(data, media_type=ZIP, headers={
        "Content-Disposition": f'attachment; filename="{robot.name}-{version.number}.zip"',
        "X-Robot-Version": str(version.number), "X-Sha256": version.sha256,
    })


@router.get("/robots/{name}/diff")
def diff(name: str, ctx: CtxDep, session: SessionDep, _: Viewer,
         a: Annotated[int, Query(ge=1)], b: Annotated[int, Query(ge=1)]) -> VersionDiff:
    """Files added, removed and changed from version `a` to `b`, and a unified diff of the text ones."""
    robot = _robot(session, name)
    try:
        result = robots.diff_versions(session, ctx.blobs, robot, a, b)
    except robots.RobotNotFound as exc:
        raise _not_found(exc) from exc
    session.commit()
    return result


@router.get("/robots/{name}/history")
def history(name: str, session: SessionDep, _: Viewer) -> list[AuditPublic]:
    """Who pushed, promoted and rolled back what, and when (oldest first)."""
    robot = _robot(session, name)
    result = robots.history(session, robot)
    session.commit()
    return result


@router.post("/robots/{name}/promote")
def promote(name: str, body: PromoteBody, session: SessionDep, principal: Operator) -> RobotVersionPublic:
    robot = _robot(session, name)
    try:
        version = robots.promote(session, robot, body.version, actor(principal))
    except robots.RobotNotFound as exc:
        raise _not_found(exc) from exc
    result = robots.version_public(robot, version)
    session.commit()
    return result


@router.post("/robots/{name}/rollback")
def rollback(name: str, session: SessionDep, principal: Operator) -> RobotVersionPublic:
    """Production goes back to the version it had before the last promotion."""
    robot = _robot(session, name)
    try:
        version = robots.rollback(session, robot, actor(principal))
    except robots.RollbackImpossible as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    result = robots.version_public(robot, version)
    session.commit()
    return result


# -- runs --------------------------------------------------------------------------------------------


def _run(session: Session, run_id: int) -> runs.RobotRun:
    try:
        return runs.get_run(session, run_id)
    except runs.RunNotFound as exc:
        raise _not_found(exc) from exc


@router.post("/runs", status_code=status.HTTP_201_CREATED)
def start(body: RunCreate, ctx: CtxDep, session: SessionDep, principal: Operator) -> RunPublic:
    """Queue a run for the first agent carrying `labels` (or agent `agent_id`)."""
    try:
        run = runs.start_run(ctx, session, body, actor(principal))
    except robots.RobotNotFound as exc:
        raise _not_found(exc) from exc
    except (runs.RunRefused, ValueError) as exc:
        raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
    result = runs.run_public(session, run)
    session.commit()
    return result


@router.get("/runs")
def list_runs(session: SessionDep, _: Viewer, robot: str | None = None,
              status_: Annotated[RunStatus | None, Query(alias="status")] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[RunPublic]:
    """Newest first."""
    try:
        rows = runs.list_runs(session, robot, status_, limit)
    except robots.RobotNotFound as exc:
        raise _not_found(exc) from exc
    result = [runs.run_public(session, r) for r in rows]
    session.commit()
    return result


@router.get("/runs/{run_id}")
def get_run(run_id: int, session: SessionDep, _: Viewer) -> RunPublic:
    result = runs.run_public(session, _run(session, run_id))
    session.commit()
    return result


@router.get("/runs/{run_id}/log")
def get_log(run_id: int, session: SessionDep, _: Viewer, after: Annotated[int, Query(ge=0)] = 0,
            limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> list[LogLinePublic]:
    """Log lines after sequence number `after` (poll with the last seq seen to follow a live run)."""
    result = runs.read_log(session, _run(session, run_id), after, limit)
    session.commit()
    return result


@router.get("/runs/{run_id}/files/{name:path}")
def get_file(run_id: int, name: str, ctx: CtxDep, session: SessionDep, _: Viewer) -> Response:
    """One of the run's files: output.xml, log.html, report.html or artifacts/<path>."""
    run = _run(session, run_id)
    entry = (run.files or {}).get(name)
    session.commit()
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id} has no file {name!r}")
    with ctx.blobs.open(entry["sha256"]) as fh:
        data = fh.read()
    media = {"log.html": "text/html", "report.html": "text/html", "output.xml": "application/xml"}
    return Response(data, media_type=media.get(name, "application/octet-stream"))


@router.post("/runs/{run_id}/cancel")
def cancel(run_id: int, ctx: CtxDep, session: SessionDep, _: Operator) -> RunPublic:
    """Cancel a queued or running run; a running robot is killed when its agent next renews the lease."""
    run = _run(session, run_id)
    try:
        runs.cancel(ctx, session, run)
    except runs.RunConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    result = runs.run_public(session, run)
    session.commit()
    return result


# -- the agent's side --------------------------------------------------------------------------------


def _agent_run(session: Session, run_id: int, principal: Principal) -> runs.RobotRun:
    _run(session, run_id)
    try:
        return runs.agent_run(session, run_id, int(principal.subject_id))
    except runs.NotRunOwner as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc


@router.get("/runs/{run_id}/package")
def run_package(run_id: int, ctx: CtxDep, session: SessionDep, principal: AgentPrincipal) -> Response:
    """The package of the run's version, for the agent that holds the run."""
    run = _agent_run(session, run_id, principal)
    robot = session.get(Robot, run.robot_id)
    version = robots.get_version(session, robot, run.version)
    session.commit()
    with ctx.blobs.open(version.sha256) as fh:
        data = fh.read()
    return Response(data, media_type=ZIP, headers={"X-Sha256": version.sha256})


@router.post("/runs/{run_id}/start")
def run_started(run_id: int, session: SessionDep, principal: AgentPrincipal) -> RunPublic:
    run = _agent_run(session, run_id, principal)
    runs.mark_started(session, run, int(principal.subject_id))
    result = runs.run_public(session, run)
    session.commit()
    return result


@router.post("/runs/{run_id}/log")
def run_log(run_id: int, body: LogBatch, ctx: CtxDep, session: SessionDep,
            principal: AgentPrincipal) -> dict[str, int]:
    """Append log lines; the run's secret values are masked again here (the agent masks them first)."""
    run = _agent_run(session, run_id, principal)
    masker = vault.run_masker(session, ctx.settings, run)
    count = runs.append_log(session, run, [masker.mask(line) for line in body.lines])
    session.commit()
    return {"log_lines": count}


@router.put("/runs/{run_id}/files/{name:path}")
async def run_file(run_id: int, name: str, request: Request, ctx: CtxDep, session: SessionDep,
                   principal: AgentPrincipal) -> dict[str, object]:
    """Upload one output file as the raw body."""
    data = await _read_body(request, ctx.blobs.max_bytes, "file")

    def store() -> dict[str, object]:
        run = _agent_run(session, run_id, principal)
        masked = vault.run_masker(session, ctx.settings, run).mask_text_bytes(data)
        try:
            entry = runs.store_file(session, ctx.blobs, run, name, masked)
        except runs.RunRefused as exc:
            raise HTTPException(UNPROCESSABLE, detail=str(exc)) from exc
        session.commit()
        return {"name": name, **entry}

    return await asyncio.to_thread(store)


@router.post("/runs/{run_id}/finish")
def run_finish(run_id: int, body: RunFinish, ctx: CtxDep, session: SessionDep,
               principal: AgentPrincipal) -> RunPublic:
    """The outcome: completes the work item and publishes `rpa.run.finished`."""
    run = _agent_run(session, run_id, principal)
    masker = vault.run_masker(session, ctx.settings, run)
    body.message, body.output = masker.mask_optional(body.message), mask_json(masker, body.output)
    try:
        runs.finish(ctx, session, run, int(principal.subject_id), body)
    except runs.RunConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except WorkError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    result = runs.run_public(session, run)
    session.commit()
    return result
