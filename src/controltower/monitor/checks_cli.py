"""`ctower hosts` and `ctower checks`: inspect hosts; add, list, show, run and remove health checks."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from controltower.client import DEFAULT_SERVER
from controltower.console import JsonOpt, ServerOpt, TokenOpt, call, client_from, console, list_by_default, print_rows

hosts_app = typer.Typer(help="Monitored hosts: status, facts, latest CPU / memory / disk.")
checks_app = typer.Typer(
    no_args_is_help=True, help="Health checks: HTTP(S), TCP, ICMP ping, DNS, TLS expiry."
)

HOST_COLUMNS = ["name", "status", "last_seen", "cpu_percent", "memory_percent", "disk_percent", "os"]
CHECK_COLUMNS = [
    "name",
    "type",
    "target",
    "interval_s",
    "state",
    "last_latency_ms",
    "uptime_24h",
    "last_error",
]


def _dump(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _pairs(data: dict[str, Any], keys: list[str], title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in keys:
        if key in data:
            table.add_row(key, _fmt(data[key]))
    console.print(table)


# -- hosts ----------------------------------------------------------------------------------------


def _list_hosts(server: str, token: str | None, as_json: bool) -> None:
    with client_from(server, token) as client:
        rows = call(client.get, "monitor/hosts")
    if as_json:
        _dump(rows)
        return
    for row in rows:
        row["os"] = row.get("facts", {}).get("os_release")
        for key in ("cpu_percent", "memory_percent", "disk_percent"):
            row[key] = _fmt(row.get(key))
    print_rows(rows, HOST_COLUMNS, False, title="Hosts")


list_by_default(hosts_app, _list_hosts, "monitored hosts: status, last heartbeat, CPU / memory / disk")


@hosts_app.command("show")
def hosts_show(
    name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One host: facts, status history and the latest value of every metric."""
    with client_from(server, token) as client:
        host = call(client.get, f"monitor/hosts/{name}")
    if as_json:
        _dump(host)
        return
    _pairs(
        host,
        [
            "name",
            "status",
            "status_since",
            "last_seen",
            "last_metrics_at",
            "labels",
            "samples_received",
            "samples_dropped_by_agent",
        ],
        f"Host {name}",
    )
    _pairs(host["all_facts"], list(host["all_facts"]), "Facts")
    metrics = Table(title="Latest metrics")
    for col in ("metric", "labels", "value", "ts"):
        metrics.add_column(col)
    for m in host["metrics"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(m["labels"].items()) if k != "host")
        metrics.add_row(m["name"], labels, _fmt(m["value"]), m["ts"])
    console.print(metrics)
    print_rows(host["history"], ["ts", "from_status", "to_status"], False, title="Status history")


