"""`ctower robot schedule ...`: start a robot's task on a cron schedule; list, pause, resume and remove schedules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from controltower.client import DEFAULT_SERVER
from controltower.console import (
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    client_from,
    err_console,
    list_by_default,
    print_rows,
)

schedule_app = typer.Typer(help="Cron schedules that start robot runs.")

COLUMNS = ["id", "robot", "task", "cron", "timezone", "labels", "paused", "next_fire_at", "last_run_id", "last_error"]


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if not as_json:
        rows = [{**row, "labels": ",".join(row["labels"]), "paused": "yes" if row["paused"] else ""} for row in rows]
    print_rows(rows, COLUMNS, as_json)


def _list(server: str, token: str | None, as_json: bool) -> None:
    with client_from(server, token) as client:
        _print(call(client.get, "rpa/schedules"), as_json)


list_by_default(schedule_app, _list, "the schedules and when each fires next")


def _pairs(values: list[str] | None) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in values or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            err_console.print(f"[red]--var: expected key=value, got {pair!r}[/red]")
            raise typer.Exit(2)
        result[key] = value
    return result


@schedule_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The robot")],
    cron: Annotated[str, typer.Option("--cron", help='Five fields, e.g. "0 6 * * mon-fri"')],
    task: Annotated[str | None, typer.Option("--task", help="Task name (default: the first)")] = None,
    tz: Annotated[str, typer.Option("--tz", help="Time zone the cron is read in, e.g. Europe/Berlin")] = "UTC",
    on: Annotated[list[str] | None, typer.Option("--on", help="Agent label to run on (repeatable)")] = None,
    agent: Annotated[int | None, typer.Option("--agent", help="Agent id to run on")] = None,
    version: Annotated[str | None, typer.Option(help="Version number, production or latest")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="Variable k=v (repeatable)")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="JSON input for every run")] = None,
    secret: Annotated[list[str] | None, typer.Option("--secret", help="Vault secret for the runs (repeatable)")] = None,
    description: Annotated[str, typer.Option(help="What the schedule is for")] = "",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run NAME's task whenever the cron expression fires (in --tz) on an agent carrying the --on labels."""
    body: dict[str, Any] = {"robot": name, "task": task, "cron": cron, "timezone": tz, "labels": on or [],
                            "agent_id": agent, "variables": _pairs(var), "secrets": secret or [],
                            "description": description}
    if version is not None:
        body["version"] = int(version) if version.isdigit() else version
    if input_file is not None:
        try:
            body["input"] = json.loads(input_file.read_text())
        except (OSError, ValueError) as exc:
            err_console.print(f"[red]--input: cannot read JSON from {input_file}: {exc}[/red]")
            raise typer.Exit(2) from None
    with client_from(server, token) as client:
        row = call(client.post, "rpa/schedules", body)
    if as_json:
        _print([row], True)
        return
    typer.echo(f"schedule {row['id']}: {name} task {row['task']!r} at {row['cron']!r} ({row['timezone']}); "
               f"next {row['next_fire_at']}")


def _act(action: str, schedule_id: int, server: str, token: str | None) -> dict[str, Any]:
    with client_from(server, token) as client:
        return call(client.post, f"rpa/schedules/{schedule_id}/{action}")


@schedule_app.command("pause")
def pause(schedule_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Stop firing until resumed."""
    _act("pause", schedule_id, server, token)
    typer.echo(f"schedule {schedule_id} paused")


@schedule_app.command("resume")
def resume(schedule_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Fire again from now on (times missed while paused are not made up)."""
    row = _act("resume", schedule_id, server, token)
    typer.echo(f"schedule {schedule_id} resumed; next {row['next_fire_at']}")


@schedule_app.command("rm")
def remove(schedule_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Delete a schedule (its past runs stay)."""
    with client_from(server, token) as client:
        call(client.delete, f"rpa/schedules/{schedule_id}")
    typer.echo(f"schedule {schedule_id} removed")
