"""Liveness, readiness, Prometheus metrics and server info."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controltower import __version__
from controltower.core.auth import Viewer
from controltower.core.deps import CtxDep

root_router = APIRouter(tags=["system"])
router = APIRouter(tags=["system"])


@root_router.get("/healthz")
def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@root_router.get("/readyz")
def readyz(request: Request, ctx: CtxDep) -> JSONResponse:
    """Ready: started, the database answers, and every part a subsystem registered (the MQTT broker) is up."""
    checks = {"started": bool(request.app.state.ready), "database": ctx.db.ping()}
    for name, check in ctx.readiness.items():
        try:
            checks[name] = bool(check())
        except Exception:
            checks[name] = False
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)


@root_router.get("/metrics", include_in_schema=True)
def metrics(ctx: CtxDep) -> Response:
    """Prometheus text exposition of every host metric, check result and internal counter."""
    return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/info")
def info(ctx: CtxDep, principal: Viewer) -> dict[str, object]:
    """Server name, version, database backend, and who is calling."""
    return {
        "name": ctx.settings.name,
        "version": __version__,
        "database": ctx.db.dialect,
        "you": {"name": principal.name, "role": principal.role.value, "subject": principal.subject},
    }
