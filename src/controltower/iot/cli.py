"""IoT's commands on the root CLI: `ctower devices ...` (registry, import, commands, dead letters)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from controltower.client import DEFAULT_SERVER
from controltower.console import JsonOpt, ServerOpt, TokenOpt, call, client_from, err_console, print_rows

devices_app = typer.Typer(no_args_is_help=True, help="IoT devices: registry, tokens, commands, dead letters.")

DEVICE_COLUMNS = ["id", "name", "type", "labels", "status", "connected_via", "last_seen_at"]


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "labels": ",".join(row.get("labels") or [])}


@devices_app.command("list")
def devices_list(
    label: Annotated[str | None, typer.Option(help="Only devices with this label")] = None,
    status: Annotated[str | None, typer.Option(help="online, offline or unknown")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered devices with their status."""
    with client_from(server, token) as client:
        rows = call(client.get, "devices", label=label, status=status)
    print_rows(rows if as_json else [_flat(r) for r in rows], DEVICE_COLUMNS, as_json)


@devices_app.command("add")
def devices_add(
    name: str,
    device_id: Annotated[str | None, typer.Option("--id", help="Device id (default: generated)")] = None,
    type_: Annotated[str, typer.Option("--type", help="Device type, e.g. sensor, camera")] = "generic",
    label: Annotated[list[str] | None, typer.Option("--label", help="Label (repeatable)")] = None,
    description: Annotated[str, typer.Option(help="Free text")] = "",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a device and print its id and token (the token is shown only now)."""
    body = {"name": name, "id": device_id, "type": type_, "labels": label or [], "description": description}
    with client_from(server, token) as client:
        result = call(client.post, "devices", {k: v for k, v in body.items() if v is not None})
    if as_json:
        _dump(result)
        return
    typer.echo(f"id:    {result['id']}\ntoken: {result['token']}")
    err_console.print("Keep the token: it is not shown again (MQTT username = id, password = token).")


@devices_app.command("show")
def devices_show(device_id: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """One device: status, latest telemetry and attributes."""
    with client_from(server, token) as client:
        data = call(client.get, f"devices/{device_id}")
    if as_json:
        _dump(data)
        return
    print_rows([_flat(data)], DEVICE_COLUMNS, False, title=data["name"])
    print_rows(data["telemetry"], ["key", "value", "ts"], False, title="telemetry")
    print_rows([{**a, "value": json.dumps(a["value"])} for a in data["attributes"]], ["key", "value", "ts"], False,
               title="attributes")


@devices_app.command("update")
def devices_update(
    device_id: str,
    name: Annotated[str | None, typer.Option(help="New name")] = None,
    type_: Annotated[str | None, typer.Option("--type", help="New type")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="Replace labels (repeatable)")] = None,
    description: Annotated[str | None, typer.Option(help="New description")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a device's name, type, labels or description."""
    body = {"name": name, "type": type_, "labels": label, "description": description}
    with client_from(server, token) as client:
        data = call(client.patch, f"devices/{device_id}", {k: v for k, v in body.items() if v is not None})
    print_rows([data] if as_json else [_flat(data)], DEVICE_COLUMNS, as_json)


@devices_app.command("delete")
def devices_delete(device_id: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Remove a device (its token stops working)."""
    with client_from(server, token) as client:
        call(client.delete, f"devices/{device_id}")
    typer.echo(f"deleted device {device_id}")


@devices_app.command("rotate-token")
def devices_rotate(device_id: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
                   as_json: JsonOpt = False) -> None:
    """Revoke the device's token and print a new one (shown only now)."""
    with client_from(server, token) as client:
        result = call(client.post, f"devices/{device_id}/token")
    if as_json:
        _dump(result)
    else:
        typer.echo(result["token"])


@devices_app.command("revoke-token")
def devices_revoke(device_id: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """The device can no longer connect or push until its token is rotated."""
    with client_from(server, token) as client:
        result = call(client.delete, f"devices/{device_id}/token")
    typer.echo(f"revoked {result['revoked']} token(s) of device {device_id}")


@devices_app.command("import")
def devices_import(
    file: Annotated[Path, typer.Argument(help="CSV with a header: name, id, type, labels, description")],
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create every device of a CSV file (all or none) and print their ids and tokens."""
    try:
        content = file.read_bytes()
    except OSError as exc:
        err_console.print(f"[red]cannot read {file}:[/red] {exc}")
        raise typer.Exit(2) from exc
    with client_from(server, token) as client:
        result = call(client.request, "POST", "devices/import", content=content, headers={"Content-Type": "text/csv"})
    print_rows(result["created"], ["id", "name", "token"], as_json)


@devices_app.command("command")
def devices_command(
    device_id: str,
    name: str,
    params: Annotated[str, typer.Option(help="JSON object of parameters")] = "{}",
    timeout: Annotated[float, typer.Option(help="Seconds from delivery to an answer")] = 30.0,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the answer")] = True,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Send a command; with --wait (default) print its outcome."""
    try:
        parsed = json.loads(params)
    except ValueError as exc:
        err_console.print(f"[red]--params is not JSON:[/red] {exc}")
        raise typer.Exit(2) from exc
    with client_from(server, token) as client:
        client.http.timeout = timeout + 60
        if wait:
            body = {"device": device_id, "name": name, "params": parsed, "timeout_s": timeout}
            result = call(client.post, "actions/iot.send_command", body)["result"]
        else:
            result = call(client.post, f"devices/{device_id}/commands",
                          {"name": name, "params": parsed, "timeout_s": timeout})
    _dump(result)
    if result.get("state") in ("failed", "timed_out", "expired"):
        raise typer.Exit(1)


@devices_app.command("dead-letters")
def devices_dead_letters(
    kind: Annotated[str | None, typer.Option(help="malformed_json, invalid, unknown_device, oversize, …")] = None,
    device: Annotated[str | None, typer.Option(help="Only this device id")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Messages ingestion refused, with the reason."""
    with client_from(server, token) as client:
        rows = call(client.get, "iot/dead-letters", kind=kind, device_id=device, limit=limit)
    print_rows(rows, ["id", "ts", "source", "device_id", "kind", "reason"], as_json)


def register(app: typer.Typer) -> None:
    from controltower.iot.device_cli import device_app

    app.add_typer(devices_app, name="devices")
    app.add_typer(device_app, name="device")
