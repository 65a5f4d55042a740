"""`ctower robot ...`: make, check and run robots locally; push, pull, promote and start them on the server."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from controltower.client import DEFAULT_SERVER
from controltower.console import JsonOpt, ServerOpt, TokenOpt, call, client_from, console, err_console, print_rows
from controltower.rpa.cli_inputs import input_paths, read_json, upload_files

robot_app = typer.Typer(no_args_is_help=True, help="Robots: develop locally, manage versions, run on agents.")

FINISHED = {"passed", "failed", "timed_out", "error", "lost", "cancelled"}


def register(app: typer.Typer) -> None:
    app.add_typer(robot_app, name="robot")
    from controltower.rpa.workitems_cli import queue_app

    app.add_typer(queue_app, name="queue")
    from controltower.rpa.schedules_cli import schedule_app
    from controltower.rpa.vault_cli import vault_app

    robot_app.add_typer(schedule_app, name="schedule")
    app.add_typer(vault_app, name="vault")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]{message}[/red]")
    return typer.Exit(code)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in values or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail(f"{option}: expected key=value, got {pair!r}", 2)
        result[key] = value
    return result


# -- development -------------------------------------------------------------------------------------


@robot_app.command("new")
def new(
    name: str,
    template: Annotated[str, typer.Option(help="files, web or python")] = "files",
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to create it (default: ./NAME)")] = None,
) -> None:
    """Create a working robot from a template."""
    from controltower.rpa.package import NAME_RE
    from controltower.rpa.templates import TEMPLATES, create

    if template not in TEMPLATES:
        raise _fail(f"--template: {template!r} is not one of {', '.join(TEMPLATES)}", 2)
    if not NAME_RE.match(name):
        raise _fail(f"NAME: {name!r} must be lowercase letters, digits, '.', '_' or '-'", 2)
    root = directory or Path(name)
    try:
        files = create(root, template, name)
    except FileExistsError as exc:
        raise _fail(str(exc), 1) from None
    for path in files:
        typer.echo(f"created {path}")
    typer.echo(f"next: ctower robot run {root}")


@robot_app.command("check")
def check(path: Path, as_json: JsonOpt = False) -> None:
    """Validate robot.yaml and run Robot Framework's dry run; each problem names file and line."""
    from controltower.rpa.check import check_package, errors

    spec, problems = check_package(path)
    if as_json:
        sys.stdout.write(json.dumps([p.model_dump() for p in problems], indent=2) + "\n")
    else:
        for problem in problems:
            colour = "red" if problem.severity == "error" else "yellow"
            console.print(f"[{colour}]{problem}[/{colour}]", highlight=False, soft_wrap=True)
    if spec is None or errors(problems):
        raise typer.Exit(1)
    if not as_json:
        console.print(f"[green]{spec.name}: OK[/green] ({len(spec.tasks)} task(s))")


