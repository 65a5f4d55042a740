"""IoT benchmarks: telemetry persisted end to end from 1,000 simulated devices (embedded broker and
Mosquitto), command round trips, and the memory an idle device costs the embedded broker."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import psutil
from sqlalchemy import create_engine, text
from tests.support import RunningServer, free_port, start_server, wait_for

from bench._children import ChildProcesses
from bench._meter import ProcessMeter
from bench.mqtt_load import fleet_processes
from controltower.client import Client
from controltower.iot.simulate import SimDevice, Simulator, provision

SERVER_USER, SERVER_PASSWORD = "ctower", "bench-secret"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


@contextmanager
def _mosquitto(root: Path, devices: list[SimDevice]) -> Iterator[tuple[int, int]]:
    """A real Mosquitto with a password file for the server and every device, and the documented ACL."""
    passwd, acl, conf = root / "passwd", root / "acl", root / "mosquitto.conf"
    lines = [f"{SERVER_USER}:{SERVER_PASSWORD}", *(f"{d.id}:{d.token}" for d in devices)]
    passwd.write_text("\n".join(lines) + "\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=600)  # hash them in place
    acl.write_text(f"user {SERVER_USER}\ntopic readwrite ct/#\n\npattern readwrite ct/d/%u/#\n")
    port = free_port()
    # max_queued_messages: the server's persistent session may fall behind for a moment under a burst;
    # Mosquitto's default (1,000 per client) would drop the excess instead of queueing it (docs/iot.md).
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
                    "persistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\nuser root\n")
    with open(root / "mosquitto.log", "wb") as log:  # a pipe nobody reads would fill and stall Mosquitto
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(port), message="mosquitto listening")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def _fleet_on_mosquitto(root: Path, devices: int) -> Iterator[tuple[list[SimDevice], int, int, str]]:
    """`devices` created through a server without MQTT (so Mosquitto starts with every password), then
    Mosquitto: the fleet, its port and pid, and the server's CT_MQTT_URL."""
    setup = start_server(root / "data", env={"CT_MQTT_PORT": "0"})
    with setup.client() as admin:
        fleet = provision(admin, devices)
    setup.stop()
    with _mosquitto(root, fleet) as (port, broker_pid):
        yield fleet, port, broker_pid, f"mqtt://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{port}"


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_below_ephemeral() -> int:
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(20_000, low), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _simulate_in_child(conn: Connection, fleet: list[SimDevice], port: int, rate: float, qos: int, seed: int) -> None:
    """A child process's simulator, answering `snapshot` and `stop` over its pipe."""
    sim = Simulator(fleet, port=port, rate=rate, qos=qos, seed=seed).start()
    while True:
        command = conn.recv()
        if command == "stop":
            sim.stop()
            conn.send(sim.snapshot())
            return
        conn.send(sim.snapshot())


def simulator_processes(fleet: list[SimDevice], port: int, rate: float, qos: int, seed: int,
                        processes: int) -> ChildProcesses:
    """The fleet split over `processes` simulator processes (one simulator thread tops out near one core)."""
    parts = [(fleet[i::processes], port, rate, qos, seed + i) for i in range(processes)]
    return ChildProcesses(_simulate_in_child, parts, len(fleet))


def _stored_messages(db_url: str) -> int:
    """Messages persisted: each device's count is committed with its messages' samples. (Counting samples
    would merge two messages a lagging simulated device sent within the same millisecond.)"""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        count = conn.execute(text("SELECT coalesce(sum(messages_received), 0) FROM iot_devices")).scalar_one()
    engine.dispose()
    return int(count)


def _drain(db_url: str, target: int, quiet_s: float = 30.0, limit_s: float = 300.0) -> tuple[int, float]:
    """Wait until `target` messages are stored, or the count stops growing; returns it and the monotonic
    time it last grew."""
    last, last_change = _stored_messages(db_url), time.monotonic()
    deadline = last_change + limit_s
    while last < target and time.monotonic() - last_change < quiet_s and time.monotonic() < deadline:
        time.sleep(0.5)
        now = _stored_messages(db_url)
        if now != last:
            last, last_change = now, time.monotonic()
    return last, last_change


