"""IoT API models: devices, attributes, files, commands, dead letters."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controltower.iot.topics import DEVICE_ID_PATTERN

LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$"


def _check_labels(labels: list[str] | None) -> list[str] | None:
    if labels is None:
        return None
    for i, label in enumerate(labels):
        if not re.match(LABEL_PATTERN, label):
            raise ValueError(f"label {i} ({label!r}) must match {LABEL_PATTERN}")
    return sorted(set(labels))


class DeviceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    id: str | None = Field(None, pattern=f"^{DEVICE_ID_PATTERN}$", description="Default: generated")
    type: str = Field("generic", min_length=1, max_length=64)
    labels: list[str] = Field(default_factory=list, max_length=32)
    description: str = Field("", max_length=4000)

    _labels = field_validator("labels")(_check_labels)


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=128)
    type: str | None = Field(None, min_length=1, max_length=64)
    labels: list[str] | None = Field(None, max_length=32)
    description: str | None = Field(None, max_length=4000)

    _labels = field_validator("labels")(_check_labels)


class DevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    type: str
    labels: list[str]
    description: str
    status: str
    status_since: dt.datetime | None
    connected_via: str | None
    last_seen_at: dt.datetime | None
    messages_received: int
    created_at: dt.datetime
    updated_at: dt.datetime


class DeviceCredentials(BaseModel):
    """Shown once: the device's id and token (MQTT username and password)."""

    id: str
    name: str
    token: str


class LatestValue(BaseModel):
    key: str
    series: str
    ts: float
    value: float


class AttributePublic(BaseModel):
    key: str
    value: Any
    ts: dt.datetime


class DeviceDetail(DevicePublic):
    telemetry: list[LatestValue]
    attributes: list[AttributePublic]


class ImportResult(BaseModel):
    created: list[DeviceCredentials]


class TelemetryAccepted(BaseModel):
    device: str
    readings: int
    numbers: int
    attributes: int


class FilePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: str
    sha256: str
    size: int
    content_type: str
    filename: str | None
    command_id: int | None
    ts: dt.datetime


class DeadLetterPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    ts: dt.datetime
    source: str
    device_id: str | None
    topic: str
    kind: str
    reason: str
    size: int
    payload: str


class CommandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    params: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(30.0, gt=0, le=86400, description="Seconds from delivery to an answer")
    expires_at: dt.datetime | None = Field(
        None, description="Undelivered by then means expired; default one day from now"
    )
    one_way: bool = Field(False, description="No answer expected: succeeded once delivered")

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a timezone, e.g. 2030-01-01T00:00:00Z")
        return value


class BroadcastCreate(CommandCreate):
    label: str = Field(min_length=1, max_length=64, description="Every device with this label gets the command")


class CommandPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: str
    name: str
    params: dict[str, Any]
    one_way: bool
    state: str
    timeout_s: float
    expires_at: dt.datetime
    broadcast_id: str | None
    created_at: dt.datetime
    sent_at: dt.datetime | None
    finished_at: dt.datetime | None
    result: Any
    error: str | None


class CommandResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["succeeded", "failed"] = "succeeded"
    result: Any = None
    error: str | None = None


class BroadcastPublic(BaseModel):
    broadcast_id: str
    commands: list[CommandPublic]
