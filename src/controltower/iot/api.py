"""IoT's REST routes: the device registry, HTTP push (telemetry, attributes, files), commands, dead letters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from controltower.core.auth import Admin, Operator, Principal, Role, Viewer, require
from controltower.core.blobs import BlobTooLargeError
from controltower.core.context import Context
from controltower.core.deps import CtxDep, SessionDep
from controltower.iot import commands, deadletters, devices, presence, store, topics
from controltower.iot.hub import hub_of
from controltower.iot.models import DeviceFile
from controltower.iot.payloads import Rejected, load_json, parse_response
from controltower.iot.schemas import (
    AttributePublic,
    BroadcastCreate,
    BroadcastPublic,
    CommandCreate,
    CommandPublic,
    CommandResponse,
    DeadLetterPublic,
    DeviceCreate,
    DeviceCredentials,
    DeviceDetail,
    DevicePublic,
    DeviceUpdate,
    FilePublic,
    ImportResult,
    TelemetryAccepted,
)

devices_router = APIRouter(prefix="/devices", tags=["iot"])
iot_router = APIRouter(prefix="/iot", tags=["iot"])

DevicePrincipal = Annotated[Principal, require(Role.device)]
LONG_POLL_STEP_S = 0.25

_KIND_STATUS = {
    "malformed_json": status.HTTP_400_BAD_REQUEST,
    "oversize": status.HTTP_413_CONTENT_TOO_LARGE,
    "unknown_device": status.HTTP_404_NOT_FOUND,
    "late_response": status.HTTP_409_CONFLICT,
    "forbidden": status.HTTP_403_FORBIDDEN,
}


def _credentials_revoked(ctx: Context, device_id: str) -> None:
    """After the commit: the old token stops working at once, over HTTP and on live MQTT sessions."""
    ctx.principals.forget_subject(devices.subject(device_id))
    hub_of(ctx).credentials_revoked(device_id)


def _not_found(exc: LookupError) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))


def _own(principal: Principal, device_id: str) -> None:
    if principal.subject != devices.subject(device_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"device_id: this token belongs to {principal.subject}")


def _refuse(session: Session, device_id: str, path: str, payload: bytes, exc: Rejected) -> HTTPException:
    """Roll back what the request wrote, keep the dead letter, and say why."""
    session.rollback()
    deadletters.record(session, source="http", topic=path, kind=exc.kind, reason=exc.reason, payload=payload,
                       device_id=device_id)
    session.commit()
    return HTTPException(_KIND_STATUS.get(exc.kind, status.HTTP_422_UNPROCESSABLE_CONTENT), detail=exc.reason)


async def read_limited_body(request: Request) -> bytes:
    """The body, refused (after a dead letter) past CT_IOT_MESSAGE_MAX_BYTES."""
    ctx: Context = request.app.state.ctx
    limit = ctx.settings.iot_message_max_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            reason = f"body: more than {limit} bytes (CT_IOT_MESSAGE_MAX_BYTES)"
            await asyncio.to_thread(_oversize, ctx, request, b"".join(chunks)[: deadletters.PAYLOAD_KEEP], reason)
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=reason)
        chunks.append(chunk)
    return b"".join(chunks)


def _oversize(ctx: Context, request: Request, payload: bytes, reason: str) -> None:
    with ctx.db.session() as session:
        deadletters.record(session, source="http", topic=f"{request.method} {request.url.path}", kind="oversize",
                           reason=reason, payload=payload, device_id=request.path_params.get("device_id"))


Body = Annotated[bytes, Depends(read_limited_body)]


# -- registry -------------------------------------------------------------------------------------


@devices_router.post("", status_code=status.HTTP_201_CREATED)
def create_device(body: DeviceCreate, ctx: CtxDep, session: SessionDep, _: Operator) -> DeviceCredentials:
    """Register a device; the answer carries its token, which is never shown again."""
    try:
        device, token = devices.create_device(ctx, session, body)
    except devices.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    session.commit()
    return DeviceCredentials(id=device.id, name=device.name, token=token)


@devices_router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def import_devices(body: Body, ctx: CtxDep, session: SessionDep, _: Operator) -> ImportResult:
    """Create devices from CSV (header: name, id, type, labels, description): all of them or none."""
    try:
        bodies = devices.parse_csv(body.decode("utf-8-sig"))
        created = devices.import_devices(ctx, session, bodies)
    except UnicodeDecodeError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="body: CSV must be UTF-8") from None
    except devices.ImportInvalid as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
    except devices.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    session.commit()
    return ImportResult(created=[DeviceCredentials(id=d.id, name=d.name, token=t) for d, t in created])


@devices_router.get("")
def list_devices(
    session: SessionDep,
    _: Viewer,
    label: Annotated[str | None, Query(description="Only devices with this label")] = None,
    status_: Annotated[str | None, Query(alias="status", description="online, offline or unknown")] = None,
) -> list[DevicePublic]:
    return [devices.device_public(d) for d in devices.read_devices(session, label, status_)]


@devices_router.get("/{device_id}")
def get_device(device_id: str, ctx: CtxDep, session: SessionDep, _: Viewer) -> DeviceDetail:
    """One device with its latest telemetry values and attributes."""
    latest = devices.read_latest(ctx, device_id)
    try:
        device = devices.read_device(session, device_id)
    except devices.DeviceNotFound as exc:
        raise _not_found(exc) from None
    return devices.device_detail(session, device, latest)


@devices_router.patch("/{device_id}")
def update_device(device_id: str, body: DeviceUpdate, session: SessionDep, _: Operator) -> DevicePublic:
    try:
        device = devices.update_device(session, device_id, body)
    except devices.DeviceNotFound as exc:
        raise _not_found(exc) from None
    except devices.DeviceConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    session.commit()
    return devices.device_public(device)


@devices_router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_device(device_id: str, ctx: CtxDep, session: SessionDep, _: Admin) -> Response:
    """Remove the device, its attributes, file records and commands; its token stops working."""
    try:
        devices.delete_device(ctx, session, device_id)
    except devices.DeviceNotFound as exc:
        raise _not_found(exc) from None
    session.commit()
    _credentials_revoked(ctx, device_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@devices_router.post("/{device_id}/token")
def rotate_token(device_id: str, ctx: CtxDep, session: SessionDep, _: Operator) -> DeviceCredentials:
    """Revoke the device's token(s) and issue a new one (shown once)."""
    try:
        device, token = devices.rotate_token(session, device_id)
    except devices.DeviceNotFound as exc:
        raise _not_found(exc) from None
    session.commit()
    _credentials_revoked(ctx, device_id)
    return DeviceCredentials(id=device.id, name=device.name, token=token)