@hosts_app.command("rm")
def hosts_rm(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Forget a host's monitoring state (admin)."""
    with client_from(server, token) as client:
        call(client.delete, f"monitor/hosts/{name}")
    typer.echo(f"removed host {name}")


# -- checks ---------------------------------------------------------------------------------------


def _status_spec(value: str) -> Any:
    return int(value) if value.isdigit() else value


@checks_app.command("add")
def checks_add(
    name: str,
    check_type: Annotated[str, typer.Option("--type", help="http, tcp, icmp, dns or tls")],
    target: Annotated[str, typer.Option(help="URL (http), host:port (tcp, tls), host (icmp), name (dns)")],
    interval: Annotated[str, typer.Option(help="How often: seconds or 10s, 5m, 1h")] = "60s",
    timeout: Annotated[
        str | None, typer.Option(help="Probe timeout (default: interval, at most 10s)")
    ] = None,
    retries: Annotated[int, typer.Option(help="Failures beyond the first before DOWN")] = 0,
    expect_status: Annotated[
        str | None, typer.Option("--expect-status", help="http: 200, 200-299 or 200,301")
    ] = None,
    keyword: Annotated[str | None, typer.Option(help="http: text the body must contain")] = None,
    no_redirects: Annotated[
        bool, typer.Option("--no-redirects", help="http: do not follow redirects")
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="http, tls: do not verify certificates")
    ] = False,
    record_type: Annotated[
        str | None, typer.Option("--record-type", help="dns: A, AAAA, MX, TXT, ...")
    ] = None,
    expect: Annotated[str | None, typer.Option(help="dns: an answer that must be present")] = None,
    nameserver: Annotated[str | None, typer.Option(help="dns: ask this server (ip[:port])")] = None,
    min_days: Annotated[
        float | None, typer.Option("--min-days", help="tls: fewest days left that are OK")
    ] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it paused")] = False,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a check, e.g. `ctower checks add web --type http --target http://127.0.0.1:9000/`."""
    params: dict[str, Any] = {}
    if expect_status is not None:
        params["expect_status"] = _status_spec(expect_status)
    if keyword is not None:
        params["keyword"] = keyword
    if no_redirects:
        params["follow_redirects"] = False
    if insecure:
        params["verify"] = False
    if record_type is not None:
        params["record_type"] = record_type
    if expect is not None:
        params["expect"] = expect
    if nameserver is not None:
        params["nameserver"] = nameserver
    if min_days is not None:
        params["min_days"] = min_days
    body: dict[str, Any] = {
        "name": name,
        "type": check_type,
        "target": target,
        "interval": interval,
        "retries": retries,
        "params": params,
        "enabled": not disabled,
    }
    if timeout is not None:
        body["timeout"] = timeout
    with client_from(server, token) as client:
        check = call(client.post, "monitor/checks", body)
    if as_json:
        _dump(check)
        return
    typer.echo(
        f"added check {check['name']}: {check['type']} {check['target']} every {check['interval_s']:g}s"
    )


@checks_app.command("list")
def checks_list(server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every check with its state, latency and uptime over 24 h."""
    with client_from(server, token) as client:
        rows = call(client.get, "monitor/checks")
    if as_json:
        _dump(rows)
        return
    for row in rows:
        row["last_latency_ms"] = _fmt(row.get("last_latency_ms"))
        row["uptime_24h"] = "" if row.get("uptime_24h") is None else f"{row['uptime_24h']:.2f}%"
    print_rows(rows, CHECK_COLUMNS, False, title="Checks")


@checks_app.command("show")
def checks_show(
    name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One check: definition, state, uptime over 24 h / 7 d / 30 d and recent state changes."""
    with client_from(server, token) as client:
        check = call(client.get, f"monitor/checks/{name}")
    if as_json:
        _dump(check)
        return
    _pairs(
        check,
        [
            "name",
            "type",
            "target",
            "params",
            "interval_s",
            "timeout_s",
            "retries",
            "enabled",
            "state",
            "state_since",
            "last_run_at",
            "last_latency_ms",
            "last_error",
            "uptime_24h",
            "uptime_7d",
            "uptime_30d",
        ],
        f"Check {name}",
    )
    print_rows(check["history"], ["ts", "from_state", "to_state", "error"], False, title="State history")


@checks_app.command("results")
def checks_results(
    name: str,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 20,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The newest results of a check."""
    with client_from(server, token) as client:
        rows = call(client.get, f"monitor/checks/{name}/results", limit=limit)
    print_rows(rows, ["ts", "ok", "latency_ms", "error"], as_json, title=f"Results of {name}")


@checks_app.command("rm")
def checks_rm(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Delete a check with its results and history."""
    with client_from(server, token) as client:
        call(client.delete, f"monitor/checks/{name}")
    typer.echo(f"removed check {name}")


def _set_enabled(name: str, enabled: bool, server: str, token: str | None) -> None:
    with client_from(server, token) as client:
        call(client.patch, f"monitor/checks/{name}", {"enabled": enabled})
    typer.echo(f"{'resumed' if enabled else 'paused'} check {name}")


@checks_app.command("pause")
def checks_pause(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Stop running a check (its paused time counts neither as up nor down)."""
    _set_enabled(name, False, server, token)


@checks_app.command("resume")
def checks_resume(name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None) -> None:
    """Run a paused check again."""
    _set_enabled(name, True, server, token)


@checks_app.command("run")
def checks_run(
    name: str, server: ServerOpt = DEFAULT_SERVER, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Run a check now; exit status 1 when it fails."""
    with client_from(server, token) as client:
        result = call(client.post, f"monitor/checks/{name}/run")
    if as_json:
        _dump(result)
    else:
        latency = "" if result["latency_ms"] is None else f" in {result['latency_ms']:.1f} ms"
        verdict = "[green]OK[/green]" if result["ok"] else f"[red]FAILED[/red]: {result['error']}"
        console.print(f"{name}: {verdict}{latency} (state {result['state']})")
    if not result["ok"]:
        raise typer.Exit(1)
