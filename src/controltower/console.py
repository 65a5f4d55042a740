"""What every CLI sub-app shares: server/token options, API calls that exit cleanly, tables or --json."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controltower.client import DEFAULT_SERVER, ApiError, Client, find_token

console = Console()
err_console = Console(stderr=True)

ServerOpt = Annotated[str, typer.Option("--server", envvar="CT_SERVER", help="Server URL")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="API token (else CT_TOKEN, else <data-dir>/admin-token)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


Lister = Callable[[str, str | None, bool], None]


def list_by_default(app: typer.Typer, lister: Lister, description: str) -> None:
    """Make `ctower X` (no command) and `ctower X list` both run `lister(server, token, as_json)`."""

    def main(
        ctx: typer.Context, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False
    ) -> None:
        if ctx.invoked_subcommand is None:
            lister(server, token, as_json)

    def list_(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        lister(server, token, as_json)

    main.__doc__ = f"Without a command: list {description}."
    list_.__doc__ = f"List {description}."
    app.callback(invoke_without_command=True)(main)
    app.command("list")(list_)


def client_from(server: str, token: str | None) -> Client:
    return Client(server, find_token(token))


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an API call; print the server's explanation and exit 1 on an error instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        err_console.print(f"[red]error {exc.status}:[/red] {exc.detail}")
        raise typer.Exit(1) from exc
    except OSError as exc:
        err_console.print(f"[red]cannot reach the server:[/red] {exc}")
        raise typer.Exit(1) from exc


def print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool, title: str | None = None) -> None:
    """A rich table of `columns`, or the full rows as JSON with --json."""
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)
