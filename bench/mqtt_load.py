"""A lean MQTT 3.1.1 load generator for the telemetry benchmark: each device a plain asyncio connection that
publishes the simulator's sensor payloads with QoS 1 and counts the broker's PUBACKs.

paho spends about 75 µs of CPU per message in Python; on a 2-core machine the simulator then takes a whole
core to offer 20,000 msg/s, the core the server and the broker need. Writing ready-made packets costs a few
µs, so the figure measures the server and its broker, not the load generator. The messages are the same as
the simulator's (`ctower device simulate`): the devices say `online` (retained, QoS 1) on their status topic,
then send `{"ts": ..., "values": {"temperature": ..., "humidity": ...}}` on their telemetry topic.
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
from multiprocessing.connection import Connection

from bench._children import ChildProcesses
from controltower.iot import topics
from controltower.iot.simulate import SimDevice, sensor_payload

TICK_S = 0.1  # a device at 22 msg/s sends two or three messages per turn, in one write
CONNECTS_AT_ONCE = 50


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _length(len(body)) + body


def connect_packet(device: SimDevice) -> bytes:
    """CONNECT with clean session, no keepalive, the device id and token, and a retained `offline` will."""
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # username, password, will retain, will QoS 1, will, clean
    body = _string("MQTT") + bytes((4, flags)) + struct.pack("!H", 0)
    body += _string(device.id) + _string(topics.topic(device.id, topics.STATUS)) + _string(b"offline")
    body += _string(device.id) + _string(device.token)
    return _packet(0x10, body)


def publish_packet(topic: bytes, packet_id: int, payload: bytes, retain: bool = False) -> bytes:
    """PUBLISH with QoS 1 (`topic` already length-prefixed)."""
    return _packet(0x32 | (1 if retain else 0), topic + struct.pack("!H", packet_id) + payload)


class _Link(asyncio.Protocol):
    """One device's connection: counts the broker's PUBACKs (all it sends back once connected: the device
    subscribes to nothing); the first is for its status."""

    def __init__(self, device: SimDevice, index: int, stats: dict[str, int], seed: int) -> None:
        self.device = device
        self.index = index
        self.topic = _string(topics.topic(device.id, topics.TELEMETRY))  # length-prefixed
        self.stats = stats
        self.rng = random.Random(seed * 100_003 + index)
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.live = False
        self.next_id = 1
        self._buffered = b""
        self._status_acked = False

    def packet_id(self) -> int:
        packet_id = self.next_id
        self.next_id = packet_id % 65_535 + 1
        return packet_id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionError("closed before CONNACK"))
        self.live = False

    def data_received(self, data: bytes) -> None:
        buffered = self._buffered + data if self._buffered else data
        acks = at = 0
        while len(buffered) - at >= 2:
            size = buffered[at + 1]  # every packet here is short: one length byte
            if len(buffered) - at < 2 + size:
                break
            if buffered[at] == 0x40:
                acks += 1
            elif buffered[at] == 0x20 and not self.connack.done():
                self.connack.set_result(buffered[at : at + 4])
            at += 2 + size
        self._buffered = buffered[at:]
        if acks and not self._status_acked:
            self._status_acked, acks = True, acks - 1
            self.stats["status_acked"] += 1
        self.stats["acked"] += acks


class Fleet:
    """Devices publishing `rate` messages/s each from one event loop; `stats` counts what happened."""

    def __init__(self, devices: list[SimDevice], port: int, rate: float, seed: int = 1) -> None:
        self.devices = devices
        self.port = port
        self.rate = rate
        self.seed = seed
        # `gave_up`: devices whose one connection attempt failed (this fleet does not retry)
        self.stats = {"connected": 0, "sent": 0, "acked": 0, "status_acked": 0, "errors": 0, "gave_up": 0}
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        links = await asyncio.gather(*(self._connect(d, i, gate) for i, d in enumerate(self.devices)))
        live = [link for link in links if link is not None]
        await self._publish_until_stopped(live)
        for link in live:
            if link.transport is not None:
                link.transport.write(b"\xe0\x00")  # DISCONNECT: no will
                link.transport.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _connect(self, device: SimDevice, index: int, gate: asyncio.Semaphore) -> _Link | None:
        loop = asyncio.get_running_loop()
        async with gate:
            try:
                _, link = await loop.create_connection(lambda: _Link(device, index, self.stats, self.seed),
                                                       "127.0.0.1", self.port)
                assert link.transport is not None
                link.transport.write(connect_packet(device))
                connack = await asyncio.wait_for(link.connack, 30)
            except (OSError, ConnectionError, TimeoutError):
                self.stats["errors"] += 1
                self.stats["gave_up"] += 1
                return None
            if connack[3] != 0:
                self.stats["errors"] += 1
                self.stats["gave_up"] += 1
                link.transport.close()
                return None
            status = _string(topics.topic(device.id, topics.STATUS))
            link.transport.write(publish_packet(status, link.packet_id(), b"online", retain=True))
            link.live = True
            self.stats["connected"] += 1
            return link

    async def _publish_until_stopped(self, live: list[_Link]) -> None:
        if not live:
            await self._stopping.wait()
            return
        started = time.monotonic()
        cursor = 0
        while not self._stopping.is_set():
            now = time.monotonic()
            due = int((now - started) * self.rate * len(live)) - self.stats["sent"]
            wall = time.time()
            batches: dict[int, list[bytes]] = {}
            for _ in range(max(0, due)):
                link = live[cursor]
                packet = publish_packet(link.topic, link.packet_id(), sensor_payload(link.index, wall, link.rng))
                batches.setdefault(cursor, []).append(packet)
                cursor = (cursor + 1) % len(live)
            for at, packets in batches.items():  # one send per device per tick
                link = live[at]
                if link.live and link.transport is not None:
                    link.transport.write(b"".join(packets))
            self.stats["sent"] += max(0, due)
            await asyncio.sleep(TICK_S)


def _fleet_in_child(conn: Connection, devices: list[SimDevice], port: int, rate: float, seed: int) -> None:
    """A child process's fleet, answering `snapshot` and `stop` over its pipe."""
    loop = asyncio.new_event_loop()
    fleet = Fleet(devices, port, rate, seed)

    def answer() -> None:
        while True:
            command = conn.recv()
            if command == "stop":
                loop.call_soon_threadsafe(fleet.stop)
                return
            conn.send(dict(fleet.stats))

    threading.Thread(target=answer, daemon=True).start()
    loop.run_until_complete(fleet.run())
    conn.send(dict(fleet.stats))


def fleet_processes(devices: list[SimDevice], port: int, rate: float, seed: int, processes: int) -> ChildProcesses:
    """The fleet split over `processes` processes, driven like the simulator's."""
    parts = [(devices[i::processes], port, rate, seed + i) for i in range(processes)]
    return ChildProcesses(_fleet_in_child, parts, len(devices))
