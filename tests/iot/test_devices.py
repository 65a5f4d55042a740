"""The device registry on SQLite and PostgreSQL: create, update, delete, tokens, CSV import."""

from __future__ import annotations

import pytest

from controltower.core.auth import Role, authenticate
from controltower.core.context import Context
from controltower.iot import devices
from controltower.iot.schemas import DeviceCreate, DeviceUpdate


def test_create_issues_a_device_token(ctx: Context) -> None:
    with ctx.db.session() as session:
        device, token = devices.create_device(ctx, session, DeviceCreate(name="boiler", labels=["b", "a", "b"]))
    with ctx.db.session() as session:
        principal = authenticate(session, token)
        stored = devices.read_device(session, device.id)
    assert principal is not None and principal.role == Role.device
    assert principal.subject == f"device:{device.id}"
    assert stored.labels == ["a", "b"] and stored.status == "unknown"


def test_duplicates_are_refused_by_field(ctx: Context) -> None:
    with ctx.db.session() as session:
        devices.create_device(ctx, session, DeviceCreate(name="one", id="dev-1"))
    with ctx.db.session() as session, pytest.raises(devices.DeviceConflict) as info:
        devices.create_device(ctx, session, DeviceCreate(name="one"))
    assert info.value.field == "name"
    with ctx.db.session() as session, pytest.raises(devices.DeviceConflict) as info:
        devices.create_device(ctx, session, DeviceCreate(name="two", id="dev-1"))
    assert info.value.field == "id"


def test_update_rotate_revoke_delete(ctx: Context) -> None:
    with ctx.db.session() as session:
        device, first = devices.create_device(ctx, session, DeviceCreate(name="cam", type="camera"))
        devices.create_device(ctx, session, DeviceCreate(name="other"))
    with ctx.db.session() as session:
        updated = devices.update_device(session, device.id, DeviceUpdate(labels=["lobby"], description="door"))
        assert updated.labels == ["lobby"] and updated.type == "camera"
        with pytest.raises(devices.DeviceConflict):
            devices.update_device(session, device.id, DeviceUpdate(name="other"))
    with ctx.db.session() as session:
        _, second = devices.rotate_token(session, device.id)
    with ctx.db.session() as session:
        assert authenticate(session, first) is None
        assert authenticate(session, second) is not None
        assert devices.revoke_tokens(session, device.id) == 1
    with ctx.db.session() as session:
        assert authenticate(session, second) is None
        assert [d.name for d in devices.read_devices(session, label="lobby")] == ["cam"]
        devices.delete_device(ctx, session, device.id)
    with ctx.db.session() as session, pytest.raises(devices.DeviceNotFound):
        devices.read_device(session, device.id)


def test_csv_import_is_all_or_nothing(ctx: Context) -> None:
    text = "name,id,type,labels,description\nt1,t-1,sensor,\"floor1,hall\",first\nt2,,sensor,floor1;x,\n"
    with ctx.db.session() as session:
        created = devices.import_devices(ctx, session, devices.parse_csv(text))
    assert [(d.name, d.labels) for d, _ in created] == [("t1", ["floor1", "hall"]), ("t2", ["floor1", "x"])]
    assert created[0][0].id == "t-1" and all(t.startswith("ct_") for _, t in created)

    again = "name\nt3\nt1\n"
    with pytest.raises(devices.DeviceConflict) as info, ctx.db.session() as session:
        devices.import_devices(ctx, session, devices.parse_csv(again))
    assert "line 3" in str(info.value)
    with ctx.db.session() as session:
        assert [d.name for d in devices.read_devices(session)] == ["t1", "t2"]  # t3 rolled back

    with pytest.raises(devices.ImportInvalid, match=r"line 2\.id"):
        devices.parse_csv("name,id\nok,bad/id\n")
    with pytest.raises(devices.ImportInvalid, match="header"):
        devices.parse_csv("serial\n1\n")
