"""IoT tables: devices, their attributes (latest and history), files, commands and dead letters."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from controltower.core.db import Base, UtcDateTime, utcnow


class Device(Base):
    """A registered device. Its token lives in `api_tokens` with subject `device:<id>`."""

    __tablename__ = "iot_devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    type: Mapped[str] = mapped_column(String(64), default="generic")
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    status_since: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    connected_via: Mapped[str | None] = mapped_column(String(8))
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    messages_received: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class DeviceAttribute(Base):
    """The latest value of one attribute of a device (string or JSON state)."""

    __tablename__ = "iot_attributes"

    device_id: Mapped[str] = mapped_column(ForeignKey("iot_devices.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class AttributeHistory(Base):
    """Every value an attribute has taken, in arrival order."""

    __tablename__ = "iot_attribute_history"
    __table_args__ = (Index("ix_iot_attribute_history_device_key_ts", "device_id", "key", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("iot_devices.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    value: Mapped[Any] = mapped_column(JSON, nullable=True)
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class DeviceFile(Base):
    """A file a device uploaded; the bytes are in the blob store under `sha256`."""

    __tablename__ = "iot_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("iot_devices.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content_type: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str | None] = mapped_column(String(255))
    command_id: Mapped[int | None] = mapped_column(
        ForeignKey("iot_commands.id", ondelete="SET NULL"), index=True
    )
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class Command(Base):
    """A command for a device: queued -> sent -> succeeded | failed | timed_out, or queued -> expired."""

    __tablename__ = "iot_commands"
    __table_args__ = (Index("ix_iot_commands_device_state", "device_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("iot_devices.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    one_way: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    timeout_s: Mapped[float] = mapped_column(default=30.0)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, index=True)
    broadcast_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class DeadLetter(Base):
    """A message ingestion refused, with why. Kept for inspection, counted in /metrics."""

    __tablename__ = "iot_dead_letters"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(8))
    device_id: Mapped[str | None] = mapped_column(String(64), index=True)
    topic: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    payload: Mapped[str] = mapped_column(Text, default="")
