"""Real paho-mqtt clients for tests: connect as a device, collect what arrives; a real Mosquitto to connect to."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from tests.conftest import skip_or_fail
from tests.support import free_port, wait_for

SERVER_USER, SERVER_PASSWORD = "ctower", "server-secret"


@dataclass
class Mosquitto:
    port: int
    passwd: Path
    proc: subprocess.Popen[bytes]

    def add_user(self, user: str, password: str) -> None:
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwd), user, password], check=True, timeout=30)
        self.proc.send_signal(signal.SIGHUP)  # reload the password file


@contextmanager
def run_mosquitto(root: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto with a password file (the server's user to start with) and the ACL of docs/iot.md."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        skip_or_fail("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    passwd, acl, conf = root / "passwd", root / "acl", root / "mosquitto.conf"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), SERVER_USER, SERVER_PASSWORD], check=True, timeout=30)
    acl.write_text(f"user {SERVER_USER}\ntopic readwrite ct/#\n\npattern readwrite ct/d/%u/#\n")
    port = free_port()
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n"
        # As docs/iot.md advises for the server's session: room for a backlog, no cap on unacknowledged ones.
        "persistence false\nmax_queued_messages 100000\nmax_inflight_messages 0\nuser root\n"
    )
    with open(root / "mosquitto.log", "ab") as log:  # an unread pipe would fill up and stall Mosquitto
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    broker = Mosquitto(port, passwd, proc)
    try:
        wait_for(lambda: _listening(port), message="mosquitto listening")
        yield broker
    finally:
        broker.proc.terminate()  # a test may have restarted it
        broker.proc.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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
