"""The server as a privileged client of a real Mosquitto (CT_MQTT_URL): telemetry in, commands out, ACL."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.iot.mqtt_support import SERVER_PASSWORD, SERVER_USER, DeviceClient, Mosquitto
from tests.support import RunningServer, free_port, start_server, wait_for


@pytest.fixture(scope="module")
def srv(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    url = f"mqtt://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{mosquitto.port}"
    server = start_server(tmp_path_factory.mktemp("iot-ext") / "data", env={"CT_MQTT_URL": url})
    yield server
    server.stop()


def _enrol(srv: RunningServer, mosquitto: Mosquitto, name: str) -> dict:
    with srv.client() as admin:
        dev = admin.post("devices", {"name": name})
    mosquitto.add_user(dev["id"], dev["token"])
    return dev


def _connect(mosquitto: Mosquitto, dev: dict) -> DeviceClient:
    def attempt() -> DeviceClient | None:
        client = DeviceClient(mosquitto.port, dev["id"], dev["token"], will=True).connect()
        if client.connect_result[0] == 0:
            return client
        client.close()
        return None

    return wait_for(attempt, message="device login after the password file reload")


def test_telemetry_status_and_commands_through_mosquitto(srv: RunningServer, mosquitto: Mosquitto) -> None:
    dev = _enrol(srv, mosquitto, "ext-dev")
    with srv.client() as admin:
        queued = admin.post(f"devices/{dev['id']}/commands", {"name": "ping"})
    client = _connect(mosquitto, dev)
    client.subscribe(f"ct/d/{dev['id']}/commands")
    client.client.publish(f"ct/d/{dev['id']}/status", b"online", qos=1, retain=True).wait_for_publish(10)
    client.publish("telemetry", json.dumps({"values": {"level": 3.5}}).encode())
    client.publish("telemetry", b"garbage")
    with srv.client() as admin:
        detail = wait_for(lambda: (d := admin.get(f"devices/{dev['id']}"))["telemetry"] and d, message="telemetry")
        assert detail["status"] == "online" and detail["telemetry"][0]["value"] == 3.5
        [body] = wait_for(lambda: client.messages(f"ct/d/{dev['id']}/commands"), message="command delivered")
        assert json.loads(body)["id"] == queued["id"]
        client.publish(f"responses/{queued['id']}", b'{"result": "pong"}')
        wait_for(lambda: admin.get(f"iot/commands/{queued['id']}")["state"] == "succeeded", message="answered")
        letters = wait_for(lambda: admin.get("iot/dead-letters", device_id=dev["id"]), message="dead letter")
        assert letters[0]["kind"] == "malformed_json"
        client.drop()  # no DISCONNECT: Mosquitto publishes the last will
        wait_for(lambda: admin.get(f"devices/{dev['id']}")["status"] == "offline", message="offline by last will")


def test_mosquitto_acl_keeps_devices_apart(srv: RunningServer, mosquitto: Mosquitto) -> None:
    a, b = _enrol(srv, mosquitto, "ext-a"), _enrol(srv, mosquitto, "ext-b")
    client_a = _connect(mosquitto, a)
    client_b = _connect(mosquitto, b)
    client_b.subscribe(f"ct/d/{b['id']}/commands")
    client_b.client.publish(f"ct/d/{b['id']}/status", b"online", qos=1).wait_for_publish(10)
    client_a.subscribe(f"ct/d/{b['id']}/commands")  # Mosquitto grants it, then delivers nothing
    client_a.client.publish(f"ct/d/{b['id']}/telemetry", json.dumps({"values": {"spoof": 1}}), qos=1)
    with srv.client() as admin:
        sent = admin.post(f"devices/{b['id']}/commands", {"name": "secret", "one_way": True})
        wait_for(lambda: client_b.messages(f"ct/d/{b['id']}/commands"), message="B got its command")
        wait_for(lambda: admin.get(f"iot/commands/{sent['id']}")["state"] == "succeeded", message="one-way done")
        assert admin.get(f"devices/{b['id']}")["telemetry"] == []
    assert client_a.messages(f"ct/d/{b['id']}/commands") == []
    client_a.close()
    client_b.close()


def test_readyz_is_503_while_the_external_broker_is_unreachable(mosquitto: Mosquitto, tmp_path: Path) -> None:
    nobody = free_port()
    url = f"mqtt://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{nobody}"
    server = start_server(tmp_path / "data", env={"CT_MQTT_URL": url}, wait_ready=False)
    try:
        answer = wait_for(lambda: (r := httpx.get(server.url + "/readyz", timeout=5)).status_code == 503 and r,
                          message="503 from /readyz")
        assert answer.json()["checks"] == {"started": True, "database": True, "mqtt": False}
    finally:
        server.stop()


def test_what_a_killed_server_had_received_but_not_stored_is_delivered_again(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Messages are acknowledged to the broker only once stored, so a SIGKILL loses none of them."""
    url = f"mqtt://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{mosquitto.port}"
    server = start_server(tmp_path / "data", env={"CT_MQTT_URL": url})
    try:
        dev = _enrol(server, mosquitto, "ext-killed")
        client = _connect(mosquitto, dev)
        count, since = 20_000, time.time() - 86_400

        def stored() -> int:
            with sqlite3.connect(tmp_path / "data" / "ctower.db") as db:
                return db.execute("SELECT count(*) FROM samples JOIN series ON series.id = samples.series_id "
                                  "WHERE series.name = 'iot.seq'").fetchone()[0]

        infos = [client.client.publish(f"ct/d/{dev['id']}/telemetry",
                                       b'{"ts": %d, "values": {"seq": %d}}' % (since + i, i), qos=1)
                 for i in range(count)]
        wait_for(lambda: stored() > 0, timeout=60, message="the first messages stored")
        server.kill()  # mid-stream: some received, not yet stored
        assert stored() < count
        for info in infos:
            info.wait_for_publish(60)  # every message is the broker's
        client.close()
        server.start()
        wait_for(lambda: stored() == count, timeout=120, message=f"all {count} samples (have {stored()})")
    finally:
        server.stop()
