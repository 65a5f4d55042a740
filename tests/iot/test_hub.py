"""The ingestion hub on a real database: telemetry and attributes stored, bad messages dead-lettered, status."""

from __future__ import annotations

import json

from sqlalchemy import select

from controltower.core.context import Context
from controltower.core.events import recent
from controltower.iot import deadletters, store
from controltower.iot.devices import create_device, read_device
from controltower.iot.hub import Hub
from controltower.iot.models import DeviceAttribute
from controltower.iot.schemas import DeviceCreate


def _device(ctx: Context, name: str = "probe") -> str:
    with ctx.db.session() as session:
        device, _ = create_device(ctx, session, DeviceCreate(name=name))
        return device.id


def _dumps(data: object) -> bytes:
    return json.dumps(data).encode()


def test_telemetry_goes_to_series_and_attributes(ctx: Context, hub: Hub) -> None:
    dev = _device(ctx)
    hub.message(f"ct/d/{dev}/telemetry", _dumps({"ts": 1_700_000_000, "values": {"temp": 20.5, "mode": "eco"}}))
    hub.message(f"ct/d/{dev}/telemetry", _dumps([{"ts": 1_700_000_060, "values": {"temp": 21}},
                                                 {"ts": 1_700_000_120, "values": {"temp": 22, "mode": "boost"}}]))
    hub.message(f"ct/d/{dev}/attributes", _dumps({"firmware": "1.4.2"}))
    assert hub.flush()
    [series] = ctx.series.query("iot.temp", {"device": dev}, 1_699_999_999, 1_700_000_200, resolution="raw")
    assert [p[1] for p in series.points] == [20.5, 21.0, 22.0]
    with ctx.db.read_session() as session:
        attrs = {a.key: a.value for a in session.scalars(select(DeviceAttribute))}
        history = [h.value for h in store.attribute_history(session, dev, "mode")]
        device = read_device(session, dev)
        assert device.messages_received == 3 and device.last_seen_at is not None
    assert attrs == {"mode": "boost", "firmware": "1.4.2"}
    assert history == ["boost", "eco"]


def test_bad_messages_are_dead_letters_and_the_next_good_one_is_stored(ctx: Context, hub: Hub) -> None:
    dev = _device(ctx)
    hub.message(f"ct/d/{dev}/telemetry", b"{not json")
    hub.message(f"ct/d/{dev}/telemetry", _dumps({"values": {"temp": [1, 2]}, "bogus": 1}))
    hub.message("ct/d/nobody/telemetry", _dumps({"values": {"temp": 1}}))
    hub.message(f"ct/d/{dev}/telemetry", b"x" * 5000)  # the fixture's limit is 2048 bytes
    hub.message(f"ct/d/{dev}/telemetry", _dumps({"values": {"temp": 19}}))
    assert hub.flush()
    with ctx.db.read_session() as session:
        letters = {x.kind: (x.size, x.reason) for x in deadletters.read(session)}
        counts = deadletters.counts(session)
    assert counts == {"malformed_json": 1, "invalid": 1, "unknown_device": 1, "oversize": 1}
    assert letters["oversize"][0] == 4096 and "CT_IOT_MESSAGE_MAX_BYTES" in letters["oversize"][1]
    assert letters["invalid"][1].startswith("body.bogus")
    [latest] = ctx.series.latest("iot.temp", {"device": dev})
    assert latest.value == 19.0
    assert hub.stats["dead_letters"] == 4 and hub.stats["stored"] == 1


def test_connections_drive_online_and_offline_events(ctx: Context, hub: Hub) -> None:
    dev = _device(ctx)
    hub.connected(dev)
    hub.connected(dev)  # a second connection of the same device
    hub.disconnected(dev)
    assert hub.flush()
    with ctx.db.read_session() as session:
        assert read_device(session, dev).status == "online"
    hub.disconnected(dev)
    assert hub.flush()
    with ctx.db.read_session() as session:
        device = read_device(session, dev)
        assert device.status == "offline" and device.connected_via == "mqtt"
        topics = [e.topic for e in recent(session, "iot.device.*")]
    assert topics == ["iot.device.created", "iot.device.online", "iot.device.offline"]