def telemetry(broker: str, devices: int, rate: float, seconds: float, qos: int = 1,
              processes: int = 1, generator: str = "simulator") -> dict[str, object]:
    """`devices` sensors each sending `rate` messages/s for `seconds` (from `processes` load generator
    processes: the product's simulator, or `lean` ready-made QoS 1 packets); messages/s stored end to end."""
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        db_url = f"sqlite:///{root / 'data' / 'ctower.db'}"
        if broker == "embedded":
            srv = start_server(root / "data")
            return _telemetry_run(srv, srv, int(srv.env["CT_MQTT_PORT"]), None, devices, rate, seconds, qos,
                                  db_url, broker, processes=processes, generator=generator)
        with _fleet_on_mosquitto(root, devices) as (fleet, port, broker_pid, url):
            srv = start_server(root / "data", env={"CT_MQTT_URL": url})
            return _telemetry_run(srv, srv, port, fleet, devices, rate, seconds, qos, db_url, broker, broker_pid,
                                  processes, generator)


def _telemetry_run(srv: RunningServer, admin_srv: RunningServer, port: int, fleet: list[SimDevice] | None,
                   devices: int, rate: float, seconds: float, qos: int, db_url: str, broker: str,
                   broker_pid: int | None = None, processes: int = 1,
                   generator: str = "simulator") -> dict[str, object]:
    try:
        if fleet is None:
            with admin_srv.client() as admin:
                fleet = provision(admin, devices)
        sim: Simulator | ChildProcesses
        if generator == "lean":
            if qos != 1:
                raise ValueError("the lean generator publishes with QoS 1 only")
            sim = fleet_processes(fleet, port, rate, seed=1, processes=processes)
        elif processes > 1:
            sim = simulator_processes(fleet, port, rate, qos, seed=1, processes=processes)
        else:
            sim = Simulator(fleet, port=port, rate=rate, qos=qos, seed=1)
        sim.start()
        if not sim.wait_connected(timeout=300):
            raise RuntimeError(f"only {sim.snapshot()['connected']} of {devices} devices connected")
        wait_for(lambda: sim.snapshot()["sent"] > 0, timeout=30, message="first telemetry")
        base_stored = _stored_messages(db_url)
        # Acknowledged by the broker (QoS 1): what the broker has taken and must deliver. "sent" alone would
        # also count what was still in a simulated client's memory when the run stopped.
        ack_key = "acked" if qos else "sent"
        base_sent = sim.snapshot()[ack_key]
        server = ProcessMeter(srv.proc.pid)
        broker_meter = ProcessMeter(broker_pid) if broker_pid else None
        load = [ProcessMeter(pid) for pid in [os.getpid(), *getattr(sim, "pids", [])]]
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            time.sleep(1.0)
            server.sample()
        load_cpu = round(sum(meter.stop()["cpu_percent"] for meter in load), 1)  # before its processes end
        sim.stop()
        stopped = time.monotonic()
        sent = sim.snapshot()[ack_key] - base_sent
        stored, last_growth = _drain(db_url, base_stored + sent)
        elapsed = max(stopped, last_growth) - started
        server_figures = server.stop()
        persisted = stored - base_stored
        result: dict[str, object] = {
            "benchmark": "iot-telemetry",
            "broker": broker,
            "devices": devices,
            "qos": qos,
            "offered_per_s": round(devices * rate),
            "sent_and_acked": sent,
            "stored": persisted,
            "lost": max(0, sent - persisted),
            "seconds": round(elapsed, 1),
            "messages_per_s": round(persisted / elapsed),
            "drain_s": round(max(0.0, last_growth - stopped), 1),
            "server_cpu_percent": round(server_figures["cpu_s"] / elapsed * 100, 1),
            "server_rss_mb": server_figures["rss_max_mb"],
            "load_generator": generator,
            "load_generator_processes": processes,
            "load_generator_cpu_percent": load_cpu,
            "machine": _machine(),
        }
        if broker_meter is not None:
            figures = broker_meter.stop()
            result["mosquitto_cpu_percent"] = round(figures["cpu_s"] / elapsed * 100, 1)
            result["mosquitto_rss_mb"] = figures["rss_max_mb"]
        return result
    finally:
        srv.stop()
        shutil.copy(srv.log_path, Path(tempfile.gettempdir()) / "ctower-bench-iot-server.log")