@devices_router.delete("/{device_id}/token")
def revoke_token(device_id: str, ctx: CtxDep, session: SessionDep, _: Operator) -> dict[str, int]:
    """The device can no longer log in or push until its token is rotated."""
    try:
        count = devices.revoke_tokens(session, device_id)
    except devices.DeviceNotFound as exc:
        raise _not_found(exc) from None
    session.commit()
    _credentials_revoked(ctx, device_id)
    return {"revoked": count}


@devices_router.get("/{device_id}/attributes/{key}/history")
def attribute_history(
    device_id: str, key: str, session: SessionDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[AttributePublic]:
    """Values the attribute took, newest first."""
    try:
        devices.read_device(session, device_id)
    except devices.DeviceNotFound as exc:
        raise _not_found(exc) from None
    return [AttributePublic(key=r.key, value=r.value, ts=r.ts) for r in store.attribute_history(session, device_id,
                                                                                                key, limit)]


# -- HTTP push ------------------------------------------------------------------------------------


def _push(ctx: Context, session: SessionDep, device_id: str, channel: str, body: bytes, path: str) -> TelemetryAccepted:
    try:
        device = devices.read_device(session, device_id)
        outcome = hub_of(ctx).store(session, device, topics.topic(device_id, channel), body, "http")
    except devices.DeviceNotFound:
        unknown = Rejected("unknown_device", f"device_id: no device {device_id!r}")
        raise _refuse(session, device_id, path, body, unknown) from None
    except Rejected as exc:
        raise _refuse(session, device_id, path, body, exc) from None
    session.commit()
    return TelemetryAccepted(device=device_id, readings=outcome.readings, numbers=outcome.numbers,
                             attributes=outcome.attributes)


@devices_router.post(
    "/{device_id}/telemetry",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
)
def push_telemetry(
    device_id: str, body: Body, request: Request, ctx: CtxDep, session: SessionDep, principal: DevicePrincipal
) -> TelemetryAccepted:
    """`{"ts": ..., "values": {...}}` or a list of those, with the device's token. Numbers become series
    `iot.<key>{device=<id>}`, other values attributes; a bad body is a dead letter and a 4xx naming the field."""
    _own(principal, device_id)
    return _push(ctx, session, device_id, topics.TELEMETRY, body, f"POST {request.url.path}")


@devices_router.post(
    "/{device_id}/attributes",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}},
)
def push_attributes(
    device_id: str, body: Body, request: Request, ctx: CtxDep, session: SessionDep, principal: DevicePrincipal
) -> TelemetryAccepted:
    """`{"key": any JSON, ...}`: the device's latest state, each value kept with its history."""
    _own(principal, device_id)
    return _push(ctx, session, device_id, topics.ATTRIBUTES, body, f"POST {request.url.path}")


