"""A paho MQTT client that reads its socket in large chunks (one recv for many packets instead of three per packet)
and acknowledges them in bulk."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher

READ_CHUNK = 64 * 1024  # under malloc's mmap threshold: a recv buffer must not cost an mmap
ACKS_PER_SEND = 4096
_PUBACK = struct.Struct("!BBH")  # MQTT 3.1.1 PUBACK: type, remaining length 2, packet id


def _is_fresh_ack(packet: Any) -> bool:
    return (packet["command"] & 0xF0) == mqtt.PUBACK and packet["pos"] == 0


class _Filters(MQTTMatcher):
    """paho looks up message_callback_add filters for every message; with none added, that is all waste."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        if not self._root._children:
            return iter(())
        return super().iter_match(topic)


class BufferedClient(mqtt.Client):
    """paho's Client, reading ahead.

    paho reads each packet with recv(1) for its type, recv(1) per length byte, then recv(length), and handles
    one packet per select(). Here one recv fills a buffer the packet reader is served from, and a read
    handles every packet the buffer holds before paho selects again (a packet cut at the buffer's end is
    finished when select reports the rest). Halves paho's CPU per received message (docs/benchmarks.md).
    Written against paho-mqtt 2.x's reader (pinned in pyproject.toml); tests/iot/test_mqtt_client.py checks it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_buffer = b""
        self._read_pos = 0
        self._on_message_filtered = _Filters()
        self.after_read: Callable[[], None] | None = None  # called once the packets of a read are handled

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._read_pos >= len(self._read_buffer):
            data = super()._sock_recv(max(bufsize, READ_CHUNK))  # BlockingIOError / b"" pass through
            if len(data) <= bufsize:
                return data
            self._read_buffer, self._read_pos = data, 0
        start, end = self._read_pos, self._read_pos + bufsize
        self._read_pos = end
        return self._read_buffer[start:end]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        # paho wakes its network thread through a socket pair for every packet it queues (a syscall per
        # acknowledgement). Packets queued while that thread reads need no wake-up: it is not in select(),
        # and its next turn writes whatever is queued. Another thread queueing meanwhile appends its packet
        # before it looks for the pair, so that turn sees it too.
        wake, self._sockpairW = self._sockpairW, None
        try:
            rc = super().loop_read(max_packets)
            while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self.buffered() and self._sock is not None:
                rc = super().loop_read(1)
            return rc
        finally:
            if self._sockpairW is None:
                self._sockpairW = wake
            if self.after_read is not None:
                self.after_read()

    def ack_many(self, mids: Iterable[int]) -> None:
        """With manual_ack: acknowledge these QoS 1 messages, in order, as one queued packet (one wake-up of
        the network thread and one send, where ack() makes one each). Callable from any thread."""
        packet = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
        if packet:
            self._packet_queue(mqtt.PUBACK, packet, 0, 0)

    def _packet_write(self) -> mqtt.MQTTErrorCode:
        self._join_acks()
        return super()._packet_write()

    def _join_acks(self) -> None:
        """The PUBACKs waiting at the head of the queue go out as one send instead of one each."""
        queue = self._out_packet
        if len(queue) < 2 or not _is_fresh_ack(queue[0]) or not _is_fresh_ack(queue[1]):
            return
        first = queue[0]
        parts: list[bytes] = []
        while queue and _is_fresh_ack(queue[0]) and len(parts) < ACKS_PER_SEND:
            parts.append(bytes(queue.popleft()["packet"]))
        joined = b"".join(parts)
        queue.appendleft({**first, "packet": joined, "to_process": len(joined)})

    def buffered(self) -> int:
        """Bytes read from the socket that no packet has consumed yet."""
        return len(self._read_buffer) - self._read_pos

    def _sock_close(self) -> None:
        self._read_buffer, self._read_pos = b"", 0  # a new connection must not see the old one's bytes
        super()._sock_close()