def backlog(devices: int, rate: float, seconds: float, qos: int = 1) -> dict[str, object]:
    """The server's own capacity through Mosquitto: the devices publish while the server is stopped (its
    persistent session makes Mosquitto keep everything), then the server starts and drains the backlog with
    no load generator competing for the two cores; messages/s from the first message stored to the last."""
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        db_url = f"sqlite:///{root / 'data' / 'ctower.db'}"
        with _fleet_on_mosquitto(root, devices) as (fleet, port, broker_pid, url):
            # A port outside the ephemeral range: the 1,000 devices connecting while it is stopped could take it.
            srv = RunningServer(data_dir=root / "data", port=_port_below_ephemeral(), env={"CT_MQTT_URL": url},
                                args=["--no-agent"])
            srv.start()  # ready = subscribed with its persistent session
            srv.stop()
            try:
                with Simulator(fleet, port=port, rate=rate, qos=qos, seed=1) as sim:
                    if not sim.wait_connected(timeout=300):
                        raise RuntimeError(f"only {sim.snapshot()['connected']} of {devices} devices connected")
                    time.sleep(seconds)
                # Telemetry the devices sent (status messages are acknowledged too, and are not counted as
                # stored): anything a device had not handed over when it stopped would count as lost.
                queued = sim.snapshot()["sent"]
                before = _stored_messages(db_url)
                srv.start()
                first = wait_for(lambda: (n := _stored_messages(db_url)) > before and n, timeout=120,
                                 message="first message stored")
                started = time.monotonic()
                server = ProcessMeter(srv.proc.pid)
                broker_meter = ProcessMeter(broker_pid)
                stored, last_growth = _drain(db_url, before + queued, quiet_s=10)
                elapsed = last_growth - started
                server_figures, broker_figures = server.stop(), broker_meter.stop()
            finally:
                srv.stop()
                shutil.copy(srv.log_path, Path(tempfile.gettempdir()) / "ctower-bench-iot-server.log")
    return {
        "benchmark": "iot-backlog",
        "broker": "mosquitto",
        "devices": devices,
        "qos": qos,
        "sent_while_stopped": queued,
        "stored": stored - before,
        "lost": max(0, queued - (stored - before)),
        "seconds": round(elapsed, 1),
        "messages_per_s": round((stored - first) / elapsed),
        "server_cpu_percent": round(server_figures["cpu_s"] / elapsed * 100, 1),
        "server_rss_mb": server_figures["rss_max_mb"],
        "mosquitto_cpu_percent": round(broker_figures["cpu_s"] / elapsed * 100, 1),
        "machine": _machine(),
    }


