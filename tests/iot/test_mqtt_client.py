"""BufferedClient against a real Mosquitto: many packets per read, packets cut across reads, reconnection."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt

from controltower.iot.mqtt_client import READ_CHUNK, BufferedClient
from tests.iot.mqtt_support import SERVER_PASSWORD, SERVER_USER, Mosquitto
from tests.support import wait_for


def _client(cls: type[mqtt.Client], mosquitto: Mosquitto, client_id: str = "") -> mqtt.Client:
    client = cls(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(SERVER_USER, SERVER_PASSWORD)
    client.connect("127.0.0.1", mosquitto.port, 30)
    client.loop_start()
    wait_for(client.is_connected, message="connected")
    return client


def _close(*clients: mqtt.Client) -> None:
    for client in clients:
        client.disconnect()
        client.loop_stop()


class _Collector:
    def __init__(self, client: BufferedClient, topic: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.reads = 0
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        client.on_message = self._on_message
        client.on_subscribe = lambda *_: self.subscribed.set()
        client.after_read = self._after_read
        client.subscribe(topic, 1)
        assert self.subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.received.append((msg.topic, msg.payload))

    def _after_read(self) -> None:
        self.reads += 1

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def test_every_packet_arrives_whole_and_in_order_with_many_per_read(mosquitto: Mosquitto) -> None:
    receiver = _client(BufferedClient, mosquitto)
    sender = _client(mqtt.Client, mosquitto)
    try:
        collector = _Collector(receiver, "ct/t/#")
        receiver.loop_stop()  # not reading: what the broker sends piles up in the socket, many packets per read
        sent: list[tuple[str, bytes]] = []
        for i in range(3000):
            # Now and then a packet bigger than one read, so packets are cut at a read's end.
            payload = (b"%06d" % i) * (READ_CHUNK // 3 if i % 1000 == 500 else 10)
            sent.append((f"ct/t/{i % 7}", payload))
        infos = [sender.publish(topic, payload, qos=1) for topic, payload in sent]
        for info in infos:
            info.wait_for_publish(30)
        receiver.loop_start()
        wait_for(lambda: collector.count() >= len(sent), timeout=60, message="every message")
        assert collector.received == sent
        assert collector.reads < len(sent) / 5  # many packets were handled per read
        assert receiver.buffered() == 0
    finally:
        _close(sender, receiver)


def test_after_the_broker_drops_it_the_client_reconnects_and_reads_cleanly(mosquitto: Mosquitto) -> None:
    client_id = f"t-{uuid.uuid4().hex[:8]}"
    receiver = _client(BufferedClient, mosquitto, client_id)
    sender = _client(mqtt.Client, mosquitto)
    try:
        collector = _Collector(receiver, "ct/r/#")
        drops: list[object] = []
        receiver.on_disconnect = lambda _c, _u, _f, reason, _p: drops.append(reason)
        for i in range(200):
            sender.publish("ct/r/a", b"before-%d" % i, qos=1)
        # The same client id logging in again makes Mosquitto close the first session, mid-stream.
        thief = _client(mqtt.Client, mosquitto, client_id)
        _close(thief)
        wait_for(lambda: drops and receiver.is_connected(), timeout=30, message="dropped and reconnected")
        collector.subscribed.clear()
        receiver.subscribe("ct/r/#", 1)  # a clean session: subscribe again
        assert collector.subscribed.wait(10)
        sender.publish("ct/r/a", b"after", qos=1).wait_for_publish(10)
        wait_for(lambda: (b"after" in [p for _t, p in collector.received]), message="message after reconnect")
        payloads = [p for _t, p in collector.received]
        assert all(p == b"after" or p.startswith(b"before-") for p in payloads)  # nothing garbled
    finally:
        _close(sender, receiver)


def test_filtered_callbacks_still_take_their_messages(mosquitto: Mosquitto) -> None:
    receiver = _client(BufferedClient, mosquitto)
    sender = _client(mqtt.Client, mosquitto)
    try:
        filtered: list[bytes] = []
        receiver.message_callback_add("ct/f/special/#", lambda _c, _u, msg: filtered.append(msg.payload))
        collector = _Collector(receiver, "ct/f/#")
        sender.publish("ct/f/special/x", b"to the filter", qos=1).wait_for_publish(10)
        sender.publish("ct/f/plain", b"to on_message", qos=1).wait_for_publish(10)
        wait_for(lambda: filtered and collector.count(), message="both messages")
        assert filtered == [b"to the filter"]
        assert collector.received == [("ct/f/plain", b"to on_message")]
    finally:
        _close(sender, receiver)


def test_bulk_acknowledgements_reach_the_broker(mosquitto: Mosquitto) -> None:
    """A persistent session that acknowledged everything gets nothing again when it comes back."""
    client_id = f"t-{uuid.uuid4().hex[:8]}"

    def persistent() -> BufferedClient:
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        client.username_pw_set(SERVER_USER, SERVER_PASSWORD)
        client.connect("127.0.0.1", mosquitto.port, 30)
        client.loop_start()
        wait_for(client.is_connected, message="connected")
        return client

    receiver = persistent()
    sender = _client(mqtt.Client, mosquitto)
    try:
        collector = _Collector(receiver, "ct/a/#")
        infos = [sender.publish("ct/a/x", b"%d" % i, qos=1) for i in range(2000)]
        for info in infos:
            info.wait_for_publish(30)
        wait_for(lambda: collector.count() >= 2000, timeout=60, message="every message")
        wait_for(lambda: not receiver._out_packet, message="acknowledgements sent")
        _close(receiver)
        receiver = persistent()  # same session: unacknowledged messages would be delivered again
        again = _Collector(receiver, "ct/a/#")
        sender.publish("ct/a/x", b"last", qos=1).wait_for_publish(10)
        wait_for(lambda: again.count() >= 1, message="the next message")
        assert again.received == [("ct/a/x", b"last")]
        assert collector.received == [("ct/a/x", b"%d" % i) for i in range(2000)]
    finally:
        _close(sender, receiver)
