"""Real paho-mqtt clients for tests: connect as a device, collect what arrives."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt

from tests.support import wait_for


class DeviceClient:
    """A paho client logged in as a device (username = id, password = token)."""

    def __init__(self, port: int, device_id: str, token: str, *, will: bool = False) -> None:
        self.device_id = device_id
        self.received: list[mqtt.MQTTMessage] = []
        self.suback: list[list[int]] = []
        self.connect_result: list[int] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{uuid.uuid4().hex[:6]}")
        self.client.username_pw_set(device_id, token)
        if will:
            self.client.will_set(f"ct/d/{device_id}/status", b"offline", qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_connect = lambda _c, _u, _f, reason, _p: self.connect_result.append(reason.value)
        self.port = port

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append(msg)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, codes: list, _p: object) -> None:
        self.suback.append([c.value for c in codes])

    def connect(self) -> DeviceClient:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        wait_for(lambda: self.connect_result, message="CONNACK")
        return self

    def subscribe(self, topic: str) -> int:
        before = len(self.suback)
        self.client.subscribe(topic, qos=1)
        wait_for(lambda: len(self.suback) > before, message=f"SUBACK for {topic}")
        return self.suback[-1][0]

    def publish(self, channel: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(f"ct/d/{self.device_id}/{channel}", payload, qos=qos)
        info.wait_for_publish(10)

    def messages(self, topic: str) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.received if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish without DISCONNECT, so the broker sends the last will."""
        self.client.loop_stop()
        self.client.socket().close()
