"""Prometheus exporter: at scrape time, every host metric's latest value, host liveness and check results."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select

from controltower.core.context import Context
from controltower.monitor import checks
from controltower.monitor.models import Check, Host

log = logging.getLogger("controltower.monitor.exporter")

PREFIX = "ctower_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    """`host.cpu.percent` -> `ctower_host_cpu_percent` (a valid Prometheus name)."""
    return PREFIX + _INVALID.sub("_", name)


def label_name(name: str) -> str:
    cleaned = _INVALID.sub("_", name)
    if not cleaned or cleaned[0].isdigit() or cleaned.startswith("__"):
        cleaned = "l_" + cleaned.lstrip("_")
    return cleaned


class MonitorCollector(Collector):
    """Reads the series store and monitor's tables on every scrape; nothing is cached."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def describe(self) -> list[Metric]:
        return []  # families depend on the data; do not collect at registration

    def collect(self) -> Iterator[Metric]:
        try:
            with self.ctx.db.session() as session:
                host_rows = list(session.execute(select(Host.name, Host.status)).all())
                check_rows = list(
                    session.execute(
                        select(Check.id, Check.name, Check.type, Check.state, Check.last_latency_ms)
                        .where(Check.enabled.is_(True))
                        .order_by(Check.name)
                    ).all()
                )
                uptimes = checks.uptime(session, dt.timedelta(days=1))
            latest = self.ctx.series.latest(name_prefix="host.")
        except Exception:
            log.exception("monitor exporter: reading metrics failed")
            return
        yield from self._host_metrics({name for name, _ in host_rows}, latest)
        up = GaugeMetricFamily(
            metric_name("host.up"), "1 when the host's agent heartbeats, else 0", labels=["host"]
        )
        for name, host_status in host_rows:
            up.add_metric([name], 1.0 if host_status == "up" else 0.0)
        yield up
        yield from self._check_metrics(check_rows, uptimes)

    @staticmethod
    def _host_metrics(known: set[str], latest: list) -> Iterator[Metric]:
        by_name: dict[str, list] = defaultdict(list)
        for sample in latest:
            if sample.name == "host.up" or sample.labels.get("host") not in known:
                continue
            by_name[metric_name(sample.name)].append(sample)
        for name in sorted(by_name):
            samples = by_name[name]
            keys = sorted({k for s in samples for k in s.labels})
            names = [label_name(k) for k in keys]
            if len(set(names)) != len(names):
                log.warning("monitor exporter: label keys of %s collide after cleaning; skipped", name)
                continue
            family = GaugeMetricFamily(
                name, f"Latest {samples[0].name} pushed by the host's agent", labels=names
            )
            seen: set[tuple[str, ...]] = set()
            for s in samples:
                values = tuple(s.labels.get(k, "") for k in keys)
                if values in seen:
                    continue  # two series differing only in characters the cleaning merged
                seen.add(values)
                family.add_metric(list(values), s.value)
            yield family

    @staticmethod
    def _check_metrics(rows: list, uptimes: dict[int, float | None]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            PREFIX + "check_up", "1 when the check is UP, 0 when DOWN", labels=["check", "type"]
        )
        latency = GaugeMetricFamily(
            PREFIX + "check_latency_ms",
            "Latency of the check's last run, milliseconds",
            labels=["check", "type"],
        )
        ratio = GaugeMetricFamily(
            PREFIX + "check_uptime_ratio_24h",
            "Fraction of the last 24 h the check was UP",
            labels=["check", "type"],
        )
        for check_id, name, check_type, state, last_latency in rows:
            if state in ("up", "down"):
                up.add_metric([name, check_type], 1.0 if state == "up" else 0.0)
            if last_latency is not None:
                latency.add_metric([name, check_type], float(last_latency))
            if uptimes.get(check_id) is not None:
                ratio.add_metric([name, check_type], uptimes[check_id] / 100.0)
        yield up
        yield latency
        yield ratio


def setup(ctx: Context) -> None:
    ctx.metrics.register(MonitorCollector(ctx))
