"""controltower.iot.device against real servers: the embedded broker and a real Mosquitto, real paho underneath."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controltower.iot.device import Device, File, Outbox, Reply
from tests.iot.mqtt_support import SERVER_PASSWORD, SERVER_USER, Mosquitto
from tests.support import RunningServer, start_server, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("iot-device") / "data")
    yield server
    server.stop()


def _mqtt_port(srv: RunningServer) -> int:
    return int(srv.env["CT_MQTT_PORT"])


def _new_device(srv: RunningServer, name: str, type_: str = "sensor") -> dict:
    with srv.client() as admin:
        return admin.post("devices", {"name": name, "type": type_})


def _points(srv: RunningServer, key: str, device_id: str, since: float) -> list[tuple[float, float]]:
    with srv.client() as admin:
        result = admin.get("series/query", name=f"iot.{key}", labels=f"device:{device_id}", start=str(since),
                           end=str(time.time() + 3600))
    return [tuple(p) for s in result["series"] for p in s["points"]]


def _device(srv: RunningServer, dev: dict, tmp_path: Path, port: int | None = None) -> Device:
    device = Device(dev["id"], dev["token"], "127.0.0.1", port or _mqtt_port(srv), buffer_dir=tmp_path / "buffer")
    return device


def _capture_handlers(device: Device) -> None:
    @device.command("add")
    def add(params: dict) -> int:
        return params["a"] + params["b"]

    @device.command("explode")
    def explode(params: dict) -> None:
        raise RuntimeError(f"lens cap on ({params['why']})")

    @device.command("capture")
    def capture(params: dict) -> Reply:
        image = hashlib.sha256(params["seed"].encode()).digest() * 10_000  # 320 kB: several chunks
        return Reply({"frames": 1}, [File(image, "image/x-test", "frame.bin")])


def _command(srv: RunningServer, device_id: str, name: str, params: dict) -> dict:
    with srv.client() as admin:
        command = admin.post(f"devices/{device_id}/commands", {"name": name, "params": params, "timeout_s": 30})
        return wait_for(lambda: (c := admin.get(f"iot/commands/{command['id']}"))["state"] not in ("queued", "sent")
                        and c, timeout=30, message=f"command {name} finished")


def test_importing_the_device_client_loads_no_server_code() -> None:
    code = ("import sys, controltower.iot.device; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'sqlalchemy', 'pydantic', 'amqtt'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_outbox_keeps_order_and_drops_the_oldest_past_its_bound(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite", max_messages=5)
    outbox.put([("t", b"%d" % i) for i in range(3)])
    outbox.put([("t", b"%d" % i) for i in range(3, 8)])
    assert [p for _id, _t, p in outbox.after(0, 100)] == [b"3", b"4", b"5", b"6", b"7"]
    assert outbox.dropped == 3
    first = outbox.after(0, 2)
    outbox.remove([row_id for row_id, _t, _p in first])
    outbox.close()
    reopened = Outbox(tmp_path / "o.sqlite", max_messages=5)
    assert [p for _id, _t, p in reopened.after(0, 100)] == [b"5", b"6", b"7"]
    reopened.close()


def test_telemetry_and_attributes_reach_the_server(srv: RunningServer, tmp_path: Path) -> None:
    dev = _new_device(srv, "client-sensor")
    since = time.time() - 60
    with _device(srv, dev, tmp_path) as device:
        assert device.wait_connected(15)
        device.send_telemetry({"temp": 21.5, "mode": "eco"}, ts=since + 1)
        device.send_telemetry({"temp": 22.0})
        device.send_attributes({"firmware": "1.2", "config": {"interval": 5}})
        assert device.flush(15)
        points = wait_for(lambda: len(p := _points(srv, "temp", dev["id"], since)) == 2 and p, message="series")
        assert points[0] == (since + 1, 21.5) and points[1][1] == 22.0
        with srv.client() as admin:
            detail = wait_for(lambda: len((d := admin.get(f"devices/{dev['id']}"))["attributes"]) == 3 and d,
                              message="attributes")
        assert detail["status"] == "online"
        assert {a["key"]: a["value"] for a in detail["attributes"]} == {
            "mode": "eco", "firmware": "1.2", "config": {"interval": 5}}
    with srv.client() as admin:
        wait_for(lambda: admin.get(f"devices/{dev['id']}")["status"] == "offline", message="offline after stop")


def test_decorated_handlers_answer_commands(srv: RunningServer, tmp_path: Path) -> None:
    dev = _new_device(srv, "client-handler")
    with _device(srv, dev, tmp_path) as device:
        _capture_handlers(device)
        assert device.wait_connected(15)
        ok = _command(srv, dev["id"], "add", {"a": 2, "b": 3})
        assert (ok["state"], ok["result"]) == ("succeeded", 5)
        failed = _command(srv, dev["id"], "explode", {"why": "test"})
        assert (failed["state"], failed["error"]) == ("failed", "lens cap on (test)")
        unknown = _command(srv, dev["id"], "dance", {})
        assert unknown["state"] == "failed" and "no handler for command 'dance'" in unknown["error"]
        rung: list[dict] = []
        device.command("ring")(rung.append)
        with srv.client() as admin:
            admin.post(f"devices/{dev['id']}/commands", {"name": "ring", "params": {"n": 1}, "one_way": True})
            wait_for(lambda: rung, message="one-way command handled")
            device.send_telemetry({"after_ring": 1})
            wait_for(lambda: admin.get(f"devices/{dev['id']}")["telemetry"], message="later telemetry")
            assert rung == [{"n": 1}]
            assert admin.get("iot/dead-letters", device_id=dev["id"]) == []  # no answer to a one-way command


def test_a_capture_answer_carries_a_chunked_file_linked_to_the_command(srv: RunningServer, tmp_path: Path) -> None:
    dev = _new_device(srv, "client-camera", "camera")
    with _device(srv, dev, tmp_path) as device:
        device.chunk_bytes = 64 * 1024
        _capture_handlers(device)
        assert device.wait_connected(15)
        done = _command(srv, dev["id"], "capture", {"seed": "frame-1"})
        assert (done["state"], done["result"]) == ("succeeded", {"frames": 1})
        expected = hashlib.sha256(b"frame-1").digest() * 10_000
        with srv.client() as admin:
            [meta] = admin.get(f"devices/{dev['id']}/files", command_id=done["id"])
            content = httpx.get(f"{srv.url}/api/v1/iot/files/{meta['id']}/content",
                                headers={"Authorization": f"Bearer {srv.token}"}).content
        assert meta["sha256"] == hashlib.sha256(expected).hexdigest() and meta["size"] == len(expected)
        assert (meta["content_type"], meta["filename"]) == ("image/x-test", "frame.bin")
        assert content == expected

        upload = device.send_file(b"plain bytes", "text/plain", name="note.txt")
        assert len(upload) == 16
        with srv.client() as admin:
            files = wait_for(lambda: len(f := admin.get(f"devices/{dev['id']}/files")) == 2 and f, message="file")
        assert (files[0]["filename"], files[0]["command_id"], files[0]["size"]) == ("note.txt", None, 11)

        log_file = tmp_path / "boot.log"
        log_file.write_bytes(b"line of the boot log\n" * 10_000)  # 210 kB, read chunk by chunk
        device.send_file(log_file)
        with srv.client() as admin:
            files = wait_for(lambda: len(f := admin.get(f"devices/{dev['id']}/files")) == 3 and f, message="log")
        assert (files[0]["filename"], files[0]["content_type"], files[0]["sha256"]) == (
            "boot.log", "application/octet-stream", hashlib.sha256(log_file.read_bytes()).hexdigest())


def test_sent_while_the_server_is_down_arrives_in_order_after_restart(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        dev = _new_device(srv, "client-offline")
        since = time.time() - 600
        with _device(srv, dev, tmp_path) as device:
            assert device.wait_connected(15)
            device.send_telemetry({"seq": 0}, ts=since)
            assert device.flush(15)
            srv.stop()  # the embedded broker goes with it
            wait_for(lambda: not device.connected, message="device notices")
            for i in range(1, 41):
                device.send_telemetry({"seq": i}, ts=since + i)
            device.send_attributes({"phase": "offline"})
            assert device.buffered() >= 41
            srv.start()
            assert device.flush(60)
            points = wait_for(lambda: len(p := _points(srv, "seq", dev["id"], since - 1)) == 41 and p,
                              message="every buffered sample")
        assert points == [(since + i, float(i)) for i in range(41)]
        assert device.stats["acked"] >= 42
    finally:
        srv.stop()


# -- through a real Mosquitto ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ext(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    url = f"mqtt://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{mosquitto.port}"
    server = start_server(tmp_path_factory.mktemp("iot-device-ext") / "data", env={"CT_MQTT_URL": url})
    yield server
    server.stop()


def _enrol(ext: RunningServer, mosquitto: Mosquitto, name: str) -> dict:
    dev = _new_device(ext, name)
    mosquitto.add_user(dev["id"], dev["token"])
    return dev


def _restart_mosquitto(mosquitto: Mosquitto) -> None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with open(mosquitto.passwd.parent / "mosquitto.log", "ab") as log:  # an unread pipe would stall it
        mosquitto.proc = subprocess.Popen([binary, "-c", str(mosquitto.passwd.parent / "mosquitto.conf")],
                                          stdout=log, stderr=subprocess.STDOUT)


def _started(dev: dict, port: int, tmp_path: Path) -> Device:
    """Started once the broker has reloaded its password file (the first logins may be refused)."""
    device = Device(dev["id"], dev["token"], "127.0.0.1", port, buffer_dir=tmp_path / "buffer").start()
    assert device.wait_connected(20), device.last_error
    return device


def test_device_through_mosquitto(ext: RunningServer, mosquitto: Mosquitto, tmp_path: Path) -> None:
    dev = _enrol(ext, mosquitto, "ext-client")
    device = _started(dev, mosquitto.port, tmp_path)
    try:
        _capture_handlers(device)
        since = time.time() - 60
        device.send_telemetry({"level": 3.5}, ts=since + 5)
        assert wait_for(lambda: _points(ext, "level", dev["id"], since), message="telemetry") == [(since + 5, 3.5)]
        failed = _command(ext, dev["id"], "explode", {"why": "mosquitto"})
        assert (failed["state"], failed["error"]) == ("failed", "lens cap on (mosquitto)")
        done = _command(ext, dev["id"], "capture", {"seed": "ext"})
        assert done["state"] == "succeeded"
        with ext.client() as admin:
            [meta] = admin.get(f"devices/{dev['id']}/files", command_id=done["id"])
        expected = hashlib.sha256(b"ext").digest() * 10_000
        assert meta["sha256"] == hashlib.sha256(expected).hexdigest()
    finally:
        device.stop()


def test_buffer_survives_a_broker_outage_and_a_device_restart(
    ext: RunningServer, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    dev = _enrol(ext, mosquitto, "ext-outage")
    device = _started(dev, mosquitto.port, tmp_path)
    since = time.time() - 600
    mosquitto.proc.terminate()
    mosquitto.proc.wait(10)
    wait_for(lambda: not device.connected, message="device notices the broker is gone")
    for i in range(25):
        device.send_telemetry({"depth": i}, ts=since + i)
    assert device.buffered() == 25
    device.stop()  # the device program ends too; its outbox stays on disk

    _restart_mosquitto(mosquitto)
    wait_for(lambda: httpx.get(f"{ext.url}/readyz").status_code == 200, timeout=60, message="server reconnected")
    device = _started(dev, mosquitto.port, tmp_path)
    try:
        assert device.flush(30)
        points = wait_for(lambda: len(p := _points(ext, "depth", dev["id"], since - 1)) == 25 and p,
                          message="the buffered samples")
        assert points == [(since + i, float(i)) for i in range(25)]
    finally:
        device.stop()


def test_sent_while_the_server_is_down_is_kept_by_mosquitto_and_arrives_after_restart(
    ext: RunningServer, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    dev = _enrol(ext, mosquitto, "ext-server-down")
    device = _started(dev, mosquitto.port, tmp_path)
    since = time.time() - 600
    try:
        ext.stop()
        for i in range(30):
            device.send_telemetry({"flow": i}, ts=since + i)
        assert device.flush(15)  # Mosquitto acknowledged them: the server's persistent session holds them
        ext.start()
        points = wait_for(lambda: len(p := _points(ext, "flow", dev["id"], since - 1)) == 30 and p, timeout=30,
                          message="what Mosquitto kept for the server")
        assert points == [(since + i, float(i)) for i in range(30)]
    finally:
        device.stop()
        if ext.proc is None or ext.proc.poll() is not None:
            ext.start()


def test_mosquitto_pub_with_device_credentials_is_stored(
    ext: RunningServer, mosquitto: Mosquitto
) -> None:
    if shutil.which("mosquitto_pub") is None:
        pytest.skip("mosquitto_pub is not installed")
    dev = _enrol(ext, mosquitto, "ext-pub")
    since = time.time() - 60
    body = json.dumps({"ts": since + 2, "values": {"pressure": 1013.25}})

    def publish() -> bool:
        run = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-u", dev["id"],
                              "-P", dev["token"], "-q", "1", "-t", f"ct/d/{dev['id']}/telemetry", "-m", body],
                             capture_output=True, timeout=30)
        return run.returncode == 0

    wait_for(publish, message="mosquitto_pub accepted after the password reload")
    points = wait_for(lambda: _points(ext, "pressure", dev["id"], since), message="stored")
    assert points[0] == (since + 2, 1013.25)
