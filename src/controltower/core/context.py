"""The Context handed to every subsystem's setup(): core services plus the hooks to add routes and loops."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import APIRouter
from prometheus_client import CollectorRegistry

from controltower.config import Settings
from controltower.core.auth import PrincipalCache
from controltower.core.db import Database

if TYPE_CHECKING:
    from controltower.core.actions import ActionRegistry
    from controltower.core.blobs import BlobStore
    from controltower.core.events import EventBus
    from controltower.core.scheduler import Scheduler
    from controltower.core.series import SeriesStore
    from controltower.core.work import WorkQueue

ServiceFactory = Callable[[], Awaitable[None]]


@dataclass
class Context:
    """Everything a subsystem may touch. Subsystems reach each other only through these services."""

    settings: Settings
    db: Database
    events: EventBus
    actions: ActionRegistry
    work: WorkQueue
    scheduler: Scheduler
    series: SeriesStore
    blobs: BlobStore
    principals: PrincipalCache = field(default_factory=PrincipalCache)
    metrics: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    api: APIRouter = field(default_factory=lambda: APIRouter(prefix="/api/v1"))
    services: dict[str, ServiceFactory] = field(default_factory=dict)
    readiness: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def include_router(self, router: APIRouter) -> None:
        """Mount a subsystem's router under /api/v1."""
        self.api.include_router(router)

    def add_service(self, name: str, run: ServiceFactory) -> None:
        """A long-running coroutine started with the server and cancelled at shutdown."""
        if name in self.services:
            raise ValueError(f"service {name!r} registered twice")
        self.services[name] = run

    def add_readiness_check(self, name: str, check: Callable[[], bool]) -> None:
        """A part /readyz reports on (e.g. the MQTT broker): False or an exception makes the server unready."""
        if name in self.readiness:
            raise ValueError(f"readiness check {name!r} registered twice")
        self.readiness[name] = check
