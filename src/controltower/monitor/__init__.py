"""Monitor: host resources pushed by agents, health checks run by the server, alert rules and notifications."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controltower.core.context import Context

# Nothing is imported at package level: the agent loads `monitor.collector` and must stay small.


def setup(ctx: Context) -> None:
    """Mount monitor's routes, loops, actions, /metrics collector and dashboard pages."""
    from controltower.monitor import alerts, check_runner, exporter, hosts, ui

    hosts.setup(ctx)
    check_runner.setup(ctx)
    alerts.setup(ctx)
    exporter.setup(ctx)
    ui.register(ctx)
