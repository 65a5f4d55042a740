"""Monitor's commands on the root CLI: `ctower hosts`, `ctower checks`, `ctower alerts`, `ctower rules`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from controltower.monitor.alerts_cli import alerts_app, rules_app, webhooks_app
    from controltower.monitor.checks_cli import checks_app, hosts_app

    app.add_typer(hosts_app, name="hosts")
    app.add_typer(checks_app, name="checks")
    app.add_typer(alerts_app, name="alerts")
    app.add_typer(rules_app, name="rules")
    app.add_typer(webhooks_app, name="webhooks")
