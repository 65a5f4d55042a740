"""Store what devices send: numbers into core series, other values as attributes with history, file metadata."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.series import RawSample
from controltower.iot.models import AttributeHistory, Command, Device, DeviceAttribute, DeviceFile
from controltower.iot.payloads import Reading, Rejected, series_name

HISTORY_LIMIT = 1000


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def store_attributes(session: Session, device_id: str, values: dict[str, Any], ts: dt.datetime) -> int:
    """Upsert the latest value of each key and append it to the key's history."""
    for key, value in values.items():
        row = session.get(DeviceAttribute, (device_id, key))
        if row is None:
            session.add(DeviceAttribute(device_id=device_id, key=key, value=value, ts=ts))
        elif row.ts <= ts:
            row.value, row.ts = value, ts
        session.add(AttributeHistory(device_id=device_id, key=key, value=value, ts=ts))
    return len(values)


def store_readings(
    ctx: Context, session: Session, device_id: str, readings: list[Reading], batch: list[RawSample] | None = None
) -> tuple[int, int]:
    """Numbers -> series `iot.<key>{device=<id>}`; strings / JSON -> attributes. Returns (numbers, attributes).

    With `batch`, the numbers are appended to it, for one series write per batch of messages: parse_telemetry
    has already refused what the series store would (names, finite values, times in range)."""
    labels = {"device": device_id}
    samples = [
        (series_name(key), labels, r.ts, value) for r in readings for key, value in r.numbers.items()
    ]
    if batch is not None:
        batch.extend(samples)
    elif samples:
        try:
            ctx.series.write(samples, session=session)
        except ValueError as exc:  # SeriesError names the sample
            raise Rejected("invalid", f"values: {exc}") from None
    attrs = 0
    for reading in readings:
        if reading.others:
            attrs += store_attributes(session, device_id, reading.others, _utc(reading.ts))
    return len(samples), attrs


def attribute_history(session: Session, device_id: str, key: str, limit: int = 100) -> list[AttributeHistory]:
    """Newest first."""
    stmt = (
        select(AttributeHistory)
        .where(AttributeHistory.device_id == device_id, AttributeHistory.key == key)
        .order_by(AttributeHistory.ts.desc(), AttributeHistory.id.desc())
        .limit(min(limit, HISTORY_LIMIT))
    )
    return list(session.scalars(stmt))


def add_file(
    session: Session,
    *,
    device_id: str,
    sha256: str,
    size: int,
    content_type: str,
    filename: str | None,
    command_id: int | None,
) -> DeviceFile:
    if command_id is not None:
        command = session.get(Command, command_id)
        if command is None or command.device_id != device_id:
            raise Rejected("invalid", f"command_id: device {device_id} has no command {command_id}")
    row = DeviceFile(
        device_id=device_id,
        sha256=sha256,
        size=size,
        content_type=content_type,
        filename=filename,
        command_id=command_id,
        ts=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def record_file(
    session: Session,
    device: Device,
    *,
    sha256: str,
    size: int,
    content_type: str,
    filename: str | None,
    command_id: int | None,
) -> DeviceFile:
    """A file already in the blob store becomes the device's (HTTP upload or MQTT chunks); the device was seen."""
    row = add_file(session, device_id=device.id, sha256=sha256, size=size, content_type=content_type,
                   filename=filename, command_id=command_id)
    device.last_seen_at = row.ts
    return row


def read_files(session: Session, device_id: str, command_id: int | None = None, limit: int = 100) -> list[DeviceFile]:
    stmt = select(DeviceFile).where(DeviceFile.device_id == device_id)
    if command_id is not None:
        stmt = stmt.where(DeviceFile.command_id == command_id)
    return list(session.scalars(stmt.order_by(DeviceFile.id.desc()).limit(limit)))
