"""IoT's /metrics: dead letters by kind, devices by status, and the hub's in-process counters."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from controltower.core.context import Context
from controltower.iot import deadletters
from controltower.iot.hub import Hub
from controltower.iot.models import Device

log = logging.getLogger("controltower.iot.exporter")


class IotCollector(Collector):
    def __init__(self, ctx: Context, hub: Hub) -> None:
        self.ctx = ctx
        self.hub = hub

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            with self.ctx.db.read_session() as session:
                dead = deadletters.counts(session)
                by_status = dict(session.execute(select(Device.status, func.count()).group_by(Device.status)).all())
        except Exception:
            log.exception("iot exporter: reading counts failed")
            return
        family = CounterMetricFamily(
            "ctower_iot_dead_letters", "Device messages refused by ingestion, by kind", labels=["kind"]
        )
        for kind in sorted(set(deadletters.KINDS) | set(dead)):
            family.add_metric([kind], float(dead.get(kind, 0)))
        yield family
        devices = GaugeMetricFamily("ctower_iot_devices", "Registered devices by status", labels=["status"])
        for status in ("online", "offline", "unknown"):
            devices.add_metric([status], float(by_status.get(status, 0)))
        yield devices
        messages = CounterMetricFamily(
            "ctower_iot_messages", "Device messages seen by this process's hub", labels=["outcome"]
        )
        for outcome in ("received", "stored", "dead_letters", "dropped"):
            messages.add_metric([outcome], float(self.hub.stats.get(outcome, 0)))
        yield messages


def setup(ctx: Context, hub: Hub) -> None:
    ctx.metrics.register(IotCollector(ctx, hub))
