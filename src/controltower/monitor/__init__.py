"""Monitor: host resources pushed by agents, health checks run by the server, alert rules and notifications."""

from __future__ import annotations

from controltower.core.context import Context
from controltower.monitor import models  # noqa: F401  (registers the tables)


def setup(ctx: Context) -> None:
    """Mount monitor's routes, loops, actions and /metrics collector."""
    from controltower.monitor import alerts, checks, exporter, hosts

    hosts.setup(ctx)
    checks.setup(ctx)
    alerts.setup(ctx)
    exporter.setup(ctx)
