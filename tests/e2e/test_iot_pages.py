"""The Devices pages in a real browser: the list with latest values, a device's charts, attributes, files and a
command answered by a real MQTT device, the dead letters, and a viewer who cannot send commands."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import paho.mqtt.client as mqtt
import pytest
from PIL import Image

from controltower.client import ApiError, Client
from tests.conftest import skip_or_fail
from tests.e2e.browser import chromium_missing, log_in, open_tab
from tests.iot.mqtt_support import DeviceClient
from tests.support import RunningServer, start_server, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def iot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """`ctower up --no-agent`: the Devices pages need no local agent."""
    if chromium_missing():
        skip_or_fail(chromium_missing() or "")
    srv = start_server(tmp_path_factory.mktemp("iot-pages") / "data")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def password(iot_server: RunningServer) -> str:
    return (iot_server.data_dir / "admin-password").read_text().strip()


def _device(srv: RunningServer, name: str, labels: list[str], type_: str = "sensor") -> dict:
    with srv.client() as admin:
        return admin.post("devices", {"name": name, "type": type_, "labels": labels})


def _push(srv: RunningServer, dev: dict, channel: str, body: object) -> dict:
    response = httpx.post(f"{srv.url}/api/v1/devices/{dev['id']}/{channel}", json=body,
                          headers={"Authorization": f"Bearer {dev['token']}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _png(width: int, height: int) -> bytes:
    image = Image.new("RGB", (width, height), (30, 120, 200))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _upload(srv: RunningServer, dev: dict, body: bytes, content_type: str, filename: str) -> dict:
    response = httpx.post(f"{srv.url}/api/v1/devices/{dev['id']}/files", content=body, params={"filename": filename},
                          headers={"Authorization": f"Bearer {dev['token']}", "Content-Type": content_type},
                          timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def test_empty_list_tells_how_to_add_a_device(browser, iot_server, password, request):
    with open_tab(browser, request.node.name) as tab:
        log_in(tab, iot_server.url, "admin", password, "/devices")
        empty = tab.page.get_by_test_id("no-devices")
        empty.get_by_text("ctower devices add NAME --json").wait_for()
        empty.get_by_text("ctower device simulate --count 10").wait_for()
        assert tab.page.get_by_role("table").count() == 0  # no empty table under the instructions
        tab.shot("no-devices")


def test_list_shows_devices_with_status_and_latest_values_and_filters(browser, iot_server, password, request):
    hall = _device(iot_server, "hall-sensor", ["aisle-3", "warehouse"])
    yard = _device(iot_server, "yard-sensor", ["outdoor"])
    _push(iot_server, hall, "telemetry", {"values": {"temperature": 21.5, "humidity": 40}})
    mqtt_yard = DeviceClient(int(iot_server.env["CT_MQTT_PORT"]), yard["id"], yard["token"]).connect()
    try:
        mqtt_yard.publish("telemetry", json.dumps({"values": {"temperature": -3.25}}).encode())
        with open_tab(browser, request.node.name) as tab:
            page = tab.page
            log_in(tab, iot_server.url, "admin", password, "/devices")
            hall_row = page.get_by_role("row").filter(has_text="hall-sensor")
            hall_row.get_by_text("humidity 40 · temperature 21.5").wait_for()
            assert hall_row.locator("[data-status=online]").count() == 1  # it pushed a moment ago over HTTP
            assert "aisle-3, warehouse" in hall_row.inner_text()
            yard_row = page.get_by_role("row").filter(has_text="yard-sensor")
            yard_row.get_by_text("temperature -3.25").wait_for()  # arrived over MQTT
            yard_row.locator("[data-status=online]").wait_for()
            tab.shot("list")
            _push(iot_server, hall, "telemetry", {"values": {"temperature": 22.75}})
            hall_row.get_by_text("humidity 40 · temperature 22.75").wait_for()  # live, without a reload

            page.get_by_label("Search").fill("yard")
            wait_for(lambda: hall_row.count() == 0, message="the search to hide hall-sensor")
            assert yard_row.count() == 1
            page.get_by_label("Search").fill("")
            hall_row.wait_for()
            page.get_by_label("Label").click()
            page.get_by_role("option", name="outdoor").click()
            wait_for(lambda: hall_row.count() == 0, message="the label filter to hide hall-sensor")
            assert yard_row.count() == 1
            assert page.get_by_test_id("device-count").inner_text() == "1 of 2 devices"
            tab.shot("filtered")
            yard_row.get_by_role("link", name="yard-sensor").click()
            page.wait_for_url(f"**/devices/{yard['id']}")
            page.get_by_test_id("device-name").get_by_text("yard-sensor").wait_for()
    finally:
        mqtt_yard.close()


def test_device_page_shows_charts_and_attributes_with_history(browser, iot_server, password, request):
    dev = _device(iot_server, "boiler", ["basement"])
    now = time.time()
    _push(iot_server, dev, "telemetry", [{"ts": now - 120 + i * 30, "values": {"pressure": 1.5 + i / 10}}
                                         for i in range(4)])
    _push(iot_server, dev, "attributes", {"firmware": "1.2.3"})
    _push(iot_server, dev, "attributes", {"firmware": "1.2.4", "mode": {"heating": True}})
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, iot_server.url, "admin", password, f"/devices/{dev['id']}")
        page.get_by_test_id("device-status").get_by_text("ONLINE").wait_for()
        caption = page.locator("[data-caption=pressure]")
        wait_for(lambda: caption.inner_text().startswith("4 points"), message="four pressure samples in the chart")
        assert "latest 1.8" in caption.inner_text()
        assert page.locator("[data-chart=pressure] canvas").count() >= 1
        attributes = page.get_by_test_id("attributes")
        attributes.get_by_role("cell", name="1.2.4").wait_for()
        attributes.get_by_role("cell", name='{"heating":true}').wait_for()
        tab.shot("device")
        attributes.get_by_role("row").filter(has_text="firmware").get_by_role("button", name="History").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("cell", name="1.2.3").wait_for()  # the older value is kept
        assert dialog.get_by_role("cell", name="1.2.4").count() == 1
        tab.shot("attribute-history")
        dialog.get_by_role("button", name="Close").click()
        page.get_by_test_id("range").get_by_text("24H").click()
        wait_for(lambda: "60 s steps" in caption.inner_text() or "300 s steps" in caption.inner_text(),
                 message="the 24 h range's rollup steps")
        page.get_by_test_id("range").get_by_text("CUSTOM").click()
        later = dt.datetime.now().replace(second=0, microsecond=0) + dt.timedelta(minutes=2)
        page.get_by_label("From", exact=True).fill(later.strftime("%Y-%m-%dT%H:%M"))
        page.get_by_label("To", exact=True).fill((later - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
        page.get_by_role("button", name="Apply").click()
        page.get_by_text("must be after From").wait_for()
        page.get_by_label("From", exact=True).fill((later - dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M"))
        page.get_by_label("To", exact=True).fill(later.strftime("%Y-%m-%dT%H:%M"))
        page.get_by_role("button", name="Apply").click()
        wait_for(lambda: caption.inner_text().startswith("4 points (raw samples)"),
                 message=f"the custom 10 minutes' raw samples, not {caption.inner_text()!r}")
        tab.shot("custom-range")


def test_gallery_shows_an_uploaded_image_and_links_other_files(browser, iot_server, password, request):
    dev = _device(iot_server, "dock-camera", ["aisle-3"], "camera")
    image = _upload(iot_server, dev, _png(64, 48), "image/png", 'dock "A" onerror=x.png')
    log = _upload(iot_server, dev, b"<script>alert(1)</script>", "text/html", "log.html")
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, iot_server.url, "admin", password, f"/devices/{dev['id']}")
        img = page.locator(f"[data-file='{image['id']}'] img")
        img.wait_for()
        wait_for(lambda: img.evaluate("i => i.complete && i.naturalWidth") == 64, message="the thumbnail to load")
        assert "image/png" in page.locator(f"[data-file='{image['id']}']").inner_text()
        assert img.get_attribute("alt") == 'dock "A" onerror=x.png'  # the device's name stays a plain value
        assert img.get_attribute("onerror") is None
        link = page.locator(f"[data-file='{log['id']}']").get_by_role("link", name="log.html")
        assert link.get_attribute("href") == f"/devices/files/{log['id']}"
        served = page.request.get(iot_server.url + f"/devices/files/{log['id']}")  # with the session's cookie
        assert served.status == 200 and served.body() == b"<script>alert(1)</script>"
        assert served.headers["content-disposition"].startswith("attachment")  # never rendered in our origin
        tab.shot("gallery")
    anonymous = httpx.get(iot_server.url + f"/devices/files/{image['id']}", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def _answering(srv: RunningServer, dev: dict) -> DeviceClient:
    """A real paho device that answers every command with `{"opened": true, "echo": params}`."""
    client = DeviceClient(int(srv.env["CT_MQTT_PORT"]), dev["id"], dev["token"]).connect()

    def answer(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        command = json.loads(msg.payload)
        reply = {"status": "succeeded", "result": {"opened": True, "echo": command["params"]}}
        client.client.publish(f"ct/d/{dev['id']}/responses/{command['id']}", json.dumps(reply), qos=1)

    client.client.on_message = answer
    assert client.subscribe(f"ct/d/{dev['id']}/commands") == 1
    return client


def test_command_from_the_form_is_answered_by_an_mqtt_device(browser, iot_server, password, request):
    dev = _device(iot_server, "gate-controller", ["yard"], "actuator")
    client = _answering(iot_server, dev)
    try:
        with open_tab(browser, request.node.name) as tab:
            page = tab.page
            log_in(tab, iot_server.url, "admin", password, f"/devices/{dev['id']}")
            page.get_by_label("Name", exact=True).fill("open")
            page.get_by_label("Params (JSON object)").fill('{"seconds": ')
            page.get_by_role("button", name="Send command").click()
            error = page.locator(".q-field--error")
            error.first.wait_for()
            assert "Params" in error.first.inner_text() and "not valid JSON" in error.first.inner_text()
            tab.shot("command-invalid")
            page.get_by_label("Params (JSON object)").fill('{"seconds": 5}')
            page.get_by_role("button", name="Send command").click()
            state = page.get_by_test_id("command-state")
            state.get_by_text("succeeded").wait_for()
            result = page.get_by_test_id("command-result").inner_text()
            assert '"opened":true' in result and '"seconds":5' in result
            recent = page.get_by_test_id("recent-commands")
            recent.locator("[data-state=succeeded]").wait_for()
            assert "open" in recent.inner_text()
            tab.shot("command-succeeded")
    finally:
        client.close()
    with iot_server.client() as admin:
        [command] = admin.get(f"devices/{dev['id']}/commands")
    assert command["state"] == "succeeded" and command["params"] == {"seconds": 5}


def test_a_command_sent_to_a_label_shows_each_devices_state(browser, iot_server, password, request):
    online = [_device(iot_server, f"aisle7-cam-{i}", ["aisle-7"], "camera") for i in range(2)]
    _device(iot_server, "aisle7-cam-off", ["aisle-7"], "camera")  # never connects: its command stays queued
    clients = [_answering(iot_server, dev) for dev in online]
    try:
        with open_tab(browser, request.node.name) as tab:
            page = tab.page
            log_in(tab, iot_server.url, "admin", password, "/devices")
            page.get_by_role("row").filter(has_text="aisle7-cam-off").wait_for()
            page.get_by_role("button", name="Send to a label").click()
            dialog = page.get_by_role("dialog")
            dialog.get_by_label("Name", exact=True).fill("capture")
            dialog.get_by_role("button", name="Send to all").click()
            dialog.get_by_text("pick the label of the devices to command").wait_for()
            dialog.get_by_label("Label").click()
            page.get_by_role("option", name="aisle-7").click()
            dialog.get_by_role("button", name="Send to all").click()
            results = dialog.get_by_test_id("broadcast-results")

            def state(name: str, value: str) -> object:
                return results.get_by_role("row").filter(has_text=name).locator(f"[data-state={value}]")

            for i in range(2):
                state(f"aisle7-cam-{i}", "succeeded").wait_for()
            assert state("aisle7-cam-off", "queued").count() == 1
            assert dialog.get_by_test_id("broadcast-summary").inner_text() == "2 of 3 devices finished; 2 succeeded"
            tab.shot("broadcast")
    finally:
        for client in clients:
            client.close()


def test_a_simulated_camera_answers_capture_and_its_picture_shows(browser, iot_server, password, request):
    cmd = [sys.executable, "-m", "controltower", "device", "simulate", "--count", "2", "--cameras", "1", "--rate", "1",
           "--duration", "90", "--prefix", "e2esim", "--server", iot_server.url, "--token", iot_server.token,
           "--mqtt-port", iot_server.env["CT_MQTT_PORT"]]
    simulator = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with iot_server.client() as admin:
            wait_for(lambda: admin.get("devices/e2esim-0000")["status"] == "online", timeout=30,
                     message="the simulated camera online")
        with open_tab(browser, request.node.name) as tab:
            page = tab.page
            log_in(tab, iot_server.url, "admin", password, "/devices")
            sensor_row = page.get_by_role("row").filter(has_text="e2esim-0001")
            sensor_row.get_by_text(re.compile(r"humidity [\d.]+ · temperature [\d.]+")).wait_for()
            page.goto(iot_server.url + "/devices/e2esim-0000")
            page.get_by_label("Name", exact=True).fill("capture")
            page.get_by_role("button", name="Send command").click()
            page.get_by_test_id("command-state").get_by_text("succeeded").wait_for()
            command_id = re.search(r"#(\d+)", page.get_by_text(re.compile(r"Command #\d+ capture")).inner_text())
            assert command_id is not None
            card = page.locator("[data-file]").filter(has_text=f"command #{command_id.group(1)}")
            img = card.locator("img")
            img.wait_for()
            wait_for(lambda: img.evaluate("i => i.complete && i.naturalWidth") > 0, message="the captured picture")
            assert "image/" in card.inner_text()
            tab.shot("captured")
    finally:
        simulator.terminate()
        simulator.wait(30)


def test_dead_letter_page_shows_a_malformed_message(browser, iot_server, password, request):
    dev = _device(iot_server, "broken-sensor", [])
    client = DeviceClient(int(iot_server.env["CT_MQTT_PORT"]), dev["id"], dev["token"]).connect()
    try:
        client.publish("telemetry", b'{"values": {"temperature": 20')
    finally:
        client.close()
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, iot_server.url, "admin", password, "/devices/dead-letters")
        row = page.get_by_role("row").filter(has_text=f"ct/d/{dev['id']}/telemetry")
        row.wait_for()
        text = row.inner_text()
        assert "malformed_json" in text and '{"values": {"temperature": 20' in text  # kind and payload preview
        assert row.get_by_role("link", name=dev["id"]).count() == 1
        badge = page.get_by_test_id("dead-letter-counts").locator("[data-kind=malformed_json]")
        assert re.fullmatch(r"malformed_json: [1-9]\d*", badge.inner_text())
        tab.shot("dead-letters")
        row.get_by_role("link", name=dev["id"]).click()
        page.get_by_role("link", name="its dead letters").click()
        page.wait_for_url(f"**/devices/dead-letters?device={dev['id']}")
        page.get_by_test_id("device-filter").wait_for()
        row.wait_for()
        page.goto(iot_server.url + "/devices/dead-letters?device=someone-else")
        page.get_by_test_id("device-filter").wait_for()
        page.get_by_text("No data available").wait_for()
        assert row.count() == 0


def test_viewer_cannot_send_commands(browser, iot_server, request):
    dev = _device(iot_server, "viewer-sees-me", [])
    with iot_server.client() as admin:
        admin.post("users", {"name": "wall", "role": "viewer", "password": "wallscreen-pw"})
        viewer_token = admin.post("tokens", {"name": "wall-token", "role": "viewer"})["token"]
    with open_tab(browser, request.node.name) as tab:
        page = tab.page
        log_in(tab, iot_server.url, "wall", "wallscreen-pw", f"/devices/{dev['id']}")
        page.get_by_text("Sending commands needs the operator or admin role.").wait_for()
        assert page.get_by_role("button", name="Send command").count() == 0
        assert page.get_by_test_id("recent-commands").count() == 1  # it may still see what was sent
        tab.shot("device-as-viewer")
        page.goto(iot_server.url + "/devices")
        page.get_by_role("link", name="viewer-sees-me").wait_for()
        assert page.get_by_role("button", name="Send to a label").count() == 0
    with Client(iot_server.url, viewer_token) as viewer, pytest.raises(ApiError) as refused:
        viewer.post(f"devices/{dev['id']}/commands", {"name": "open"})
    assert refused.value.status == 403
