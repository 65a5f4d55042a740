"""create_app(): the core services, every subsystem's setup(), and the HTTP app that serves them."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
from collections.abc import AsyncIterator
from types import ModuleType

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from controltower import __version__
from controltower.config import Settings, get_settings
from controltower.core.actions import ActionRegistry, register_builtin_actions
from controltower.core.api import actions as actions_api
from controltower.core.api import agents as agents_api
from controltower.core.api import events as events_api
from controltower.core.api import series as series_api
from controltower.core.api import system as system_api
from controltower.core.api import tokens as tokens_api
from controltower.core.api import users as users_api
from controltower.core.api import work as work_api
from controltower.core.auth import ensure_admin
from controltower.core.blobs import BlobStore
from controltower.core.context import Context
from controltower.core.db import Database
from controltower.core.events import EventBus
from controltower.core.scheduler import Scheduler
from controltower.core.series import SeriesStore
from controltower.core.users import ensure_admin_password
from controltower.core.work import WorkQueue
from controltower.web import app as web_app

log = logging.getLogger("controltower.server")

SUBSYSTEMS = ("monitor", "rpa", "iot")


def subsystem_modules() -> list[ModuleType]:
    """Each subsystem's package, after its `models` module, so every table is on Base.metadata for migrations."""
    for name in SUBSYSTEMS:
        importlib.import_module(f"controltower.{name}.models")
    return [importlib.import_module(f"controltower.{name}") for name in SUBSYSTEMS]


_MODULES = subsystem_modules()


def _replica_name(settings: Settings) -> str | None:
    """Host and listen port: only one live process can hold that port, so the name is safe to reuse."""
    if not settings.port:
        return None
    return f"{socket.gethostname()}:{settings.host}:{settings.port}"


def build_context(settings: Settings) -> Context:
    settings.prepare()
    db = Database(settings.db_url, wal_autocheckpoint=settings.sqlite_wal_autocheckpoint)
    events = EventBus(db)
    actions = ActionRegistry()
    register_builtin_actions(actions, settings)
    return Context(
        settings=settings,
        db=db,
        events=events,
        actions=actions,
        work=WorkQueue(db, events, settings),
        scheduler=Scheduler(db, holder=_replica_name(settings)),
        series=SeriesStore(db, settings),
        blobs=BlobStore(settings.data_dir / "blobs", settings.blob_max_bytes),
    )


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "field": ".".join(str(p) for p in err["loc"] if p not in ("body", "query", "path")),
            "reason": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{e['field'] or 'body'}: {e['reason']}" for e in errors)
    return JSONResponse(status_code=422, content={"detail": summary, "errors": errors})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    ctx = build_context(settings)
    ctx.work.register_jobs(ctx.scheduler)
    ctx.events.register_jobs(ctx.scheduler, settings.event_retention_days)
    ctx.series.register_jobs(ctx.scheduler)

    for router in (system_api.router, agents_api.router, events_api.router, actions_api.router,
                   work_api.router, series_api.router, tokens_api.router, users_api.router):
        ctx.include_router(router)
    for module in _MODULES:
        module.setup(ctx)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(ctx.db.migrate)
        with ctx.db.session() as session:
            written = ensure_admin(session, settings.admin_token_path)
        if written:
            log.warning("first start: admin API token written to %s (mode 0600)", written)
        with ctx.db.session() as session:
            password_file = ensure_admin_password(session, settings.data_dir / "admin-password")
        if password_file:
            log.warning("dashboard user 'admin': one-time password written to %s (mode 0600)", password_file)
        await ctx.events.start()
        await ctx.scheduler.start()
        tasks = [asyncio.create_task(run(), name=name) for name, run in ctx.services.items()]
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ctx.scheduler.stop()
            await ctx.events.stop()
            ctx.db.dispose()

    app = FastAPI(
        title=settings.name,
        version=__version__,
        lifespan=lifespan,
        description="Control Tower REST API. Authenticate with 'Authorization: Bearer <token>'.",
    )
    app.state.ctx = ctx
    app.state.ready = False
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(system_api.root_router)
    app.include_router(ctx.api)
    web_app.mount(app, ctx)
    return app
