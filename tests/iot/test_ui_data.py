"""What the Devices pages read, on SQLite and PostgreSQL: the list (1,000 devices in a fixed number of queries),
a device's view and telemetry, commands queued from the page, dead letters and stored files."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from controltower.core.context import Context
from controltower.iot import deadletters, devices, store, ui_data
from controltower.iot.schemas import CommandCreate, DeviceCreate
from controltower.web.charts import plan_for


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


@contextmanager
def _counting(ctx: Context) -> Iterator[list[str]]:
    statements: list[str] = []

    def count(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(ctx.db.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", count)


def _devices(ctx: Context, n: int) -> list[str]:
    bodies = [DeviceCreate(name=f"sensor-{i:04d}", id=f"s{i:04d}", type="sensor",
                           labels=["even" if i % 2 == 0 else "odd"]) for i in range(n)]
    with ctx.db.session() as session:
        created = devices.import_devices(ctx, session, bodies)
        return [d.id for d, _ in created]


def test_list_of_1000_devices_reads_latest_values_in_a_fixed_number_of_queries(ctx: Context) -> None:
    ids = _devices(ctx, 1000)
    now = time.time()
    ctx.series.write([(f"iot.{key}", {"device": i}, now, value) for n, i in enumerate(ids)
                      for key, value in (("temperature", 20 + n / 100), ("humidity", 40.0))])
    with _counting(ctx) as statements:
        view = ui_data.device_list(ctx, None, None, "")
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) <= 3, selects  # devices + all latest values, never one query per device
    assert view.total == 1000 and len(view.rows) == 1000
    row = next(r for r in view.rows if r["id"] == "s0150")
    assert row["latest"] == "humidity 40 · temperature 21.5"
    assert view.labels == ["even", "odd"]


def test_list_filters_by_label_status_and_text(ctx: Context) -> None:
    _devices(ctx, 6)
    with ctx.db.session() as session:
        devices.read_device(session, "s0003").status = "online"
    assert [r["id"] for r in ui_data.device_list(ctx, "odd", None, "").rows] == ["s0001", "s0003", "s0005"]
    assert [r["id"] for r in ui_data.device_list(ctx, None, "online", "").rows] == ["s0003"]
    assert [r["id"] for r in ui_data.device_list(ctx, None, None, "SENSOR-0004").rows] == ["s0004"]
    assert ui_data.device_list(ctx, "even", "online", "").rows == []
    assert ui_data.device_list(ctx, None, None, "").total == 6


def test_device_view_telemetry_and_attribute_history(ctx: Context) -> None:
    [device_id] = _devices(ctx, 1)
    now = time.time()
    ctx.series.write([("iot.pressure", {"device": device_id}, now - 60 + i * 20, 1.0 + i) for i in range(3)])
    with ctx.db.session() as session:
        store.store_attributes(session, device_id, {"firmware": "1.0"}, _utc(now - 30))
        store.store_attributes(session, device_id, {"firmware": "1.1"}, _utc(now))
    view = ui_data.device_view(ctx, device_id)
    assert view is not None
    assert view.device.name == "sensor-0000" and view.telemetry["pressure"][1] == 3.0
    assert [(a["key"], a["value"]) for a in view.attributes] == [("firmware", "1.1")]
    data = ui_data.telemetry(ctx, device_id, ["pressure"], now - 900, now + 1, plan_for(900))
    assert [v for _, v in data.lines["pressure"]] == [1.0, 2.0, 3.0]
    assert [h["value"] for h in ui_data.attribute_history(ctx, device_id, "firmware")] == ["1.1", "1.0"]
    assert ui_data.device_view(ctx, "nope") is None


def test_command_sent_from_the_page_is_queued_and_listed(ctx: Context) -> None:
    [device_id] = _devices(ctx, 1)
    command = ui_data.send_command(ctx, device_id, CommandCreate(name="capture", params={"w": 640}, timeout_s=5))
    assert command.state == "queued"  # nobody listens: it waits for the device
    assert ui_data.read_command(ctx, command.id).params == {"w": 640}
    view = ui_data.device_view(ctx, device_id)
    assert view is not None and [(c["name"], c["state"]) for c in view.commands] == [("capture", "queued")]


def test_broadcast_from_the_page_queues_one_command_per_labelled_device(ctx: Context) -> None:
    _devices(ctx, 4)
    broadcast_id, count = ui_data.send_broadcast(ctx, "odd", CommandCreate(name="capture"))
    assert count == 2
    rows = ui_data.broadcast_rows(ctx, broadcast_id)
    assert [(r["device"], r["state"]) for r in rows] == [("sensor-0001", "queued"), ("sensor-0003", "queued")]
    assert ui_data.send_broadcast(ctx, "nobody", CommandCreate(name="capture"))[1] == 0


def test_dead_letters_with_counts_and_a_kind_filter(ctx: Context) -> None:
    with ctx.db.session() as session:
        deadletters.record(session, source="mqtt", topic="ct/d/x/telemetry", kind="malformed_json",
                           reason="body: not valid JSON", payload=b"{oops" + b"x" * 500, device_id="x")
        deadletters.record(session, source="http", topic="POST /api/v1/devices/y/telemetry", kind="unknown_device",
                           reason="device_id: no device 'y'", device_id="y")
    view = ui_data.dead_letters(ctx, None)
    assert view.counts == {"malformed_json": 1, "unknown_device": 1}
    assert [r["kind"] for r in view.rows] == ["unknown_device", "malformed_json"]
    preview = view.rows[1]["payload"]
    assert preview.startswith("{oops") and len(preview) == ui_data.PREVIEW_CHARS
    assert [r["device"] for r in ui_data.dead_letters(ctx, "unknown_device").rows] == ["y"]


def test_stored_file_and_which_types_show_inline(ctx: Context) -> None:
    [device_id] = _devices(ctx, 1)
    sha = ctx.blobs.put_bytes(b"\x89PNG fake").sha256
    with ctx.db.session() as session:
        row = store.add_file(session, device_id=device_id, sha256=sha, size=9, content_type="image/png",
                             filename="a.png", command_id=None)
        file_id = row.id
    found = ui_data.stored_file(ctx, file_id)
    assert found is not None and found.path.read_bytes() == b"\x89PNG fake" and found.filename == "a.png"
    assert ui_data.stored_file(ctx, file_id + 1) is None
    assert ui_data.is_image("image/jpeg; q=1") and not ui_data.is_image("image/svg+xml")
    assert not ui_data.is_image("text/html")
    assert ui_data.size_text(512) == "512 B" and ui_data.size_text(3 * 1024 * 1024) == "3.0 MB"