class _TooLarge(Exception):
    pass


@devices_router.post(
    "/{device_id}/files",
    status_code=status.HTTP_201_CREATED,
    openapi_extra={"requestBody": {"required": True, "content": {"*/*": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}},
)
async def upload_file(
    device_id: str,
    request: Request,
    ctx: CtxDep,
    principal: DevicePrincipal,
    filename: Annotated[str | None, Query(max_length=255)] = None,
    command_id: Annotated[int | None, Query(description="The command this file answers")] = None,
) -> FilePublic:
    """The raw body (any content type) streamed into the blob store, with size, type and sha256 recorded."""
    _own(principal, device_id)
    limit = min(ctx.settings.iot_file_max_bytes, ctx.blobs.max_bytes)
    path = f"POST {request.url.path}"
    reason = f"body: larger than the limit of {limit} bytes (CT_IOT_FILE_MAX_BYTES)"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        await asyncio.to_thread(_file_refused, ctx, device_id, path, "oversize", reason, int(declared))
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=reason)

    async def limited() -> AsyncIterator[bytes]:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            yield chunk

    try:
        ref = await ctx.blobs.put_stream(limited())
    except (_TooLarge, BlobTooLargeError):
        await asyncio.to_thread(_file_refused, ctx, device_id, path, "oversize", reason, 0)
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=reason) from None
    content_type = request.headers.get("content-type", "application/octet-stream")[:255]
    try:
        row = await asyncio.to_thread(_save_file, ctx, device_id, ref.sha256, ref.size, content_type, filename,
                                      command_id)
    except Rejected as exc:
        await asyncio.to_thread(_file_refused, ctx, device_id, path, exc.kind, exc.reason, ref.size)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.reason) from None
    return FilePublic.model_validate(row)


def _save_file(ctx: Context, device_id: str, sha256: str, size: int, content_type: str, filename: str | None,
               command_id: int | None) -> DeviceFile:
    with ctx.db.session() as session:
        device = devices.read_device(session, device_id)
        return store.record_file(session, device, sha256=sha256, size=size, content_type=content_type,
                                 filename=filename, command_id=command_id)


def _file_refused(ctx: Context, device_id: str, path: str, kind: str, reason: str, size: int) -> None:
    with ctx.db.session() as session:
        row = deadletters.record(session, source="http", topic=path, kind=kind, reason=reason, device_id=device_id)
        row.size = size


