"""IoT end to end on a real server: registry API and CLI, HTTP push, files, dead letters, /metrics."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from controltower.client import ApiError
from tests.support import RunningServer, start_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = start_server(tmp_path_factory.mktemp("iot-api") / "data",
                          env={"CT_IOT_MESSAGE_MAX_BYTES": "4096", "CT_IOT_FILE_MAX_BYTES": "100000"})
    yield server
    server.stop()


def _ctower(srv: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CT_SERVER": srv.url, "CT_TOKEN": srv.token}
    return subprocess.run([sys.executable, "-m", "controltower", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cli_add_prints_id_and_token_once_and_lists(srv: RunningServer, tmp_path: Path) -> None:
    out = _ctower(srv, "devices", "add", "hall-sensor", "--type", "sensor", "--label", "floor1", "--json")
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout)
    assert created["name"] == "hall-sensor" and created["token"].startswith("ct_")
    listed = json.loads(_ctower(srv, "devices", "list", "--label", "floor1", "--json").stdout)
    assert [d["id"] for d in listed] == [created["id"]]
    assert "token" not in listed[0]

    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text("name,id,type,labels\ncsv-a,csv-a,sensor,floor2\ncsv-b,,camera,\"floor2,door\"\n")
    imported = json.loads(_ctower(srv, "devices", "import", str(csv_file), "--json").stdout)
    assert [d["name"] for d in imported] == ["csv-a", "csv-b"] and imported[0]["id"] == "csv-a"
    dup = _ctower(srv, "devices", "import", str(csv_file))
    assert dup.returncode == 1 and "409" in dup.stderr and "line 2" in dup.stderr


def test_registry_errors(srv: RunningServer) -> None:
    with srv.client() as client:
        client.post("devices", {"name": "dup-me"})
        with pytest.raises(ApiError) as info:
            client.post("devices", {"name": "dup-me"})
        assert info.value.status == 409 and info.value.detail.startswith("name:")
        with pytest.raises(ApiError) as info:
            client.post("devices", {"name": "x", "id": "bad/id"})
        assert info.value.status == 422 and "id" in info.value.detail
        with pytest.raises(ApiError) as info:
            client.get("devices/nope")
        assert info.value.status == 404


def test_http_push_attributes_and_device_detail(srv: RunningServer) -> None:
    with srv.client() as admin:
        dev = admin.post("devices", {"name": "http-dev"})
    with srv.client(dev["token"]) as device:
        accepted = device.post(f"devices/{dev['id']}/telemetry",
                               [{"ts": 1_700_000_000, "values": {"temp": 20, "state": "idle"}},
                                {"ts": 1_700_000_060, "values": {"temp": 21.5}}])
        assert accepted == {"device": dev["id"], "readings": 2, "numbers": 2, "attributes": 1}
        device.post(f"devices/{dev['id']}/attributes", {"firmware": "2.0", "config": {"rate": 5}})
        with pytest.raises(ApiError) as info:
            device.post("devices/someone-else/telemetry", {"values": {"x": 1}})
        assert info.value.status == 403
        with pytest.raises(ApiError) as info:
            device.get("devices")
        assert info.value.status == 403
    with srv.client() as admin:
        detail = admin.get(f"devices/{dev['id']}")
        history = admin.get(f"devices/{dev['id']}/attributes/state/history")
        points = admin.get("series/query", name="iot.temp", labels=f"device:{dev['id']}", start=1_699_999_000,
                           end=1_700_001_000)
    assert detail["status"] == "online" and detail["connected_via"] == "http"
    assert [(t["key"], t["value"]) for t in detail["telemetry"]] == [("temp", 21.5)]
    assert {a["key"]: a["value"] for a in detail["attributes"]} == {
        "state": "idle", "firmware": "2.0", "config": {"rate": 5}}
    assert [h["value"] for h in history] == ["idle"]
    assert "21.5" in json.dumps(points)


def test_bad_http_pushes_are_dead_letters_and_counted(srv: RunningServer) -> None:
    with srv.client() as admin:
        dev = admin.post("devices", {"name": "sloppy"})
    url = f"{srv.url}/api/v1/devices/{dev['id']}/telemetry"
    headers = {"Authorization": f"Bearer {dev['token']}"}
    bad_json = httpx.post(url, content=b'{"values": {', headers=headers)
    wrong_type = httpx.post(url, json={"values": {"t": 1}, "ts": True}, headers=headers)
    too_big = httpx.post(url, content=b"[" + b" " * 5000 + b"]", headers=headers)
    good = httpx.post(url, json={"values": {"t": 7}}, headers=headers)
    assert (bad_json.status_code, wrong_type.status_code, too_big.status_code, good.status_code) == (
        400, 422, 413, 200)
    assert wrong_type.json()["detail"].startswith("body.ts")
    assert "CT_IOT_MESSAGE_MAX_BYTES" in too_big.json()["detail"]
    with srv.client() as admin:
        letters = admin.get("iot/dead-letters", device_id=dev["id"])
        metrics = admin.http.get("/metrics").text
    assert sorted(x["kind"] for x in letters) == ["invalid", "malformed_json", "oversize"]
    assert all(x["source"] == "http" for x in letters)
    assert 'ctower_iot_dead_letters_total{kind="malformed_json"}' in metrics
    out = _ctower(srv, "devices", "dead-letters", "--device", dev["id"], "--json")
    assert len(json.loads(out.stdout)) == 3


def test_file_upload_streams_into_blobs(srv: RunningServer) -> None:
    with srv.client() as admin:
        dev = admin.post("devices", {"name": "camera-1", "type": "camera"})
        command = admin.post(f"devices/{dev['id']}/commands", {"name": "capture"})
    image = os.urandom(50_000)
    url = f"{srv.url}/api/v1/devices/{dev['id']}/files"
    headers = {"Authorization": f"Bearer {dev['token']}", "Content-Type": "image/png"}
    response = httpx.post(url, content=image, headers=headers,
                          params={"filename": "shot.png", "command_id": command["id"]})
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["sha256"] == hashlib.sha256(image).hexdigest() and meta["size"] == 50_000
    assert meta["content_type"] == "image/png" and meta["command_id"] == command["id"]
    too_big = httpx.post(url, content=os.urandom(100_001), headers=headers)
    assert too_big.status_code == 413 and "CT_IOT_FILE_MAX_BYTES" in too_big.json()["detail"]
    with srv.client() as admin:
        files = admin.get(f"devices/{dev['id']}/files", command_id=command["id"])
        content = admin.http.get(f"/api/v1/iot/files/{meta['id']}/content")
    assert [f["id"] for f in files] == [meta["id"]]
    assert content.content == image and content.headers["content-type"] == "image/png"


def test_rotate_revoke_delete(srv: RunningServer) -> None:
    with srv.client() as admin:
        dev = admin.post("devices", {"name": "rotating"})
        rotated = admin.post(f"devices/{dev['id']}/token")
    url = f"{srv.url}/api/v1/devices/{dev['id']}/telemetry"
    assert httpx.post(url, json={"values": {"t": 1}}, headers={"Authorization": f"Bearer {dev['token']}"}
                      ).status_code == 401
    new_headers = {"Authorization": f"Bearer {rotated['token']}"}
    assert httpx.post(url, json={"values": {"t": 1}}, headers=new_headers).status_code == 200
    with srv.client() as admin:
        assert admin.delete(f"devices/{dev['id']}/token") == {"revoked": 1}
    assert httpx.post(url, json={"values": {"t": 1}}, headers=new_headers).status_code == 401
    with srv.client() as admin:
        admin.delete(f"devices/{dev['id']}")
        assert dev["id"] not in [d["id"] for d in admin.get("devices")]
