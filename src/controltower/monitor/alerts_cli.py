"""`ctower alerts`, `ctower rules`, `ctower webhooks`: list, ack, silence alerts; manage rules, webhooks."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Annotated, Any

import typer

from controltower.client import DEFAULT_SERVER
from controltower.console import (
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    client_from,
    console,
    err_console,
    list_by_default,
    print_rows,
)

alerts_app = typer.Typer(help="Alerts: list (firing and pending by default), acknowledge, silence.")
rules_app = typer.Typer(help="Alert rules: list, add, remove, enable, disable.")
webhooks_app = typer.Typer(help="Webhooks that receive alert notifications.")

ALERT_COLUMNS = ["id", "state", "rule", "severity", "labels", "value", "since", "acked_by", "silenced"]


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _parse_labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            err_console.print(f"[red]--label: expected key=value, got {pair!r}[/red]")
            raise typer.Exit(2)
        labels[key] = value
    return labels


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _age(iso: str | None) -> str:
    """`45s`, `12m`, `3h`, `2d` since an ISO timestamp."""
    if not iso:
        return ""
    moment = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    seconds = max(0.0, (dt.datetime.now(dt.UTC) - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _alert_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    shown = []
    for row in rows:
        since = row.get("resolved_at") or row.get("fired_at") or row.get("pending_since")
        shown.append(
            {
                **row,
                "labels": _labels_text(row.get("labels") or {}),
                "value": None if row.get("value") is None else f"{row['value']:g}",
                "since": _age(since),
                "silenced": "yes" if row.get("silenced_by") else "",
            }
        )
    return shown


# -- alerts -----------------------------------------------------------------------------------------


def _list_alerts(
    server: str, token: str | None, show_all: bool, states: list[str] | None, rule: str | None, as_json: bool
) -> None:
    wanted = None if show_all else (states or ["firing", "pending"])
    with client_from(server, token) as client:
        rows = call(client.get, "monitor/alerts", state=wanted, rule=rule)
    if as_json:
        _print_json(rows)
        return
    title = "Alerts" if show_all else f"Alerts ({', '.join(wanted or [])})"
    print_rows(_alert_rows(rows), ALERT_COLUMNS, False, title=title)


@alerts_app.callback(invoke_without_command=True)
def alerts_main(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    show_all: Annotated[bool, typer.Option("--all", help="Every alert, resolved ones included")] = False,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="pending, firing or resolved (repeatable)")
    ] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule's alerts")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Without a command: the firing and pending alerts."""
    if ctx.invoked_subcommand is None:
        _list_alerts(server, token, show_all, state, rule, as_json)


@alerts_app.command("list")
def alerts_list(
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    show_all: Annotated[bool, typer.Option("--all", help="Every alert, resolved ones included")] = False,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="pending, firing or resolved (repeatable)")
    ] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule's alerts")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Firing and pending alerts (or --all, or --state)."""
    _list_alerts(server, token, show_all, state, rule, as_json)


