"""A privileged client of an external MQTT broker (Mosquitto, EMQX, …) named by CT_MQTT_URL."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from controltower.iot import topics
from controltower.iot.hub import Hub
from controltower.iot.mqtt_client import BufferedClient

log = logging.getLogger("controltower.iot.external")


def server_client_id(data_dir: Path) -> str:
    """The same for every start of this server (host and data dir), different for another replica."""
    key = f"{socket.gethostname()}:{data_dir.resolve()}"
    return "ctower-server-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class ExternalBroker:
    """Subscribes to every device's telemetry, attributes, status and responses; publishes commands.

    The broker itself authenticates devices and enforces the ACL (see docs/iot.md for Mosquitto).
    """

    name = "external"

    def __init__(self, hub: Hub, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"CT_MQTT_URL: scheme must be mqtt:// or mqtts://, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("CT_MQTT_URL: a host is required, e.g. mqtt://user:pass@127.0.0.1:1883")
        self.hub = hub
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        # A persistent session under a stable id: the broker queues what devices send while the server is down.
        # Messages are acknowledged once stored (manual_ack), not when they arrive: the broker keeps what a
        # killed server had received but not stored, and delivers it again.
        self.client = BufferedClient(
            mqtt.CallbackAPIVersion.VERSION2, client_id=server_client_id(hub.ctx.settings.data_dir),
            clean_session=False, manual_ack=True,
        )
        if parts.username:
            self.client.username_pw_set(unquote(parts.username), unquote(parts.password or ""))
        if parts.scheme == "mqtts":
            self.client.tls_set()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.after_read = self._hand_off
        hub.on_processed = self._acknowledge
        self.connected = False
        self._connection = 0  # packet ids belong to one connection: a receipt from an earlier one is void
        self._received: list[tuple[str, bytes, tuple[int, int] | None]] = []

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("external MQTT broker %s:%d refused the server: %s", self.host, self.port, reason)
            return
        self.connected = True
        self._connection += 1
        client.subscribe([(t, 1) for t in topics.SERVER_SUBSCRIPTIONS])
        log.warning("connected to external MQTT broker %s:%d", self.host, self.port)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected = False
        self._connection += 1  # before paho reconnects: no receipt of this connection is acknowledged on the next
        log.warning("disconnected from external MQTT broker %s:%d (%s); reconnecting", self.host, self.port, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        receipt = (self._connection, msg.mid) if msg.qos == 1 else None
        self._received.append((msg.topic, msg.payload, receipt))  # handed to the hub once the read is done

    def _hand_off(self) -> None:
        received, self._received = self._received, []
        if received:
            try:
                self.hub.messages(received, "mqtt")  # waits while the hub is full: the broker queues meanwhile
            except Exception:
                log.exception("handing %d messages to the hub failed", len(received))

    def _acknowledge(self, receipts: list[tuple[int, int]]) -> None:
        """The hub processed these: PUBACK them, unless the connection they came on is gone (the broker
        then delivers them again, and they are stored twice: at least once)."""
        current = self._connection
        self.client.ack_many(mid for connection, mid in receipts if connection == current)

    async def start(self) -> None:
        self.client.reconnect_delay_set(1, 30)
        try:
            await asyncio.to_thread(self.client.connect, self.host, self.port, 30)
        except OSError as exc:
            log.error("cannot reach external MQTT broker %s:%d (CT_MQTT_URL): %s; retrying", self.host, self.port,
                      exc)
            self.client.connect_async(self.host, self.port, 30)
        self.client.loop_start()

    async def stop(self) -> None:
        self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    def is_up(self) -> bool:
        return self.connected

    def disconnect_device(self, device_id: str) -> int:
        """An external broker owns device sessions: revoke there too (docs/iot.md, Revoking a device)."""
        return 0

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
