"""IoT fixtures: a Context over the test database, the hub, and a real Mosquitto (one per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controltower.config import Settings
from controltower.core.actions import ActionRegistry
from controltower.core.blobs import BlobStore
from controltower.core.context import Context
from controltower.core.db import Database
from controltower.core.events import EventBus
from controltower.core.scheduler import Scheduler
from controltower.core.series import SeriesStore
from controltower.core.work import WorkQueue
from controltower.iot.hub import Hub
from tests.iot.mqtt_support import Mosquitto, run_mosquitto


@pytest.fixture
def ctx(db: Database, tmp_path: Path) -> Context:
    settings = Settings(data_dir=tmp_path, database_url=db.url, iot_message_max_bytes=2048)
    events = EventBus(db)
    return Context(
        settings=settings,
        db=db,
        events=events,
        actions=ActionRegistry(),
        work=WorkQueue(db, events, settings),
        scheduler=Scheduler(db, tick_s=0.05),
        series=SeriesStore(db, settings),
        blobs=BlobStore(tmp_path / "blobs", settings.blob_max_bytes),
    )


@pytest.fixture
def hub(ctx: Context) -> Iterator[Hub]:
    hub = Hub(ctx)
    hub.start_worker()
    yield hub
    hub.stop_worker()


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker
