"""The IoT background service: the hub's worker plus the MQTT transport (embedded broker or external client)."""

from __future__ import annotations

import asyncio
import logging

from controltower.core.context import Context
from controltower.core.ports import MQTT_PORT_HINT, PortBusyError, check_port_free
from controltower.iot import commands, presence
from controltower.iot.hub import Hub, Transport

log = logging.getLogger("controltower.iot.service")


def make_transport(ctx: Context, hub: Hub) -> Transport | None:
    """The external client when CT_MQTT_URL is set, else the embedded broker unless CT_MQTT_PORT is 0."""
    settings = ctx.settings
    if settings.mqtt_url:
        from controltower.iot.external import ExternalBroker

        return ExternalBroker(hub, settings.mqtt_url)
    if not settings.mqtt_port:
        return None
    from controltower.iot.broker import EmbeddedBroker

    return EmbeddedBroker(hub, settings.mqtt_host, settings.mqtt_port)


def runner(ctx: Context, hub: Hub):  # noqa: ANN201  (a ServiceFactory)
    async def run_iot() -> None:
        hub.start_worker()
        transport = make_transport(ctx, hub)
        try:
            if transport is not None:
                if transport.name == "embedded":
                    check_port_free(ctx.settings.mqtt_host, ctx.settings.mqtt_port, "CT_MQTT_PORT", MQTT_PORT_HINT)
                    await asyncio.to_thread(presence.reset_mqtt, ctx)
                await transport.start()
                hub.transport = transport
            await asyncio.Event().wait()
        except PortBusyError as exc:
            log.error("%s", exc)
            raise
        finally:
            hub.transport = None
            if transport is not None:
                await transport.stop()
            await asyncio.to_thread(hub.stop_worker)

    return run_iot


def redeliver(ctx: Context, hub: Hub) -> int:
    """Queued commands of devices that listen now (a missed wake-up, or a restart) are delivered."""
    with ctx.db.read_session() as session:
        waiting = commands.devices_with_queued(session)
    ready = [d for d in waiting if hub.is_ready(d)]
    for device_id in ready:
        hub.notify_command(device_id)
    return len(ready)
