"""The embedded broker end to end: real paho devices, ACL, status, commands (offline queue, restart), interop."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.iot.mqtt_support import DeviceClient
from tests.support import RunningServer, free_port, start_server, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("iot-mqtt") / "data")
    yield server
    server.stop()


def _mqtt_port(srv: RunningServer) -> int:
    return int(srv.env["CT_MQTT_PORT"])


def _new_device(srv: RunningServer, name: str) -> dict:
    with srv.client() as admin:
        return admin.post("devices", {"name": name, "labels": ["mqtt-test"]})


def _device(srv: RunningServer, device_id: str) -> dict:
    with srv.client() as admin:
        return admin.get(f"devices/{device_id}")


def test_telemetry_status_and_dead_letters_over_mqtt(srv: RunningServer) -> None:
    dev = _new_device(srv, "mqtt-sensor")
    client = DeviceClient(_mqtt_port(srv), dev["id"], dev["token"]).connect()
    wait_for(lambda: _device(srv, dev["id"])["status"] == "online", message="online")
    client.publish("telemetry", b'{"values": ')  # malformed
    client.publish("telemetry", json.dumps({"values": {"humidity": "wet"}, "ts": "soon"}).encode())
    client.publish("telemetry", json.dumps({"values": {"humidity": 41.5, "door": "open"}}).encode())
    detail = wait_for(lambda: (d := _device(srv, dev["id"]))["telemetry"] and d, message="telemetry stored")
    assert [(t["key"], t["value"]) for t in detail["telemetry"]] == [("humidity", 41.5)]
    assert {a["key"]: a["value"] for a in detail["attributes"]} == {"door": "open"}
    with srv.client() as admin:
        letters = admin.get("iot/dead-letters", device_id=dev["id"])
    assert sorted(x["kind"] for x in letters) == ["invalid", "malformed_json"]
    assert all(x["source"] == "mqtt" and x["topic"] == f"ct/d/{dev['id']}/telemetry" for x in letters)
    client.close()
    wait_for(lambda: _device(srv, dev["id"])["status"] == "offline", message="offline")
    with srv.client() as admin:
        events = admin.get("events", pattern="iot.device.*", limit=100)
    mine = [e["topic"] for e in events if e["payload"].get("device") == dev["id"]]
    assert mine == ["iot.device.created", "iot.device.online", "iot.device.offline"]


def test_acl_keeps_devices_to_their_own_topics(srv: RunningServer) -> None:
    a, b = _new_device(srv, "acl-a"), _new_device(srv, "acl-b")
    wrong = DeviceClient(_mqtt_port(srv), a["id"], b["token"])
    wrong.client.connect("127.0.0.1", _mqtt_port(srv))
    wrong.client.loop_start()
    wait_for(lambda: wrong.connect_result, message="CONNACK")
    assert wrong.connect_result[0] != 0  # B's token does not log in as A
    wrong.client.loop_stop()

    client_a = DeviceClient(_mqtt_port(srv), a["id"], a["token"]).connect()
    assert client_a.subscribe(f"ct/d/{b['id']}/commands") == 0x80
    assert client_a.subscribe("ct/d/+/commands") == 0x80
    assert client_a.subscribe("#") == 0x80
    assert client_a.subscribe(f"ct/d/{a['id']}/commands") == 1
    client_a.client.publish(f"ct/d/{b['id']}/telemetry", json.dumps({"values": {"spoof": 1}})).wait_for_publish(10)
    client_a.publish("telemetry", json.dumps({"values": {"real": 1}}).encode())
    wait_for(lambda: _device(srv, a["id"])["telemetry"], message="A's own telemetry")
    with srv.client() as admin:
        admin.post(f"devices/{b['id']}/commands", {"name": "secret", "one_way": True})
    assert _device(srv, b["id"])["telemetry"] == []  # A could not publish as B
    assert client_a.messages(f"ct/d/{b['id']}/commands") == []
    client_a.close()


def test_commands_round_trip_and_offline_queue(srv: RunningServer) -> None:
    dev = _new_device(srv, "cmd-dev")
    with srv.client() as admin:
        queued = admin.post(f"devices/{dev['id']}/commands", {"name": "reboot", "params": {"delay": 1}})
    assert queued["state"] == "queued"
    client = DeviceClient(_mqtt_port(srv), dev["id"], dev["token"]).connect()
    commands_topic = f"ct/d/{dev['id']}/commands"
    client.subscribe(commands_topic)
    [delivered] = wait_for(lambda: client.messages(commands_topic), message="queued command delivered")
    body = json.loads(delivered)
    assert body["id"] == queued["id"] and body["name"] == "reboot" and body["params"] == {"delay": 1}
    client.publish(f"responses/{queued['id']}", json.dumps({"status": "succeeded", "result": {"ok": True}}).encode())
    with srv.client() as admin:
        done = wait_for(lambda: (c := admin.get(f"iot/commands/{queued['id']}"))["state"] == "succeeded" and c,
                        message="succeeded")
        assert done["result"] == {"ok": True} and done["sent_at"] is not None

        # the action waits for the answer while a responder answers
        client.client.on_message = lambda _c, _u, msg: client.client.publish(
            f"ct/d/{dev['id']}/responses/{json.loads(msg.payload)['id']}",
            json.dumps({"status": "failed", "error": "busy"}), qos=1)
        called = admin.post("actions/iot.send_command", {"device": dev["id"], "name": "capture", "timeout_s": 20})
    result = called["result"]
    assert result["state"] == "failed" and result["error"] == "busy"
    client.close()


def test_subscribers_get_what_they_match_and_nobody_else_s_retained_messages(srv: RunningServer) -> None:
    a, b = _new_device(srv, "retained-a"), _new_device(srv, "retained-b")
    port = _mqtt_port(srv)
    b_client = DeviceClient(port, b["id"], b["token"]).connect()
    b_client.client.publish(f"ct/d/{b['id']}/status", b"online", qos=1, retain=True).wait_for_publish(10)
    b_client.subscribe(f"ct/d/{b['id']}/#")
    # a wildcard subscriber still gets a device's telemetry (the broker skips only unheard messages)
    b_client.publish("telemetry", json.dumps({"values": {"t": 1.0}}).encode())
    wait_for(lambda: b_client.messages(f"ct/d/{b['id']}/telemetry"), message="own telemetry echoed")
    a_client = DeviceClient(port, a["id"], a["token"]).connect()
    a_client.client.publish(f"ct/d/{a['id']}/status", b"online", qos=1, retain=True).wait_for_publish(10)
    a_client.subscribe(f"ct/d/{a['id']}/#")
    wait_for(lambda: a_client.messages(f"ct/d/{a['id']}/status"), message="own retained status")
    a_client.close()
    again = DeviceClient(port, a["id"], a["token"]).connect()  # a fresh connection of A
    again.subscribe(f"ct/d/{a['id']}/commands")
    with srv.client() as admin:
        admin.post(f"devices/{a['id']}/commands", {"name": "ping", "one_way": True})
    wait_for(lambda: again.messages(f"ct/d/{a['id']}/commands"), message="command after the probe")
    assert [m.topic for m in again.received if not m.topic.startswith(f"ct/d/{a['id']}/")] == []
    again.close()
    b_client.close()


def test_revoking_the_token_closes_the_live_session(srv: RunningServer) -> None:
    dev = _new_device(srv, "revoked-dev")
    client = DeviceClient(_mqtt_port(srv), dev["id"], dev["token"]).connect()
    wait_for(lambda: _device(srv, dev["id"])["status"] == "online", message="online")
    with srv.client() as admin:
        assert admin.delete(f"devices/{dev['id']}/token") == {"revoked": 1}
    wait_for(lambda: _device(srv, dev["id"])["status"] == "offline", message="session closed on revocation")
    # paho reconnects on its own; the broker now refuses the old token
    wait_for(lambda: any(code != 0 for code in client.connect_result), timeout=30, message="reconnect refused")
    assert not client.client.is_connected()
    client.client.loop_stop()


def test_readyz_reports_the_broker(srv: RunningServer) -> None:
    ready = httpx.get(srv.url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["mqtt"] is True


def test_queued_command_survives_a_restart(tmp_path) -> None:
    server = start_server(tmp_path / "data")
    try:
        dev = _new_device(server, "restart-dev")
        with server.client() as admin:
            queued = admin.post(f"devices/{dev['id']}/commands", {"name": "sync", "timeout_s": 60})
        server.restart()
        client = DeviceClient(_mqtt_port(server), dev["id"], dev["token"]).connect()
        client.subscribe(f"ct/d/{dev['id']}/#")
        [body] = wait_for(lambda: client.messages(f"ct/d/{dev['id']}/commands"), message="delivered after restart")
        assert json.loads(body)["id"] == queued["id"]
        with server.client() as admin:
            assert admin.get(f"iot/commands/{queued['id']}")["state"] == "sent"
        client.close()
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients not installed")
def test_mosquitto_pub_interop(srv: RunningServer) -> None:
    dev = _new_device(srv, "interop")
    payload = json.dumps({"ts": 1_700_000_000, "values": {"pressure": 1013.25}})
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(_mqtt_port(srv)), "-u", dev["id"], "-P",
                    dev["token"], "-q", "1", "-t", f"ct/d/{dev['id']}/telemetry", "-m", payload],
                   check=True, timeout=30)
    detail = wait_for(lambda: (d := _device(srv, dev["id"]))["telemetry"] and d, message="interop telemetry")
    assert detail["telemetry"][0]["value"] == 1013.25
    refused = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(_mqtt_port(srv)), "-u", dev["id"],
                              "-P", "wrong", "-t", f"ct/d/{dev['id']}/telemetry", "-m", payload],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0


def test_busy_mqtt_port_is_a_clear_error(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**os.environ, "CT_MQTT_PORT": str(port), "CT_DATA_DIR": str(tmp_path)}
        out = subprocess.run([sys.executable, "-m", "controltower", "up", "--no-agent", "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "CT_MQTT_PORT" in out.stderr and str(port) in out.stderr


def test_a_full_hub_holds_devices_back_instead_of_dropping(tmp_path) -> None:
    """With room for 5 waiting messages, a device bursting 2,000 at QoS 1 is read only as fast as the hub
    stores: every message arrives, none is dropped (amqtt acknowledges on receipt, so a drop would be a loss)."""
    srv = start_server(tmp_path / "data", env={"CT_IOT_QUEUE_MAX": "5"})
    try:
        dev = _new_device(srv, "burst")
        client = DeviceClient(_mqtt_port(srv), dev["id"], dev["token"])
        client.client.max_inflight_messages_set(100)
        client.connect()
        infos = [
            client.client.publish(f"ct/d/{dev['id']}/telemetry", json.dumps({"values": {"n": i}}), qos=1)
            for i in range(2000)
        ]
        for info in infos:
            info.wait_for_publish(120)
        wait_for(lambda: _device(srv, dev["id"])["messages_received"] == 2000, timeout=120, message="all stored")
        client.close()
        metrics = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {srv.token}"}).text
        assert 'ctower_iot_messages_total{outcome="dropped"} 0.0' in metrics
        assert 'ctower_iot_messages_total{outcome="stored"} 2000.0' in metrics
    finally:
        srv.stop()


def test_a_full_hub_keeps_each_devices_messages_in_order(tmp_path) -> None:
    """A file of 400 chunks, burst at QoS 1 into a hub with room for 5: the chunks must reach it in the order
    sent (the reassembler refuses a chunk out of turn), though amqtt gives every message a task of its own."""
    srv = start_server(tmp_path / "data", env={"CT_IOT_QUEUE_MAX": "5"})
    try:
        dev = _new_device(srv, "camera")
        chunks = [hashlib.sha256(str(i).encode()).digest() * 32 for i in range(400)]  # 1 kB each
        data = b"".join(chunks)
        header = {"content_type": "application/octet-stream", "size": len(data), "chunks": len(chunks),
                  "sha256": hashlib.sha256(data).hexdigest()}
        client = DeviceClient(_mqtt_port(srv), dev["id"], dev["token"])
        client.client.max_inflight_messages_set(100)
        client.connect()
        topic = f"ct/d/{dev['id']}/files/burst"
        infos = [client.client.publish(topic, json.dumps(header), qos=1)]
        infos += [client.client.publish(f"{topic}/{n}", chunk, qos=1) for n, chunk in enumerate(chunks)]
        for info in infos:
            info.wait_for_publish(120)
        with srv.client() as admin:
            wait_for(lambda: _device(srv, dev["id"])["messages_received"] + len(admin.get("iot/dead-letters"))
                     == len(infos), timeout=120, message="every chunk handled")
            files = admin.get(f"devices/{dev['id']}/files")
            dead = admin.get("iot/dead-letters")
        client.close()
        assert [(f["size"], f["sha256"]) for f in files] == [(len(data), header["sha256"])], [d["reason"] for d in dead]
    finally:
        srv.stop()
