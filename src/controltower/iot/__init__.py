"""IoT: a device registry, telemetry pushed over MQTT or HTTP, files, dead letters, and commands to devices."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controltower.core.context import Context

# Nothing heavy at package level: `controltower.iot.device` runs on small devices.


def setup(ctx: Context) -> None:
    """Mount IoT's routes, its MQTT service, jobs, the `iot.send_command` action and /metrics collector."""
    from controltower.iot import actions, api, commands, exporter, presence, service
    from controltower.iot.hub import hub_of

    hub = hub_of(ctx)
    ctx.include_router(api.devices_router)
    ctx.include_router(api.iot_router)
    ctx.add_service("iot.mqtt", service.runner(ctx, hub))
    if ctx.settings.mqtt_url or ctx.settings.mqtt_port:
        ctx.add_readiness_check("mqtt", hub.transport_ready)
    ctx.scheduler.every("iot.commands.expire", 2.0, lambda: commands.expire_due(ctx))
    ctx.scheduler.every("iot.commands.redeliver", 10.0, lambda: service.redeliver(ctx, hub))
    ctx.scheduler.every("iot.presence.http", 30.0, lambda: presence.expire_http(ctx))
    upload_check_s = min(30.0, max(0.5, ctx.settings.iot_upload_idle_s / 2))
    ctx.scheduler.every("iot.files.expire", upload_check_s, hub.expire_uploads)
    actions.register(ctx)
    exporter.setup(ctx, hub)
    from controltower.iot import ui  # the dashboard pages
    ui.register(ctx)
