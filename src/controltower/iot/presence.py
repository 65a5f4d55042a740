"""Online/offline status: from MQTT connections (and last wills), or last-seen for HTTP devices."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.iot.models import Device

ONLINE, OFFLINE, UNKNOWN = "online", "offline", "unknown"


def set_status(ctx: Context, session: Session, device: Device, status: str, via: str) -> bool:
    """Move the device to `status`; publish `iot.device.online|offline` when it changed."""
    now = utcnow()
    if status == ONLINE:
        device.last_seen_at = now
        device.connected_via = via
    if device.status == status:
        return False
    device.status = status
    device.status_since = now
    ctx.events.publish(
        f"iot.device.{status}", {"device": device.id, "name": device.name, "via": via}, session=session
    )
    return True


def seen(ctx: Context, session: Session, device: Device, via: str) -> None:
    """A message arrived: last-seen now; an HTTP device (or one of unknown state) comes online."""
    device.last_seen_at = utcnow()
    if via == "http" or device.status != ONLINE:
        set_status(ctx, session, device, ONLINE, via)


def expire_http(ctx: Context) -> int:
    """HTTP devices silent for CT_IOT_HTTP_OFFLINE_AFTER_S go offline; returns how many."""
    cutoff = utcnow() - dt.timedelta(seconds=ctx.settings.iot_http_offline_after_s)
    with ctx.db.session() as session:
        stale = session.scalars(
            select(Device).where(
                Device.status == ONLINE, Device.connected_via == "http", Device.last_seen_at < cutoff
            )
        ).all()
        for device in stale:
            set_status(ctx, session, device, OFFLINE, "http")
    return len(stale)


def reset_mqtt(ctx: Context) -> int:
    """At embedded-broker start nobody is connected yet: devices shown online over MQTT go offline."""
    with ctx.db.session() as session:
        rows = session.scalars(
            select(Device).where(Device.status == ONLINE, Device.connected_via == "mqtt")
        ).all()
        for device in rows:
            set_status(ctx, session, device, OFFLINE, "mqtt")
    return len(rows)
