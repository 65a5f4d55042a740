"""Simulated devices against a real server (its embedded broker, and a real Mosquitto): the
`ctower device simulate` CLI and the Simulator class the benchmarks use."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from controltower.iot.simulate import CAMERA, SENSOR, Simulator, camera_frame, provision, sensor_values
from tests.iot.mqtt_support import SERVER_PASSWORD, SERVER_USER, Mosquitto
from tests.support import RunningServer, start_server, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("iot-sim") / "data")
    yield server
    server.stop()


def _mqtt_port(srv: RunningServer) -> int:
    return int(srv.env["CT_MQTT_PORT"])


def test_sensors_follow_the_day_and_every_frame_is_new() -> None:
    rng = random.Random(1)
    midnight, noon = 1_700_006_400.0, 1_700_006_400.0 + 43_200  # 00:00 and 12:00 UTC
    night = [sensor_values(0, midnight + i, rng) for i in range(50)]
    day = [sensor_values(0, noon + i, rng) for i in range(50)]
    assert max(v["temperature"] for v in night) + 5 < min(v["temperature"] for v in day)
    assert min(v["humidity"] for v in night) > max(v["humidity"] for v in day)
    assert len({v["temperature"] for v in day}) > 10  # noise
    first, second = camera_frame("cam-1", noon), camera_frame("cam-1", noon + 1.5)
    assert first != second and Image.open(io.BytesIO(first)).size == (320, 240)
    jpeg = Image.open(io.BytesIO(camera_frame("cam-1", noon, 640, 480, "JPEG")))
    assert (jpeg.format, jpeg.size) == ("JPEG", (640, 480))


def test_cli_runs_sensors_and_a_camera_that_answers_capture_with_an_image(srv: RunningServer) -> None:
    since = time.time()
    cmd = [sys.executable, "-m", "controltower", "device", "simulate", "--count", "5", "--rate", "2",
           "--duration", "12", "--cameras", "1", "--prefix", "clisim", "--server", srv.url, "--token", srv.token,
           "--mqtt-port", str(_mqtt_port(srv)), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        with srv.client() as admin:
            wait_for(lambda: admin.get("devices/clisim-0000")["status"] == "online", timeout=20,
                     message="the camera online")
            command = admin.post("devices/clisim-0000/commands", {"name": "capture", "timeout_s": 20})
            done = wait_for(lambda: (c := admin.get(f"iot/commands/{command['id']}"))["state"] != "sent"
                            and c["state"] != "queued" and c, timeout=20, message="capture answered")
            assert done["state"] == "succeeded", done
            [meta] = admin.get("devices/clisim-0000/files", command_id=command["id"])
        content = httpx.get(f"{srv.url}/api/v1/iot/files/{meta['id']}/content",
                            headers={"Authorization": f"Bearer {srv.token}"}).content
        assert meta["content_type"] == "image/png" and hashlib.sha256(content).hexdigest() == meta["sha256"]
        assert done["result"]["files"][0]["sha256"] == meta["sha256"]
        image = Image.open(io.BytesIO(content))
        assert (image.format, image.size) == ("PNG", (320, 240))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err.decode()
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["errors"] == 0 and stats["commands"] == 1 and stats["files"] == 1
    assert stats["sent"] >= 4 and stats["acked"] >= stats["sent"]
    with srv.client() as admin:
        sensors = [d for d in admin.get("devices", label="sim") if d["name"].startswith("clisim-")]
        assert sorted(d["type"] for d in sensors) == [CAMERA] + [SENSOR] * 4
        for i in range(1, 5):
            result = admin.get("series/query", name="iot.temperature", labels=f"device:clisim-{i:04d}",
                               start=str(since - 1), end=str(time.time() + 1))
            points = [p for s in result["series"] for p in s["points"]]
            assert points and all(5 < value < 35 for _ts, value in points)


def test_simulator_reuses_devices_answers_pings_and_needs_no_thread_per_device(srv: RunningServer) -> None:
    with srv.client() as admin:
        first = provision(admin, 120, cameras=0, prefix="pysim")
        again = provision(admin, 120, cameras=0, prefix="pysim")
    assert [d.id for d in first] == [d.id for d in again] == [f"pysim-{i:04d}" for i in range(120)]
    assert all(a.token != b.token for a, b in zip(first, again, strict=True))  # reused, token rotated
    threads_before = threading.active_count()
    simulator = Simulator(again, "127.0.0.1", _mqtt_port(srv), rate=1.0, seed=7).start()
    try:
        assert simulator.wait_connected(timeout=60), simulator.snapshot()
        assert threading.active_count() - threads_before <= 3
        with srv.client() as admin:
            sent = admin.post("devices/pysim-0042/commands", {"name": "ping", "timeout_s": 20})
            done = wait_for(lambda: (c := admin.get(f"iot/commands/{sent['id']}"))["state"] == "succeeded" and c,
                            message="ping answered")
        assert isinstance(done["result"]["pong"], float)
        wait_for(lambda: simulator.snapshot()["acked"] >= 240, timeout=30, message="two rounds of telemetry acked")
        with srv.client() as admin:
            stored = wait_for(lambda: (s := admin.get("series/latest", name="iot.humidity")) and
                              len({x["labels"]["device"] for x in s if x["labels"]["device"].startswith("pysim-")})
                              == 120 and s, timeout=30, message="every simulated sensor stored")
        assert all(0 <= x["value"] <= 100 for x in stored)
    finally:
        simulator.stop()
    assert simulator.snapshot()["errors"] == 0


def test_simulated_sensors_and_camera_through_mosquitto(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = f"mqtt://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{mosquitto.port}"
    ext = start_server(tmp_path_factory.mktemp("iot-sim-ext") / "data", env={"CT_MQTT_URL": url})
    try:
        with ext.client() as admin:
            devices = provision(admin, 3, cameras=1, prefix="extsim")
        for device in devices:
            mosquitto.add_user(device.id, device.token)
        with Simulator(devices, "127.0.0.1", mosquitto.port, rate=2.0, image_format="JPEG") as simulator:
            assert simulator.wait_connected(timeout=60), simulator.snapshot()
            with ext.client() as admin:
                wait_for(lambda: admin.get("devices/extsim-0000")["status"] == "online", message="camera online")
                sent = admin.post("devices/extsim-0000/commands", {"name": "capture", "timeout_s": 20})
                done = wait_for(lambda: (c := admin.get(f"iot/commands/{sent['id']}"))["state"] == "succeeded"
                                and c, timeout=30, message="capture answered")
                [meta] = admin.get("devices/extsim-0000/files", command_id=done["id"])
                for sensor in ("extsim-0001", "extsim-0002"):
                    wait_for(lambda s=sensor: admin.get("series/latest", name="iot.temperature",
                                                        labels=f"device:{s}"), message=f"{sensor} telemetry")
        content = httpx.get(f"{ext.url}/api/v1/iot/files/{meta['id']}/content",
                            headers={"Authorization": f"Bearer {ext.token}"}).content
        assert meta["content_type"] == "image/jpeg" and Image.open(io.BytesIO(content)).format == "JPEG"
        assert hashlib.sha256(content).hexdigest() == meta["sha256"]
    finally:
        ext.stop()
