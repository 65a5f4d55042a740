"""`ctower device ...`: the device side from the command line (`simulate` runs many simulated devices)."""

from __future__ import annotations

import time
from typing import Annotated
from urllib.parse import urlsplit

import typer

from controltower.client import DEFAULT_SERVER
from controltower.console import JsonOpt, ServerOpt, TokenOpt, call, client_from, err_console

device_app = typer.Typer(no_args_is_help=True, help="The device side: simulated devices over MQTT.")


@device_app.command("simulate")
def device_simulate(
    count: Annotated[int, typer.Option(min=1, help="How many devices")] = 10,
    rate: Annotated[float, typer.Option(min=0, help="Telemetry messages per second per sensor")] = 1.0,
    duration: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds (default: Ctrl-C)")]
    = None,
    cameras: Annotated[int, typer.Option(min=0, help="How many of the devices are cameras (answer `capture`)")] = 0,
    prefix: Annotated[str, typer.Option(help="Device names and ids: PREFIX-0000, PREFIX-0001, …")] = "sim",
    mqtt_host: Annotated[str | None, typer.Option(help="MQTT broker host (default: the server's host)")] = None,
    mqtt_port: Annotated[int, typer.Option(envvar="CT_MQTT_PORT", help="MQTT broker port")] = 1883,
    qos: Annotated[int, typer.Option(min=0, max=1, help="QoS of telemetry (files and answers use 1)")] = 1,
    server: ServerOpt = DEFAULT_SERVER,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run COUNT simulated devices (label `sim`, created or reused through the API) over MQTT: sensors send
    temperature and humidity, cameras answer `capture` with a new image; prints progress, then a summary."""
    from controltower.iot.simulate import Simulator, dumps, provision, summary

    if cameras > count:
        err_console.print("[red]--cameras:[/red] cannot be more than --count")
        raise typer.Exit(2)
    try:
        with client_from(server, token) as client:
            devices = call(provision, client, count, cameras, prefix)
    except ValueError as exc:
        err_console.print(f"[red]--prefix:[/red] {exc}")
        raise typer.Exit(2) from exc
    host = mqtt_host or urlsplit(server).hostname or "127.0.0.1"
    err_console.print(f"{len(devices)} devices ({cameras} cameras) connecting to MQTT {host}:{mqtt_port}")
    simulator = Simulator(devices, host, mqtt_port, rate, qos=qos).start()
    started = time.monotonic()
    deadline = started + duration if duration is not None else None
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())) if deadline is not None else 1.0)
            err_console.print(summary(simulator.snapshot(), time.monotonic() - started), highlight=False)
    except KeyboardInterrupt:
        pass
    finally:
        stats = simulator.snapshot()
        simulator.stop()
    elapsed = time.monotonic() - started
    typer.echo(dumps(stats, elapsed) if as_json else f"simulated {len(devices)} devices for {elapsed:.1f}s: "
               + summary(stats, elapsed))
    if stats["connected"] == 0:
        raise typer.Exit(1)
