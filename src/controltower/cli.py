"""The `ctower` command: Typer root with `up`, `agent`, `action`, `config`, and each subsystem's sub-app."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Annotated, Any

import typer

from controltower import __version__
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

app = typer.Typer(no_args_is_help=True, help="Control Tower: command and watch servers, devices, robots and processes.")

SUBSYSTEM_CLIS = ("monitor", "rpa", "iot")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Listen address (CT_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (CT_PORT)")] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="Data directory (CT_DATA_DIR)")] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="Do not start the local agent")] = False,
) -> None:
    """Start the server (API, dashboard, scheduler) and, unless --no-agent, a local agent."""
    from controltower.runner import run_server

    raise typer.Exit(run_server(host=host, port=port, data_dir=data_dir, local_agent=not no_agent))


agent_app = typer.Typer(help="Run an agent on this machine, or (`ctower agent enroll`) make an enrolment token.")
app.add_typer(agent_app, name="agent")


@agent_app.callback(invoke_without_command=True)
def agent_run(
    ctx: typer.Context,
    server: ServerOpt = DEFAULT_SERVER,
    token: Annotated[str | None, typer.Option("--token", envvar="CT_AGENT_TOKEN",
                                              help="Enrolment token (first run) or the agent's own token")] = None,
    name: Annotated[str | None, typer.Option(help="Agent name (default: hostname)")] = None,
    labels: Annotated[str, typer.Option(help="Comma-separated labels, e.g. desktop,finance")] = "",
    state_dir: Annotated[
        str | None, typer.Option("--state-dir", help="Where the agent keeps its token and outbox")
    ] = None,
    interval: Annotated[
        float | None, typer.Option(help="Resource sample interval, seconds (CT_AGENT_INTERVAL_S)")
    ] = None,
) -> None:
    """Run an agent: enrol with a one-time token, then heartbeat and run every installed plug-in."""
    if ctx.invoked_subcommand is not None:
        return
    from controltower.agent.shell import run_agent

    raise typer.Exit(run_agent(server=server, token=token, name=name, labels=labels, state_dir=state_dir,
                               interval=interval))


@agent_app.command("enroll")
def agent_enroll(
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    ttl: Annotated[float, typer.Option(help="Validity in hours")] = 24,
    label: Annotated[list[str] | None, typer.Option("--label", help="Label for the agent (repeatable)")] = None,
) -> None:
    """Print a one-time enrolment token for `ctower agent --server URL --token cte_...` on the new host."""
    with client_from(server, token) as client:
        result = call(client.post, "agents/enrollments", {"ttl_s": ttl * 3600, "labels": label or []})
    typer.echo(result["token"])


agents_app = typer.Typer(help="Enrolled agents.")
app.add_typer(agents_app, name="agents")


def _list_agents(server: str, token: str | None, as_json: bool) -> None:
    with client_from(server, token) as client:
        rows = call(client.get, "agents")
    if not as_json:
        rows = [{**row, "labels": ",".join(row["labels"])} for row in rows]
    print_rows(rows, ["id", "name", "labels", "capacity", "version", "last_seen"], as_json)


list_by_default(agents_app, _list_agents, "the enrolled agents")


tokens_app = typer.Typer(no_args_is_help=True, help="API tokens for people and scripts.")
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("add")
def tokens_add(
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator or viewer")] = "viewer",
    ttl_days: Annotated[float | None, typer.Option("--ttl-days", help="Expire after this many days")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Issue a token and print it (it is not shown again)."""
    with client_from(server, token) as client:
        result = call(client.post, "tokens", {"name": name, "role": role, "ttl_days": ttl_days})
    typer.echo(result["token"])


@tokens_app.command("list")
def tokens_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every token (never its value)."""
    with client_from(server, token) as client:
        rows = call(client.get, "tokens")
    print_rows(rows, ["id", "name", "role", "subject", "created_at", "expires_at", "revoked_at"], as_json)


@tokens_app.command("revoke")
def tokens_revoke(token_id: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Revoke a token by id."""
    with client_from(server, token) as client:
        call(client.delete, f"tokens/{token_id}")
    typer.echo(f"revoked token {token_id}")


users_app = typer.Typer(no_args_is_help=True, help="People who log in to the dashboard.")
app.add_typer(users_app, name="users")


def _read_password() -> str:
    """From a terminal: asked twice, hidden. Otherwise: the first line of stdin."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            err_console.print("[red]the passwords differ[/red]")
            raise typer.Exit(2)
        return first
    return sys.stdin.readline().rstrip("\r\n")


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator or viewer")] = "viewer",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Add a dashboard user; the password is read from stdin (e.g. `echo "$PW" | ctower users add mina`)."""
    password = _read_password()
    with client_from(server, token) as client:
        result = call(client.post, "users", {"name": name, "role": role, "password": password})
    typer.echo(f"added user {result['name']} ({result['role']})")


@users_app.command("list")
def users_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every dashboard user with its role."""
    with client_from(server, token) as client:
        rows = call(client.get, "users")
    print_rows(rows, ["name", "role", "has_password", "created_at"], as_json)


@users_app.command("set")
def users_set(
    name: str,
    role: Annotated[str | None, typer.Option(help="New role: admin, operator or viewer")] = None,
    password: Annotated[bool, typer.Option("--password", help="Read a new password from stdin")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Change a user's role and/or password."""
    body: dict[str, Any] = {"role": role}
    if password:
        body["password"] = _read_password()
    with client_from(server, token) as client:
        result = call(client.patch, f"users/{name}", body)
    typer.echo(f"user {result['name']} is {result['role']}")


@users_app.command("remove")
def users_remove(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Remove a dashboard user (and their API tokens)."""
    with client_from(server, token) as client:
        call(client.delete, f"users/{name}")
    typer.echo(f"removed user {name}")


action_app = typer.Typer(no_args_is_help=True, help="List and call actions.")
app.add_typer(action_app, name="action")


@action_app.command("list")
def action_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every registered action with its required role."""
    with client_from(server, token) as client:
        rows = call(client.get, "actions")
    print_rows(rows, ["name", "role", "description"], as_json)


@action_app.command("call")
def action_call(
    name: str,
    params: Annotated[
        list[str] | None, typer.Argument(help="key=value pairs; values parsed as JSON when they parse")
    ] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Invoke an action, e.g. `ctower action call http.request url=http://127.0.0.1:9000/`."""
    body: dict[str, Any] = {}
    for pair in params or []:
        key, sep, value = pair.partition("=")
        if not sep:
            err_console.print(f"[red]expected key=value, got {pair!r}[/red]")
            raise typer.Exit(2)
        try:
            body[key] = json.loads(value)
        except ValueError:
            body[key] = value
    with client_from(server, token) as client:
        result = call(client.post, f"actions/{name}", body)
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


@app.command("config")
def config_reference(as_json: JsonOpt = False) -> None:
    """Every CT_* setting with its default."""
    from controltower.config import settings_reference

    print_rows(settings_reference(), ["env", "default", "description"], as_json)


def _mount_subsystems() -> None:
    for name in SUBSYSTEM_CLIS:
        module = importlib.import_module(f"controltower.{name}.cli")
        module.register(app)


_mount_subsystems()


def main() -> None:
    app()
