"""`ctower queue ...`: work-item queues that feed a robot; add one, push items, watch them, retry dead ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from controltower.client import DEFAULT_SERVER
from controltower.console import JsonOpt, ServerOpt, TokenOpt, call, client_from, console, err_console, print_rows
from controltower.rpa.cli_inputs import input_paths, read_json, upload_files

queue_app = typer.Typer(no_args_is_help=True, help="Work-item queues: business items fed to a robot, one run each.")

STATUSES = ("pending", "in_progress", "done", "failed", "dead")


@queue_app.command("add")
def add(
    name: str,
    robot: Annotated[str, typer.Option("--robot", help="Robot whose task processes the items")],
    task: Annotated[str | None, typer.Option("--task", help="Task name (default: the first)")] = None,
    on: Annotated[list[str] | None, typer.Option("--on", help="Agent label to run on (repeatable)")] = None,
    agent: Annotated[int | None, typer.Option("--agent", help="Agent id to run on")] = None,
    version: Annotated[str | None, typer.Option(help="Version number, production or latest")] = None,
    max_attempts: Annotated[int, typer.Option("--max-attempts", help="Runs per item before it is dead")] = 3,
    backoff: Annotated[float, typer.Option("--backoff", help="Seconds to wait after a failed attempt "
                                                             "(doubles each time)")] = 30.0,
    concurrency: Annotated[int | None, typer.Option(help="Items in progress at once (default: no limit)")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per run (default: robot.yaml's)")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Create a queue that feeds a robot's task."""
    body: dict[str, Any] = {"name": name, "robot": robot, "task": task, "labels": on or [], "agent_id": agent,
                            "max_attempts": max_attempts, "retry_backoff_s": backoff, "concurrency": concurrency,
                            "timeout_s": timeout}
    if version is not None:
        body["version"] = int(version) if version.isdigit() else version
    with client_from(server, token) as client:
        queue = call(client.post, "rpa/queues", body)
    typer.echo(f"queue {queue['name']} feeds {queue['robot']}" + (f" task {task!r}" if task else "")
               + f" (max {queue['max_attempts']} attempts)")


@queue_app.command("push")
def push(
    name: str,
    item: Annotated[Path, typer.Argument(help="JSON file with the item's payload")],
    file: Annotated[list[Path] | None, typer.Option("--file", help="Input file for the item (repeatable)")] = None,
    batch: Annotated[bool, typer.Option("--batch", help="ITEM holds a JSON array: one item per element")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Add an item (or with --batch, many) to a queue."""
    payload = read_json(item, "ITEM")
    if batch and not isinstance(payload, list):
        err_console.print("[red]ITEM: with --batch the file must hold a JSON array[/red]")
        raise typer.Exit(2)
    paths = input_paths(file, "--file")
    with client_from(server, token) as client:
        files = upload_files(client, paths)
        payloads = payload if batch else [payload]
        body = {"items": [{"payload": p, "files": files} for p in payloads]}
        rows = call(client.post, f"rpa/queues/{name}/items", body)
    ids = ", ".join(str(r["id"]) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
    typer.echo(f"pushed {len(rows)} item(s) to {name}: {ids}")


def _list(server: str, token: str | None, as_json: bool) -> None:
    with client_from(server, token) as client:
        rows = call(client.get, "rpa/queues")
    if not as_json:
        for row in rows:
            row.update(row["counts"], running=row["counts"].get("in_progress", 0))
            row["target"] = ",".join(row["labels"]) or (f"agent {row['agent_id']}" if row["agent_id"] else "")
    print_rows(rows, ["name", "robot", "task", "target", "pending", "running", "done", "failed", "dead"], as_json)


@queue_app.command("list")
def list_queues(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Queues with their items per status."""
    _list(server, token, as_json)


@queue_app.command("items")
def items(
    name: str,
    status: Annotated[str | None, typer.Option(help=f"Only items in this status ({', '.join(STATUSES)})")] = None,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A queue's items, oldest first: status, attempts, last error, output."""
    with client_from(server, token) as client:
        page = call(client.get, f"rpa/queues/{name}/items", status=status, limit=limit)
    if as_json:
        sys.stdout.write(json.dumps(page["items"], indent=2) + "\n")
        return
    for row in page["items"]:
        row["payload"] = json.dumps(row["payload"])[:60]
        row["output"] = "" if row["output"] is None else json.dumps(row["output"])[:60]
        row["last_error"] = (row["last_error"] or "")[:80]
    print_rows(page["items"], ["id", "status", "attempts", "run_id", "payload", "output", "last_error"], False)
    console.print(" ".join(f"{k}: {v}" for k, v in page["counts"].items()), highlight=False)


@queue_app.command("retry")
def retry(
    name: str,
    item_id: int,
    payload: Annotated[Path | None, typer.Option("--payload", help="JSON file with a corrected payload")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Send a dead item back to the queue with fresh attempts (and a corrected payload)."""
    body = {"payload": read_json(payload, "--payload")} if payload is not None else {}
    with client_from(server, token) as client:
        row = call(client.post, f"rpa/queues/{name}/items/{item_id}/retry", body)
    typer.echo(f"item {row['id']}: {row['status']}")


@queue_app.command("remove")
def remove(name: str, item_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Delete one item (not while it is in progress)."""
    with client_from(server, token) as client:
        call(client.delete, f"rpa/queues/{name}/items/{item_id}")
    typer.echo(f"item {item_id} deleted")


@queue_app.command("delete")
def delete(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Delete a queue and all its items."""
    with client_from(server, token) as client:
        call(client.delete, f"rpa/queues/{name}")
    typer.echo(f"queue {name} deleted")