@robot_app.command("run")
def run(
    path: Path,
    task: Annotated[str | None, typer.Option("--task", help="Task name (default: the first)")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="Variable k=v (repeatable)")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="JSON input for the run")] = None,
    file: Annotated[list[Path] | None, typer.Option("--file", help="Input file, put in input/ (repeatable)")] = None,
    secret: Annotated[list[str] | None, typer.Option(
        "--secret", help="Secret besides robot.yaml's (repeatable); value from CT_SECRET_<NAME>, else asked")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Working dir for the run (default: a new temp dir)")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds (default: robot.yaml's timeout)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a task locally exactly as an agent would: same environment builder, same outputs."""
    from controltower.config import Settings
    from controltower.rpa.envs import EnvCache, default_cache_dir
    from controltower.rpa.execute import run_task
    from controltower.rpa.package import PackageError, load_robot
    from controltower.rpa.vault_cli import local_secret_values

    try:
        spec = load_robot(path)
        if task is not None:
            spec.task(task)
    except PackageError as exc:
        raise _fail("\n".join(str(p) for p in exc.problems)) from None
    except KeyError as exc:
        raise _fail(f"--task: {exc.args[0]}", 2) from None
    input_data = None
    if input_file is not None:
        try:
            input_data = json.loads(input_file.read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"--input: cannot read JSON from {input_file}: {exc}", 2) from None
    input_files = input_paths(file, "--file")
    secrets = local_secret_values([*spec.secrets, *(secret or [])])
    settings = Settings()
    envs = EnvCache(settings.rpa_env_cache_dir or default_cache_dir(), settings.rpa_env_cache_max)
    workdir = out or Path(tempfile.mkdtemp(prefix=f"ctower-run-{spec.name}-"))
    printer = (lambda line: err_console.print(line, highlight=False, markup=False)) if as_json else typer.echo
    outcome = run_task(spec, path, workdir, envs, task=task, variables=_pairs(var, "--var"), input_data=input_data,
                       input_files=input_files, output_max_bytes=settings.rpa_data_max_bytes,
                       timeout_s=timeout, on_line=printer, secrets=secrets)
    summary = outcome.summary() | {"workdir": str(workdir)}
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        stats = outcome.stats or {}
        counts = f" ({stats.get('passed', 0)} passed, {stats.get('failed', 0)} failed)" if stats else ""
        colour = "green" if outcome.status == "passed" else "red"
        env = f"built in {outcome.env_build_s:.1f}s" if outcome.env_built else "reused"
        console.print(f"[{colour}]{outcome.status}[/{colour}]{counts} in {outcome.duration_s:.1f}s; "
                      f"environment {env}; "
                      f"outputs in {workdir}", highlight=False)
        if outcome.message:
            console.print(outcome.message, highlight=False, markup=False)
        if outcome.output is not None:
            typer.echo(f"output: {json.dumps(outcome.output)}")
    if outcome.status != "passed":
        raise typer.Exit(1)


# -- server ------------------------------------------------------------------------------------------


@robot_app.command("push")
def push(
    path: Path,
    note: Annotated[str, typer.Option(help="What changed")] = "",
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Upload the robot as a new version (refused with the reason if `check` fails on the server)."""
    from controltower.rpa.archive import UnsafePackage, pack
    from controltower.rpa.package import PackageError, load_robot

    try:
        spec = load_robot(path)
        data = pack(path, artifacts=spec.artifacts)
    except PackageError as exc:
        raise _fail("\n".join(str(p) for p in exc.problems)) from None
    except UnsafePackage as exc:
        raise _fail(str(exc)) from None
    with client_from(server, token) as client:
        version = call(client.request, "POST", "rpa/robots", content=data, params={"note": note},
                       headers={"Content-Type": "application/zip"})
    for warning in version.get("warnings", []):
        console.print(f"[yellow]{warning}[/yellow]", highlight=False)
    typer.echo(f"pushed {version['robot']} version {version['number']} ({version['sha256'][:12]}, "
               f"{len(version['files'])} files)")


@robot_app.command("pull")
def pull(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (a number, production or latest)")],
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to unpack (default: ./NAME)")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Fetch a version and unpack it (default: production, else latest)."""
    from controltower.rpa.archive import extract

    name, _, version = ref.partition("@")
    version = version or "production"
    with client_from(server, token) as client:
        if version == "production":
            robot = next((r for r in call(client.get, "rpa/robots") if r["name"] == name), None)
            if robot is None:
                raise _fail(f"no robot named {name!r}")
            version = str(robot["production_version"] or "latest")
        response = client.http.get(f"/api/v1/rpa/robots/{name}/versions/{version}/download")
    if response.status_code >= 400:
        raise _fail(f"error {response.status_code}: {response.json().get('detail', response.text)}")
    target = directory or Path(name)
    if target.exists() and any(target.iterdir()):
        raise _fail(f"{target} already exists and is not empty")
    entries = extract(response.content, target)
    typer.echo(f"pulled {name} version {response.headers.get('X-Robot-Version')} into {target} ({len(entries)} files)")


@robot_app.command("list")
def list_robots(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Robots on the server with their latest and production versions."""
    with client_from(server, token) as client:
        rows = call(client.get, "rpa/robots")
    print_rows(rows, ["name", "latest_version", "production_version", "description"], as_json)


@robot_app.command("versions")
def versions(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """A robot's versions, newest first: who pushed each and when."""
    with client_from(server, token) as client:
        rows = call(client.get, f"rpa/robots/{name}/versions")
    for row in rows:
        row["sha256"] = row["sha256"][:12]
        row["production"] = "yes" if row["production"] else ""
    print_rows(rows, ["number", "production", "sha256", "size", "pushed_by", "pushed_at", "note"], as_json)


@robot_app.command("diff")
def diff(name: str, a: int, b: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None,
         as_json: JsonOpt = False) -> None:
    """Files added, removed and changed between two versions, and the text diff."""
    with client_from(server, token) as client:
        result = call(client.get, f"rpa/robots/{name}/diff", a=a, b=b)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    for key, mark in (("added", "+"), ("removed", "-"), ("changed", "~")):
        for path in result[key]:
            typer.echo(f"{mark} {path}")
    typer.echo(result["diff"], nl=False)


@robot_app.command("promote")
def promote(name: str, version: int, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Make a version the one runs use by default."""
    with client_from(server, token) as client:
        result = call(client.post, f"rpa/robots/{name}/promote", {"version": version})
    typer.echo(f"{name}: production is now version {result['number']}")


@robot_app.command("rollback")
def rollback(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Put back the production version that was in force before the last promotion."""
    with client_from(server, token) as client:
        result = call(client.post, f"rpa/robots/{name}/rollback")
    typer.echo(f"{name}: production is back to version {result['number']}")


@robot_app.command("history")
def history(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Who pushed, promoted and rolled back what, and when."""
    with client_from(server, token) as client:
        rows = call(client.get, f"rpa/robots/{name}/history")
    print_rows(rows, ["at", "action", "version", "previous", "actor"], as_json)


@robot_app.command("start")
def start(
    name: str,
    task: Annotated[str | None, typer.Option("--task", help="Task name (default: the first)")] = None,
    on: Annotated[list[str] | None, typer.Option("--on", help="Agent label to run on (repeatable)")] = None,
    agent: Annotated[int | None, typer.Option("--agent", help="Agent id to run on")] = None,
    version: Annotated[str | None, typer.Option(help="Version number, production or latest")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="Variable k=v (repeatable)")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="JSON input for the run")] = None,
    file: Annotated[list[Path] | None, typer.Option("--file", help="Input file, put in input/ (repeatable)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the log until the run finishes")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
) -> None:
    """Start a run on an agent carrying the --on labels."""
    body: dict[str, Any] = {"robot": name, "task": task, "labels": on or [], "agent_id": agent,
                            "variables": _pairs(var, "--var")}
    if version is not None:
        body["version"] = int(version) if version.isdigit() else version
    if input_file is not None:
        body["input"] = read_json(input_file, "--input")
    paths = input_paths(file, "--file")
    with client_from(server, token) as client:
        body["files"] = upload_files(client, paths)
        run_row = call(client.post, "rpa/runs", body)
        typer.echo(f"run {run_row['id']} queued ({name} v{run_row['version']}, task {run_row['task']!r})")
        if wait:
            run_row = _follow(client, run_row["id"])
    if wait and run_row["status"] != "passed":
        raise typer.Exit(1)
    if wait and run_row.get("output") is not None:
        typer.echo(f"output: {json.dumps(run_row['output'])}")


def _follow(client: Any, run_id: int) -> dict[str, Any]:
    after = 0
    while True:
        for line in call(client.get, f"rpa/runs/{run_id}/log", after=after):
            typer.echo(line["line"])
            after = line["seq"]
        run_row = call(client.get, f"rpa/runs/{run_id}")
        if run_row["status"] in FINISHED and after >= run_row["log_lines"]:
            typer.echo(f"run {run_id}: {run_row['status']}" + (f": {run_row['message']}" if run_row["message"] else ""))
            return run_row
        time.sleep(0.5)


@robot_app.command("runs")
def runs(
    robot: Annotated[str | None, typer.Option(help="Only this robot's runs")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs in this status")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent runs, newest first."""
    with client_from(server, token) as client:
        rows = call(client.get, "rpa/runs", robot=robot, status=status)
    for row in rows:
        stats = row.get("stats") or {}
        row["counts"] = f"{stats.get('passed', 0)}/{stats.get('failed', 0)}" if stats else ""
    print_rows(rows, ["id", "robot", "version", "task", "status", "counts", "agent_id", "duration_s", "created_at"],
               as_json)


@robot_app.command("logs")
def logs(run_id: int, follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
         server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """A run's log lines; --follow keeps printing until it finishes."""
    with client_from(server, token) as client:
        if follow:
            _follow(client, run_id)
            return
        for line in call(client.get, f"rpa/runs/{run_id}/log", limit=10_000):
            typer.echo(line["line"])


@robot_app.command("fetch")
def fetch_file(run_id: int, name: str, out: Annotated[Path, typer.Option("--out")] = Path("."),
               server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Save one of a run's files (output.xml, log.html, report.html, artifacts/...)."""
    with client_from(server, token) as client:
        response = client.http.get(f"/api/v1/rpa/runs/{run_id}/files/{name}")
    if response.status_code >= 400:
        raise _fail(f"error {response.status_code}: {response.json().get('detail', response.text)}")
    target = out / Path(name).name if out.is_dir() else out
    target.write_bytes(response.content)
    typer.echo(f"saved {target}")

