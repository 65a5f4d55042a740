"""The benchmark's lean MQTT load generator against a real Mosquitto: what it sends is what a subscriber gets."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.mqtt_load import fleet_processes

from controltower.iot.simulate import SimDevice
from tests.iot.mqtt_support import SERVER_PASSWORD, SERVER_USER, DeviceClient, run_mosquitto
from tests.support import wait_for


def test_the_lean_fleet_publishes_acknowledged_telemetry_as_its_devices(tmp_path: Path) -> None:
    with run_mosquitto(tmp_path) as broker:
        devices = [SimDevice(f"lean{i}", f"token-{i}") for i in range(3)]
        for device in devices:
            broker.add_user(device.id, device.token)
        time.sleep(0.5)  # Mosquitto reloads the password file on SIGHUP
        server = DeviceClient(broker.port, SERVER_USER, SERVER_PASSWORD).connect()
        server.subscribe("ct/d/+/#")
        fleet = fleet_processes(devices, broker.port, rate=20, seed=1, processes=1).start()
        try:
            assert fleet.wait_connected(timeout=30)
            wait_for(lambda: fleet.snapshot()["acked"] >= 30, message="acknowledged telemetry")
        finally:
            fleet.stop()
        stats = fleet.snapshot()
        wait_for(lambda: sum(len(server.messages(f"ct/d/{d.id}/telemetry")) for d in devices) >= stats["acked"],
                 message="every acknowledged message at the subscriber")
        server.close()
    assert stats["connected"] == 3 and stats["status_acked"] == 3 and stats["acked"] <= stats["sent"]
    for device in devices:
        assert server.messages(f"ct/d/{device.id}/status") == [b"online"]
        telemetry = [json.loads(p) for p in server.messages(f"ct/d/{device.id}/telemetry")]
        assert telemetry and all(set(t["values"]) == {"temperature", "humidity"} and t["ts"] > 0 for t in telemetry)


def test_a_device_with_a_wrong_token_is_counted_and_the_wait_ends_without_its_timeout(tmp_path: Path) -> None:
    with run_mosquitto(tmp_path) as broker:
        broker.add_user("lean0", "right")
        broker.add_user("lean1", "right")
        time.sleep(0.5)
        devices = [SimDevice("lean0", "wrong"), SimDevice("lean1", "right")]
        fleet = fleet_processes(devices, broker.port, rate=1, seed=1, processes=2).start()
        try:
            started = time.monotonic()
            assert not fleet.wait_connected(timeout=120)
            waited = time.monotonic() - started
        finally:
            fleet.stop()
    stats = fleet.snapshot()
    assert (stats["errors"], stats["gave_up"], stats["connected"]) == (1, 1, 1)
    assert waited < 120  # it returned once the refused device gave up, not at the timeout