@alerts_app.command("show")
def alerts_show(alert_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """One alert as JSON."""
    with client_from(server, token) as client:
        _print_json(call(client.get, f"monitor/alerts/{alert_id}"))


@alerts_app.command("ack")
def alerts_ack(
    alert_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Acknowledge an alert: someone is on it."""
    with client_from(server, token) as client:
        row = call(client.post, f"monitor/alerts/{alert_id}/ack")
    if as_json:
        _print_json(row)
        return
    console.print(
        f"alert {row['id']} ({row['rule']} {_labels_text(row['labels'])}) "
        f"acknowledged by {row['acked_by']} at {row['acked_at']}"
    )


@alerts_app.command("silence")
def alerts_silence(
    rule: Annotated[str | None, typer.Option("--rule", help="Rule name to match")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="k=v the alert's labels must hold (repeatable)")
    ] = None,
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 30m, 2h, 1d")] = "2h",
    reason: Annotated[str, typer.Option("--reason", help="Why (shown in the silence list)")] = "",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mute notifications of matching alerts for a while (their states still change)."""
    body = {"rule_name": rule, "labels": _parse_labels(label), "duration": duration, "reason": reason}
    with client_from(server, token) as client:
        row = call(client.post, "monitor/silences", body)
    if as_json:
        _print_json(row)
        return
    console.print(f"silence {row['id']} active until {row['ends_at']}")


@alerts_app.command("silences")
def alerts_silences(
    show_all: Annotated[bool, typer.Option("--all", help="Include expired silences")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Active silences (or --all)."""
    with client_from(server, token) as client:
        rows = call(client.get, "monitor/silences", expired=show_all or None)
    if as_json:
        _print_json(rows)
        return
    shown = [{**r, "labels": _labels_text(r["labels"])} for r in rows]
    print_rows(
        shown,
        ["id", "rule_name", "labels", "ends_at", "active", "created_by", "reason"],
        False,
        title="Silences",
    )


@alerts_app.command("unsilence")
def alerts_unsilence(silence_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Expire a silence now."""
    with client_from(server, token) as client:
        row = call(client.delete, f"monitor/silences/{silence_id}")
    console.print(f"silence {row['id']} expired at {row['ends_at']}")


# -- rules ------------------------------------------------------------------------------------------


def _list_rules(server: str, token: str | None, as_json: bool) -> None:
    with client_from(server, token) as client:
        rows = call(client.get, "monitor/rules")
    if as_json:
        _print_json(rows)
        return
    shown = [
        {
            **r,
            "recovery": r["recovery_threshold"],
            "enabled": "yes" if r["enabled"] else "no",
            "builtin": "yes" if r["builtin"] else "",
        }
        for r in rows
    ]
    print_rows(
        shown,
        ["name", "expr", "recovery", "severity", "enabled", "builtin", "pending", "firing"],
        False,
        title="Alert rules",
    )


list_by_default(rules_app, _list_rules, "every alert rule with its open alerts")


@rules_app.command("add")
def rules_add(
    name: str,
    expr: Annotated[str, typer.Option("--expr", help="e.g. 'host.cpu.percent > 90 for 5m'")],
    recovery: Annotated[
        float | None,
        typer.Option(
            "--recovery",
            "--recover-below",
            "--recover-above",
            help="Hysteresis: a firing alert resolves only once the value crosses this",
        ),
    ] = None,
    severity: Annotated[str, typer.Option("--severity", help="info, warning or critical")] = "warning",
    description: Annotated[str, typer.Option("--description", help="What it means and what to do")] = "",
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an alert rule."""
    body = {
        "name": name,
        "expr": expr,
        "recovery_threshold": recovery,
        "severity": severity,
        "description": description,
        "enabled": not disabled,
    }
    with client_from(server, token) as client:
        row = call(client.post, "monitor/rules", body)
    if as_json:
        _print_json(row)
        return
    console.print(f"rule {row['name']}: {row['expr']}")


def _set_enabled(name: str, enabled: bool, server: str, token: str | None) -> None:
    with client_from(server, token) as client:
        row = call(client.patch, f"monitor/rules/{name}", {"enabled": enabled})
    console.print(f"rule {row['name']} {'enabled' if row['enabled'] else 'disabled'}")


@rules_app.command("enable")
def rules_enable(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Enable a rule."""
    _set_enabled(name, True, server, token)


@rules_app.command("disable")
def rules_disable(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Disable a rule (its open alerts resolve)."""
    _set_enabled(name, False, server, token)


@rules_app.command("rm")
def rules_rm(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Delete a rule and its alerts (builtin rules can only be disabled)."""
    with client_from(server, token) as client:
        call(client.delete, f"monitor/rules/{name}")
    console.print(f"rule {name} deleted")


# -- webhooks ---------------------------------------------------------------------------------------


def _list_webhooks(server: str, token: str | None, as_json: bool) -> None:
    with client_from(server, token) as client:
        rows = call(client.get, "monitor/webhooks")
    print_rows(
        rows,
        ["name", "url", "min_severity", "enabled", "pending", "sent", "failed"],
        as_json,
        title="Webhooks",
    )


list_by_default(webhooks_app, _list_webhooks, "webhooks (URLs shown without their path, which may hold a secret)")


@webhooks_app.command("add")
def webhooks_add(
    name: str,
    url: str,
    min_severity: Annotated[str, typer.Option("--min-severity", help="info, warning or critical")] = "info",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a webhook that receives a JSON POST on every firing and resolved alert."""
    with client_from(server, token) as client:
        row = call(client.post, "monitor/webhooks", {"name": name, "url": url, "min_severity": min_severity})
    if as_json:
        _print_json(row)
        return
    console.print(f"webhook {row['name']} -> {row['url']}")


@webhooks_app.command("rm")
def webhooks_rm(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Delete a webhook (its queued notifications go with it)."""
    with client_from(server, token) as client:
        call(client.delete, f"monitor/webhooks/{name}")
    console.print(f"webhook {name} deleted")


@webhooks_app.command("test")
def webhooks_test(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Send a sample notification now and report how it went."""
    with client_from(server, token) as client:
        result = call(client.post, f"monitor/webhooks/{name}/test")
    if result["ok"]:
        console.print(f"webhook {name}: delivered (HTTP {result['status']})")
        return
    err_console.print(f"[red]webhook {name}: failed:[/red] {result['error']}")
    raise typer.Exit(1)
