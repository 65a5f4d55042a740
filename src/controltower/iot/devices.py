"""The device registry: create, update, delete, credentials (rotate, revoke) and bulk import from CSV."""

from __future__ import annotations

import csv
import io
import secrets
from typing import Any

from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from controltower.core.auth import Role, issue_token, revoke_subject_tokens
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.series import LatestSample
from controltower.iot.models import Device, DeviceAttribute
from controltower.iot.payloads import SERIES_PREFIX
from controltower.iot.schemas import (
    AttributePublic,
    DeviceCreate,
    DeviceDetail,
    DevicePublic,
    DeviceUpdate,
    LatestValue,
)

MAX_IMPORT_ROWS = 10_000


class DeviceNotFound(LookupError):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"no device with id {device_id!r}")
        self.device_id = device_id


class DeviceConflict(ValueError):
    """A device with that name or id exists; `field` says which."""

    def __init__(self, field: str, value: str, where: str = "") -> None:
        super().__init__(f"{field}: a device with {field} {value!r} already exists{where}")
        self.field = field
        self.value = value


class ImportInvalid(ValueError):
    """A CSV row is bad; the message names the row and field."""


def subject(device_id: str) -> str:
    return f"device:{device_id}"


def new_device_id() -> str:
    return secrets.token_hex(6)


def _issue(session: Session, device: Device) -> str:
    return issue_token(session, name=f"device {device.name}", role=Role.device, subject=subject(device.id))


def _check_free(session: Session, name: str | None, device_id: str | None, exclude: str | None = None) -> None:
    conditions = []
    if name is not None:
        conditions.append(Device.name == name)
    if device_id is not None:
        conditions.append(Device.id == device_id)
    if not conditions:
        return
    for row in session.scalars(select(Device).where(or_(*conditions))):
        if row.id == exclude:
            continue
        if device_id is not None and row.id == device_id:
            raise DeviceConflict("id", device_id)
        raise DeviceConflict("name", row.name)


def create_device(ctx: Context, session: Session, body: DeviceCreate) -> tuple[Device, str]:
    """Register a device and issue its token (returned once, never stored in clear)."""
    device_id = body.id or new_device_id()
    _check_free(session, body.name, device_id)
    now = utcnow()
    device = Device(
        id=device_id,
        name=body.name,
        type=body.type,
        labels=body.labels,
        description=body.description,
        status="unknown",
        status_since=now,
        messages_received=0,
        created_at=now,
        updated_at=now,
    )
    session.add(device)
    session.flush()
    token = _issue(session, device)
    ctx.events.publish("iot.device.created", {"device": device.id, "name": device.name}, session=session)
    return device, token


def read_device(session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise DeviceNotFound(device_id)
    return device


def read_devices(session: Session, label: str | None = None, status: str | None = None) -> list[Device]:
    stmt = select(Device).order_by(Device.name)
    if status is not None:
        stmt = stmt.where(Device.status == status)
    rows = list(session.scalars(stmt))
    return [d for d in rows if label is None or label in (d.labels or [])]


def update_device(session: Session, device_id: str, body: DeviceUpdate) -> Device:
    device = read_device(session, device_id)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "name" in changes and changes["name"] != device.name:
        _check_free(session, changes["name"], None, exclude=device.id)
    for key, value in changes.items():
        setattr(device, key, value)
    device.updated_at = utcnow()
    session.flush()
    return device


def delete_device(ctx: Context, session: Session, device_id: str) -> None:
    """Remove the device with its attributes, files' metadata and commands; revoke its tokens."""
    device = read_device(session, device_id)
    revoke_subject_tokens(session, subject(device_id))
    session.delete(device)
    session.flush()
    ctx.events.publish("iot.device.deleted", {"device": device_id, "name": device.name}, session=session)


def rotate_token(session: Session, device_id: str) -> tuple[Device, str]:
    """Revoke every token of the device and issue a new one."""
    device = read_device(session, device_id)
    revoke_subject_tokens(session, subject(device_id))
    return device, _issue(session, device)


def revoke_tokens(session: Session, device_id: str) -> int:
    """The device can no longer authenticate until its token is rotated."""
    read_device(session, device_id)
    return revoke_subject_tokens(session, subject(device_id))


def parse_csv(text: str) -> list[DeviceCreate]:
    """Rows with a header: `name` (required), `id`, `type`, `labels` (`;` or `,` separated), `description`."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "name" not in [f.strip() for f in reader.fieldnames]:
        raise ImportInvalid("header: a 'name' column is required (optional: id, type, labels, description)")
    allowed = {"name", "id", "type", "labels", "description"}
    unknown = [f for f in reader.fieldnames if f.strip() not in allowed]
    if unknown:
        raise ImportInvalid(f"header: unknown column {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    bodies: list[DeviceCreate] = []
    for line, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        data: dict[str, Any] = {"name": row.get("name", "")}
        if row.get("id"):
            data["id"] = row["id"]
        if row.get("type"):
            data["type"] = row["type"]
        if row.get("description"):
            data["description"] = row["description"]
        labels = row.get("labels", "").replace(";", ",")
        data["labels"] = [part.strip() for part in labels.split(",") if part.strip()]
        try:
            bodies.append(DeviceCreate.model_validate(data))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "row"
            raise ImportInvalid(f"line {line}.{field}: {err['msg']}") from None
        if len(bodies) > MAX_IMPORT_ROWS:
            raise ImportInvalid(f"file: more than {MAX_IMPORT_ROWS} rows")
    if not bodies:
        raise ImportInvalid("file: no rows after the header")
    return bodies


def import_devices(ctx: Context, session: Session, bodies: list[DeviceCreate]) -> list[tuple[Device, str]]:
    """Create every device or none (the caller's transaction); a duplicate names its line."""
    seen_names: dict[str, int] = {}
    seen_ids: dict[str, int] = {}
    for line, body in enumerate(bodies, start=2):
        if body.name in seen_names:
            raise DeviceConflict("name", body.name, f" (line {line}, also line {seen_names[body.name]})")
        seen_names[body.name] = line
        if body.id:
            if body.id in seen_ids:
                raise DeviceConflict("id", body.id, f" (line {line}, also line {seen_ids[body.id]})")
            seen_ids[body.id] = line
    created = []
    for line, body in enumerate(bodies, start=2):
        try:
            created.append(create_device(ctx, session, body))
        except DeviceConflict as exc:
            raise DeviceConflict(exc.field, exc.value, f" (line {line})") from None
    return created


def device_public(device: Device) -> DevicePublic:
    return DevicePublic.model_validate(device)


def read_latest(ctx: Context, device_id: str) -> list[LatestSample]:
    """The newest telemetry values. Call before the request's session runs a query: on SQLite a second
    session opened while that one holds the write lock would wait for it."""
    return ctx.series.latest(name_prefix=SERIES_PREFIX, labels={"device": device_id})


def device_detail(session: Session, device: Device, latest: list[LatestSample]) -> DeviceDetail:
    attrs = session.scalars(
        select(DeviceAttribute).where(DeviceAttribute.device_id == device.id).order_by(DeviceAttribute.key)
    )
    return DeviceDetail(
        **device_public(device).model_dump(),
        telemetry=[
            LatestValue(key=s.name[len(SERIES_PREFIX):], series=s.name, ts=s.ts, value=s.value) for s in latest
        ],
        attributes=[AttributePublic(key=a.key, value=a.value, ts=a.ts) for a in attrs],
    )
