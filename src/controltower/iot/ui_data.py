"""What IoT's pages show, read in one go per refresh (blocking: pages call these through run.io_bound)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from controltower.core.context import Context
from controltower.core.series_query import run_query
from controltower.iot import commands, deadletters, devices, store
from controltower.iot.hub import hub_of
from controltower.iot.models import Device, DeviceFile
from controltower.iot.payloads import SERIES_PREFIX
from controltower.iot.schemas import CommandCreate, CommandPublic, DeviceDetail
from controltower.web.charts import RangePlan

PREVIEW_CHARS = 160
RECENT_COMMANDS = 20
GALLERY_FILES = 48
DEAD_LETTER_ROWS = 200


def when(value: Any) -> str:
    """A UTC datetime in the viewer's server-local time, or '-'."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def number(value: float) -> str:
    return f"{value:.6g}"


def compact(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """JSON in one line, cut to `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class DeviceList:
    rows: list[dict[str, Any]]
    total: int
    labels: list[str]


def device_list(ctx: Context, label: str | None, status: str | None, text: str) -> DeviceList:
    """Every device with its latest telemetry: one query for the devices, one for all latest values."""
    latest: dict[str, dict[str, float]] = defaultdict(dict)
    for sample in ctx.series.latest(name_prefix=SERIES_PREFIX):
        device_id = sample.labels.get("device")
        if device_id is not None:
            latest[device_id][sample.name[len(SERIES_PREFIX):]] = sample.value
    needle = text.strip().lower()
    rows = []
    with ctx.db.read_session() as session:
        everything = devices.read_devices(session)
        labels = sorted({lab for d in everything for lab in d.labels or []})
        for d in everything:
            if label and label not in (d.labels or []):
                continue
            if status and d.status != status:
                continue
            if needle and not any(needle in part.lower() for part in (d.name, d.id, d.type, *(d.labels or []))):
                continue
            values = latest.get(d.id, {})
            rows.append({
                "id": d.id,
                "name": d.name,
                "type": d.type,
                "labels": ", ".join(d.labels or []),
                "status": d.status,
                "last_seen": when(d.last_seen_at),
                "latest": " · ".join(f"{k} {number(v)}" for k, v in sorted(values.items())),
            })
    return DeviceList(rows, len(everything), labels)


@dataclass
class DeviceView:
    device: DeviceDetail
    telemetry: dict[str, tuple[float, float]]  # key -> (ts, value) of the newest sample
    attributes: list[dict[str, Any]]
    files: list[dict[str, Any]]
    commands: list[dict[str, Any]]


def _file_row(f: DeviceFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "url": file_url(f.id),
        "name": f.filename or f"file-{f.id}",
        "content_type": f.content_type,
        "image": is_image(f.content_type),
        "size": size_text(f.size),
        "ts": when(f.ts),
        "command_id": f.command_id,
    }


def command_row(c: CommandPublic) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "params": compact(c.params),
        "state": c.state,
        "created": when(c.created_at),
        "finished": when(c.finished_at),
        "result": "" if c.result is None else compact(c.result),
        "error": c.error or "",
    }


def device_view(ctx: Context, device_id: str) -> DeviceView | None:
    latest = devices.read_latest(ctx, device_id)
    with ctx.db.read_session() as session:
        try:
            detail = devices.device_detail(session, devices.read_device(session, device_id), latest)
        except devices.DeviceNotFound:
            return None
        files = [_file_row(f) for f in store.read_files(session, device_id, limit=GALLERY_FILES)]
        recent = [command_row(CommandPublic.model_validate(c))
                  for c in commands.read_commands(session, device_id=device_id, limit=RECENT_COMMANDS)]
    return DeviceView(
        device=detail,
        telemetry={t.key: (t.ts, t.value) for t in detail.telemetry},
        attributes=[{"key": a.key, "value": compact(a.value), "ts": when(a.ts)} for a in detail.attributes],
        files=files,
        commands=recent,
    )


@dataclass
class Telemetry:
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def telemetry(ctx: Context, device_id: str, keys: list[str], start: float, end: float, plan: RangePlan) -> Telemetry:
    """Each numeric key's points over the range, from the series store (the query behind /api/v1/series/query)."""
    out = Telemetry()
    with ctx.db.read_session() as session:
        for key in keys:
            results = run_query(session.connection(), SERIES_PREFIX + key, {"device": device_id}, start, end,
                                plan.step_s, "avg", "auto")
            out.lines[key] = results[0].points if results else []
    return out


def attribute_history(ctx: Context, device_id: str, key: str) -> list[dict[str, str]]:
    with ctx.db.read_session() as session:
        return [{"ts": when(r.ts), "value": compact(r.value, 400)}
                for r in store.attribute_history(session, device_id, key, limit=100)]


def send_command(ctx: Context, device_id: str, body: CommandCreate) -> CommandPublic:
    """Queue the command in one transaction, then have the hub deliver it if the device listens."""
    with ctx.db.session() as session:
        command = CommandPublic.model_validate(commands.create_command(ctx, session, device_id, body))
    hub_of(ctx).notify_command(device_id)
    return command


def send_broadcast(ctx: Context, label: str, body: CommandCreate) -> tuple[str, int]:
    """One command per device carrying `label` (as POST /api/v1/iot/commands/broadcast); (broadcast id, count)."""
    with ctx.db.session() as session:
        broadcast_id, created = commands.create_broadcast(ctx, session, label, body)
        targets = [c.device_id for c in created]
    hub = hub_of(ctx)
    for device_id in targets:
        hub.notify_command(device_id)
    return broadcast_id, len(targets)


def broadcast_rows(ctx: Context, broadcast_id: str) -> list[dict[str, Any]]:
    """Each device's command of a broadcast, with the device's name."""
    with ctx.db.read_session() as session:
        rows = [CommandPublic.model_validate(c) for c in commands.read_commands(session, broadcast_id=broadcast_id,
                                                                                limit=10_000)]
        names = dict(session.execute(select(Device.id, Device.name).where(Device.id.in_({c.device_id
                                                                                          for c in rows}))).all())
    return [{**command_row(c), "device_id": c.device_id, "device": names.get(c.device_id, c.device_id)}
            for c in sorted(rows, key=lambda c: names.get(c.device_id, c.device_id))]


def read_command(ctx: Context, command_id: int) -> CommandPublic:
    with ctx.db.read_session() as session:
        return CommandPublic.model_validate(commands.read_command(session, command_id))


@dataclass
class DeadLetters:
    rows: list[dict[str, Any]]
    counts: dict[str, int]


def dead_letters(ctx: Context, kind: str | None, device_id: str | None = None) -> DeadLetters:
    """The newest refused messages (of one kind, of one device) and the counts per kind of all of them."""
    with ctx.db.read_session() as session:
        return DeadLetters(
            rows=[{
                "id": r.id,
                "ts": when(r.ts),
                "kind": r.kind,
                "reason": r.reason,
                "device": r.device_id or "",
                "source": r.source,
                "topic": r.topic,
                "size": size_text(r.size),
                "payload": compact(r.payload),
            } for r in deadletters.read(session, limit=DEAD_LETTER_ROWS, kind=kind, device_id=device_id)],
            counts=deadletters.counts(session),
        )


# -- files ------------------------------------------------------------------------------------------

# Shown inline in the page; anything else (SVG and HTML included) is only ever downloaded.
INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"})


def is_image(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in INLINE_IMAGES


def file_url(file_id: int) -> str:
    return f"/devices/files/{file_id}"


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@dataclass
class StoredFile:
    path: Path
    content_type: str
    filename: str


def stored_file(ctx: Context, file_id: int) -> StoredFile | None:
    with ctx.db.read_session() as session:
        row = session.get(DeviceFile, file_id)
        if row is None or not ctx.blobs.exists(row.sha256):
            return None
        return StoredFile(ctx.blobs.path(row.sha256), row.content_type, row.filename or f"file-{row.id}")