def commands(devices: int, count: int) -> dict[str, object]:
    """`count` commands, one after another, to idle devices on the embedded broker through the
    `iot.send_command` action: from the API call to the device's answer stored and returned."""
    with TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp) / "data")
        try:
            with srv.client() as admin:
                fleet = provision(admin, devices)
            with Simulator(fleet, port=int(srv.env["CT_MQTT_PORT"]), rate=0.0, seed=2) as sim:
                if not sim.wait_connected(timeout=300):
                    raise RuntimeError("devices did not connect")
                rtts: list[float] = []
                with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.token}"},
                                  timeout=30) as http:
                    for i in range(count):
                        device = fleet[(i * 7919) % len(fleet)].id
                        t0 = time.perf_counter()
                        answer = http.post("/api/v1/actions/iot.send_command",
                                           json={"device": device, "name": "ping", "timeout_s": 10})
                        rtts.append((time.perf_counter() - t0) * 1000)
                        answer.raise_for_status()
                        state = answer.json()["result"]["state"]
                        if state != "succeeded":
                            raise RuntimeError(f"command {i} to {device} ended {state}")
            q = statistics.quantiles(rtts, n=100)
            return {
                "benchmark": "iot-commands",
                "devices": devices,
                "commands": count,
                "rtt_ms_p50": round(q[49], 1),
                "rtt_ms_p99": round(q[98], 1),
                "rtt_ms_max": round(max(rtts), 1),
                "machine": _machine(),
            }
        finally:
            srv.stop()


def idle(devices: int) -> dict[str, object]:
    """Server memory with `devices` idle devices connected to the embedded broker, per device."""
    with TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp) / "data")
        try:
            with srv.client() as admin:
                fleet = provision(admin, devices)
            proc = psutil.Process(srv.proc.pid)
            time.sleep(2)
            before = proc.memory_info().rss
            with Simulator(fleet, port=int(srv.env["CT_MQTT_PORT"]), rate=0.0, seed=3) as sim:
                if not sim.wait_connected(timeout=600):
                    raise RuntimeError(f"only {sim.snapshot()['connected']} of {devices} connected")
                with Client(srv.url, srv.token) as admin:
                    online = wait_for(lambda: (n := len(admin.get("devices", status="online")))
                                      >= devices and n, timeout=120, message="all online")
                time.sleep(5)
                cpu = ProcessMeter(srv.proc.pid)
                time.sleep(10)
                idle_cpu = cpu.stop()["cpu_percent"]
                after = proc.memory_info().rss
            per_device_kb = (after - before) / devices / 1024
            return {
                "benchmark": "iot-idle",
                "devices": devices,
                "online": online,
                "server_rss_before_mb": round(before / 2**20, 1),
                "server_rss_after_mb": round(after / 2**20, 1),
                "kb_per_device": round(per_device_kb, 1),
                "server_cpu_percent_idle": idle_cpu,
                "machine": _machine(),
            }
        finally:
            srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    tel = sub.add_parser("telemetry")
    tel.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded")
    tel.add_argument("--devices", type=int, default=1000)
    tel.add_argument("--rate", type=float, default=5.0, help="messages/s per device")
    tel.add_argument("--seconds", type=float, default=30)
    tel.add_argument("--qos", type=int, choices=[0, 1], default=1)
    tel.add_argument("--processes", type=int, default=1, help="load generator processes sharing the fleet")
    tel.add_argument("--generator", choices=["simulator", "lean"], default="simulator",
                     help="paho clients of `ctower device simulate`, or ready-made QoS 1 packets (bench/mqtt_load.py)")
    blg = sub.add_parser("backlog")
    blg.add_argument("--devices", type=int, default=1000)
    blg.add_argument("--rate", type=float, default=10.0, help="messages/s per device while the server is stopped")
    blg.add_argument("--seconds", type=float, default=30)
    blg.add_argument("--qos", type=int, choices=[0, 1], default=1)
    cmd = sub.add_parser("commands")
    cmd.add_argument("--devices", type=int, default=1000)
    cmd.add_argument("--count", type=int, default=1000)
    idl = sub.add_parser("idle")
    idl.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    if args.what == "telemetry":
        result = telemetry(args.broker, args.devices, args.rate, args.seconds, args.qos, args.processes,
                           args.generator)
    elif args.what == "backlog":
        result = backlog(args.devices, args.rate, args.seconds, args.qos)
    elif args.what == "commands":
        result = commands(args.devices, args.count)
    else:
        result = idle(args.devices)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
