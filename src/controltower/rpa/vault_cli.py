"""`ctower vault ...`: store, list and remove the robots' secrets; a value is read from a hidden prompt or stdin."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated
from urllib.parse import quote

import typer

from controltower.client import DEFAULT_SERVER
from controltower.console import (
    ServerOpt,
    TokenOpt,
    call,
    client_from,
    err_console,
    list_by_default,
    print_rows,
)

vault_app = typer.Typer(help="Secrets for robots: stored encrypted, handed only to the runs that declare them.")


def _list(server: str, token: str | None, as_json: bool) -> None:
    with client_from(server, token) as client:
        rows = call(client.get, "rpa/vault")
    print_rows(rows, ["name", "description", "updated_at", "updated_by"], as_json)


list_by_default(vault_app, _list, "the vault's secrets (names and descriptions, never values)")


def _read_value(from_stdin: bool) -> str:
    if from_stdin:
        value = sys.stdin.read()
        return value[:-1] if value.endswith("\n") else value
    if not sys.stdin.isatty():
        err_console.print("[red]no terminal for the hidden prompt: pipe the value in with --from-stdin[/red]")
        raise typer.Exit(2)
    value = getpass.getpass("Value: ")
    if getpass.getpass("Again: ") != value:
        err_console.print("[red]the two values differ; nothing stored[/red]")
        raise typer.Exit(1)
    return value


@vault_app.command("set")
def set_secret(
    name: str,
    description: Annotated[str | None, typer.Option(help="What the secret is for")] = None,
    from_stdin: Annotated[bool, typer.Option("--from-stdin", help="Read the value from stdin, not a prompt")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Store or replace a secret. The value is never an argument: a hidden prompt asks for it (or --from-stdin)."""
    value = _read_value(from_stdin)
    if not value:
        err_console.print("[red]value: empty; nothing stored[/red]")
        raise typer.Exit(1)
    body: dict[str, str] = {"value": value}
    if description is not None:
        body["description"] = description
    with client_from(server, token) as client:
        row = call(client.put, f"rpa/vault/{quote(name, safe='')}", body)
    typer.echo(f"stored {row['name']} (encrypted)")


@vault_app.command("rm")
def remove(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Delete a secret; runs that declare it are refused from then on."""
    with client_from(server, token) as client:
        call(client.delete, f"rpa/vault/{quote(name, safe='')}")
    typer.echo(f"removed {name}")


def local_secret_values(names: list[str]) -> dict[str, str]:
    """Secrets for `ctower robot run` (no server): each from CT_SECRET_<NAME>, else a hidden prompt."""
    from controltower.rpa.package import SECRET_NAME_RE
    from controltower.rpa.run_secrets import env_name

    values: dict[str, str] = {}
    for name in sorted(set(names)):
        if not SECRET_NAME_RE.match(name):
            err_console.print(f"[red]--secret: {name!r} is not a secret name (letters, digits, _)[/red]")
            raise typer.Exit(2)
        if env_name(name) in os.environ:
            values[name] = os.environ[env_name(name)]
        elif sys.stdin.isatty():
            values[name] = getpass.getpass(f"{name} (for this run only): ")
        else:
            err_console.print(f"[red]secret {name}: set {env_name(name)} or run in a terminal to be asked[/red]")
            raise typer.Exit(2)
    return values


@vault_app.command("rotate")
def rotate(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Re-encrypt every secret with the first key of the server's CT_VAULT_KEY, after which older keys can go."""
    with client_from(server, token) as client:
        result = call(client.post, "rpa/vault/rotate")
    typer.echo(f"re-encrypted {result['rotated']} secret(s) with the current key")