@devices_router.get("/{device_id}/files")
def list_files(
    device_id: str,
    session: SessionDep,
    _: Viewer,
    command_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[FilePublic]:
    """Newest first."""
    return [FilePublic.model_validate(f) for f in store.read_files(session, device_id, command_id, limit)]


@iot_router.get("/files/{file_id}/content")
def file_content(file_id: int, ctx: CtxDep, session: SessionDep, _: Viewer) -> FileResponse:
    row = session.get(DeviceFile, file_id)
    if row is None or not ctx.blobs.exists(row.sha256):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no file with id {file_id}")
    return FileResponse(ctx.blobs.path(row.sha256), media_type=row.content_type, filename=row.filename)


# -- commands -------------------------------------------------------------------------------------


@devices_router.post("/{device_id}/commands", status_code=status.HTTP_201_CREATED)
def send_command(device_id: str, body: CommandCreate, ctx: CtxDep, session: SessionDep, _: Operator) -> CommandPublic:
    """Queue a command; it is delivered on `ct/d/{id}/commands` now if the device listens, else when it does
    (until `expires_at`). Poll `GET /iot/commands/{id}` or call the action `iot.send_command` to wait."""
    try:
        command = commands.create_command(ctx, session, device_id, body)
    except devices.DeviceNotFound as exc:
        raise _not_found(exc) from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
    session.commit()
    hub_of(ctx).notify_command(device_id)
    return CommandPublic.model_validate(command)


@iot_router.post("/commands/broadcast", status_code=status.HTTP_201_CREATED)
def broadcast_command(body: BroadcastCreate, ctx: CtxDep, session: SessionDep, _: Operator) -> BroadcastPublic:
    """One command per device carrying `label`; each has its own state."""
    command_body = CommandCreate(**body.model_dump(exclude={"label"}))
    try:
        broadcast_id, created = commands.create_broadcast(ctx, session, body.label, command_body)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
    session.commit()
    hub = hub_of(ctx)
    for command in created:
        hub.notify_command(command.device_id)
    return BroadcastPublic(broadcast_id=broadcast_id, commands=[CommandPublic.model_validate(c) for c in created])


@devices_router.get("/{device_id}/commands")
def list_commands(
    device_id: str, session: SessionDep, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[CommandPublic]:
    """Newest first."""
    return [CommandPublic.model_validate(c) for c in commands.read_commands(session, device_id=device_id,
                                                                             limit=limit)]


@iot_router.get("/commands")
def list_broadcast(
    session: SessionDep, _: Viewer, broadcast_id: str, limit: Annotated[int, Query(ge=1, le=10000)] = 1000
) -> list[CommandPublic]:
    """The commands of one broadcast, with each device's state."""
    return [CommandPublic.model_validate(c) for c in commands.read_commands(session, broadcast_id=broadcast_id,
                                                                             limit=limit)]


@iot_router.get("/commands/{command_id}")
def get_command(command_id: int, session: SessionDep, _: Viewer) -> CommandPublic:
    try:
        return CommandPublic.model_validate(commands.read_command(session, command_id))
    except commands.CommandNotFound as exc:
        raise _not_found(exc) from None


def _take_next(ctx: Context, device_id: str) -> CommandPublic | None:
    with ctx.db.session() as session:
        device = devices.read_device(session, device_id)
        taken = commands.take_pending(ctx, session, device_id, limit=1)
        presence.seen(ctx, session, device, "http")
        return CommandPublic.model_validate(taken[0]) if taken else None


@devices_router.get("/{device_id}/commands/next", response_model=None)
async def next_command(
    device_id: str,
    ctx: CtxDep,
    principal: DevicePrincipal,
    wait: Annotated[float, Query(ge=0, le=60, description="Long-poll up to this many seconds")] = 25,
) -> CommandPublic | Response:
    """For HTTP devices: the next queued command (now `sent`), or 204 when none came within `wait` seconds."""
    _own(principal, device_id)
    deadline = time.monotonic() + wait
    while True:
        try:
            command = await asyncio.to_thread(_take_next, ctx, device_id)
        except devices.DeviceNotFound as exc:
            raise _not_found(exc) from None
        if command is not None:
            return command
        if time.monotonic() >= deadline:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await asyncio.sleep(LONG_POLL_STEP_S)


@devices_router.post("/{device_id}/commands/{command_id}/response")
def command_response(
    device_id: str,
    command_id: int,
    body: Body,
    request: Request,
    ctx: CtxDep,
    session: SessionDep,
    principal: DevicePrincipal,
) -> CommandPublic:
    """The device's answer over HTTP (the same body as on `ct/d/{id}/responses/{command_id}`)."""
    _own(principal, device_id)
    path = f"POST {request.url.path}"
    try:
        response = parse_response(load_json(body))
        CommandResponse.model_validate(load_json(body))
        command = commands.respond(ctx, session, device_id, command_id, response)
    except Rejected as exc:
        raise _refuse(session, device_id, path, body, exc) from None
    except ValueError as exc:
        raise _refuse(session, device_id, path, body, Rejected("invalid", f"body: {exc}")) from None
    session.commit()
    return CommandPublic.model_validate(command)


# -- dead letters ---------------------------------------------------------------------------------


@iot_router.get("/dead-letters")
def list_dead_letters(
    session: SessionDep,
    _: Viewer,
    kind: str | None = None,
    device_id: str | None = None,
    before_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeadLetterPublic]:
    """Refused messages, newest first, with the reason."""
    rows = deadletters.read(session, limit=limit, kind=kind, device_id=device_id, before_id=before_id)
    return [DeadLetterPublic.model_validate(r) for r in rows]


@iot_router.get("/dead-letters/counts")
def dead_letter_counts(session: SessionDep, _: Viewer) -> dict[str, int]:
    return deadletters.counts(session)
