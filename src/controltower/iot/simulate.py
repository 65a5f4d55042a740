"""Simulated devices (`ctower device simulate`, benchmarks): many paho clients driven by one thread and one selector.

Sensors send temperature and humidity (a daily cycle plus noise) at `rate` messages/s each; cameras answer
`capture` with a freshly drawn image sent as a chunked file linked to the command; every device answers `ping`.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import itertools
import json
import logging
import math
import queue
import random
import selectors
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from controltower.client import Client
from controltower.iot import topics
from controltower.iot.device import File, Handlers, Message
from controltower.iot.mqtt_client import BufferedClient

log = logging.getLogger("controltower.iot.simulate")

SENSOR, CAMERA = "sensor", "camera"
SIM_LABEL = "sim"
CONNECTS_PER_TICK = 50  # new connections per loop turn, so a big fleet does not starve the running ones
MISC_EVERY_S = 1.0  # keepalive bookkeeping (paho's loop_misc) for every client
QUEUED_MAX = 1000  # messages a client keeps while its broker is slow or gone; past that, publishing fails


@dataclass(frozen=True)
class SimDevice:
    id: str
    token: str
    kind: str = SENSOR


def sensor_values(index: int, now: float, rng: random.Random) -> dict[str, float]:
    """Temperature (°C) and relative humidity (%) following the time of day, each device a little different."""
    day = 2 * math.pi * ((now % 86_400) / 86_400) - math.pi / 2  # coldest around 00:00 UTC, warmest at noon
    temperature = 18 + (index % 7) * 0.5 + 4 * math.sin(day) + rng.gauss(0, 0.2)
    humidity = 55 - 12 * math.sin(day) + rng.gauss(0, 1.0)
    return {"temperature": round(temperature, 2), "humidity": round(min(100.0, max(0.0, humidity)), 2)}


def sensor_payload(index: int, now: float, rng: random.Random) -> bytes:
    """`telemetry_payload(sensor_values(...), now)`, formatted directly: the simulator's hot path."""
    values = sensor_values(index, now, rng)
    return b'{"ts": %.3f, "values": {"temperature": %.2f, "humidity": %.2f}}' % (
        now, values["temperature"], values["humidity"])


def camera_frame(device_id: str, now: float, width: int = 320, height: int = 240, image_format: str = "PNG") -> bytes:
    """A new frame: a time-tinted gradient with noise, stamped with the device id and the time."""
    from PIL import Image, ImageDraw

    tint = int(now * 40) % 256
    gradient = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width, height), 48)
    flat = Image.new("L", (width, height), tint)
    frame = Image.merge("RGB", (gradient, noise, flat))
    draw = ImageDraw.Draw(frame)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    draw.rectangle((0, height - 28, width, height), fill=(0, 0, 0))
    draw.text((6, height - 24), f"{device_id}  {stamp}", fill=(255, 255, 255))
    out = io.BytesIO()
    frame.save(out, image_format)
    return out.getvalue()


@dataclass(eq=False)
class _Sim:
    device: SimDevice
    index: int
    client: mqtt.Client
    handlers: Handlers
    telemetry_topic: str
    connected: bool = False
    started: bool = False
    retry_at: float = 0.0
    backoff: float = 1.0
    rng: random.Random = field(default_factory=random.Random)


class Simulator:
    """Runs simulated devices over MQTT from one network thread; `stats` counts what happened.

    `start()` returns at once; `wait_connected()` waits for the fleet; `stop()` disconnects everyone.
    Counters: connected, sent (telemetry accepted by paho), acked (acknowledged by the broker: every QoS 1
    message, telemetry, files and responses alike), errors (refused logins, lost connections, full queues),
    commands, files.
    """

    def __init__(
        self,
        devices: list[SimDevice],
        host: str = "127.0.0.1",
        port: int = 1883,
        rate: float = 1.0,
        *,
        qos: int = 1,
        keepalive: int = 60,
        image_format: str = "PNG",
        seed: int | None = None,
    ) -> None:
        if rate < 0:
            raise ValueError("rate: must be >= 0 messages per second per device")
        if qos not in (0, 1):
            raise ValueError("qos: must be 0 or 1")
        self.host, self.port, self.rate, self.qos, self.keepalive = host, port, rate, qos, keepalive
        self.image_format = image_format.upper()
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        seeds = random.Random(seed)
        self._sims = [self._make(device, i, random.Random(seeds.random())) for i, device in enumerate(devices)]
        self._selector = selectors.DefaultSelector()
        self._want_write: set[_Sim] = set()
        self._to_connect: list[_Sim] = list(self._sims)
        self._due: list[tuple[float, int, _Sim]] = []
        self._seq = itertools.count()
        self._answers: queue.SimpleQueue[tuple[_Sim, list[Message]]] = queue.SimpleQueue()
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="ct-sim-camera")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- API -----------------------------------------------------------------------------------

    def start(self) -> Simulator:
        self._thread = threading.Thread(target=self._run, name="ct-simulator", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, count: int | None = None, timeout: float = 60.0) -> bool:
        """Wait until `count` devices (default all) are connected and subscribed."""
        want = len(self._sims) if count is None else count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats["connected"] >= want:
                return True
            time.sleep(0.05)
        return self.stats["connected"] >= want

    def snapshot(self) -> dict[str, int]:
        with self._stats_lock:
            return {k: self.stats[k] for k in ("connected", "sent", "acked", "errors", "commands", "files")}

    def stop(self, timeout: float = 10.0) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for sim in self._sims:
            if sim.connected:
                sim.client.publish(topics.topic(sim.device.id, topics.STATUS), b"offline", qos=0, retain=True)
            sim.client.disconnect()
            sim.client.loop_write()
        self._selector.close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- set-up --------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _make(self, device: SimDevice, index: int, rng: random.Random) -> _Sim:
        client_id = f"{device.id}-sim-{rng.getrandbits(32):08x}"
        client = BufferedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        client.username_pw_set(device.id, device.token)
        client.will_set(topics.topic(device.id, topics.STATUS), b"offline", qos=1, retain=True)
        client.max_queued_messages_set(QUEUED_MAX)
        handlers = Handlers()
        sim = _Sim(device, index, client, handlers, topics.topic(device.id, topics.TELEMETRY), rng=rng)
        client.user_data_set(sim)
        handlers.command("ping")(lambda _params: {"pong": time.time()})
        if device.kind == CAMERA:
            handlers.command("capture")(self._capture_handler(sim))
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = lambda _c, s, _sock: self._want_write.add(s)
        client.on_socket_unregister_write = lambda _c, s, _sock: self._want_write.discard(s)
        return sim

    def _capture_handler(self, sim: _Sim) -> Callable[[dict[str, Any]], File]:
        def capture(params: dict[str, Any]) -> File:
            now = time.time()
            fmt = str(params.get("format", self.image_format)).upper()
            width, height = int(params.get("width", 320)), int(params.get("height", 240))
            data = camera_frame(sim.device.id, now, width, height, fmt)
            self._count("files")
            extension = "jpg" if fmt == "JPEG" else fmt.lower()
            return File(data, f"image/{'jpeg' if fmt == 'JPEG' else fmt.lower()}",
                        f"{sim.device.id}-{int(now * 1000)}.{extension}")

        return capture

    # -- paho callbacks (all on the network thread) ---------------------------------------------

    def _on_socket_open(self, _client: mqtt.Client, sim: _Sim, sock: Any) -> None:
        self._selector.register(sock, selectors.EVENT_READ, sim)

    def _on_socket_close(self, _client: mqtt.Client, sim: _Sim, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._want_write.discard(sim)
        if not self._stop.is_set():
            sim.retry_at = time.monotonic() + sim.backoff
            sim.backoff = min(sim.backoff * 2, 30.0)
            self._to_connect.append(sim)

    def _on_connect(self, client: mqtt.Client, sim: _Sim, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._count("errors")
            log.warning("simulated device %s: login refused (%s)", sim.device.id, reason)
            return
        client.subscribe(topics.topic(sim.device.id, topics.COMMANDS), qos=1)

    def _on_subscribe(self, client: mqtt.Client, sim: _Sim, _mid: int, _codes: Any, _props: Any) -> None:
        client.publish(topics.topic(sim.device.id, topics.STATUS), b"online", qos=1, retain=True)
        sim.connected = True
        sim.backoff = 1.0
        self._count("connected")
        if sim.device.kind == SENSOR and self.rate > 0:
            due = time.monotonic() + sim.rng.random() / self.rate  # spread the fleet over the first period
            heapq.heappush(self._due, (due, next(self._seq), sim))

    def _on_disconnect(self, _client: mqtt.Client, sim: _Sim, _flags: Any, reason: Any, _props: Any) -> None:
        if sim.connected:
            sim.connected = False
            self._count("connected", -1)
            if not self._stop.is_set():
                self._count("errors")
                log.info("simulated device %s lost its connection (%s)", sim.device.id, reason)

    def _on_publish(self, _client: mqtt.Client, _sim: _Sim, _mid: int, _reason: Any, _props: Any) -> None:
        self._count("acked")

    def _on_message(self, _client: mqtt.Client, sim: _Sim, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != topics.topic(sim.device.id, topics.COMMANDS):
            return
        self._count("commands")
        if sim.device.kind == CAMERA:  # drawing a frame takes a while: off the network thread
            self._executor.submit(self._answer_later, sim, msg.payload)
        else:
            self._publish_all(sim, sim.handlers.run(sim.device.id, msg.payload))

    def _answer_later(self, sim: _Sim, payload: bytes) -> None:
        self._answers.put((sim, sim.handlers.run(sim.device.id, payload)))

    # -- the network loop ----------------------------------------------------------------------

    def _publish_all(self, sim: _Sim, messages: list[Message]) -> None:
        for topic, payload in messages:
            if sim.client.publish(topic, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                self._count("errors")

    def _connect_some(self, now: float) -> None:
        ready = [s for s in self._to_connect if s.retry_at <= now][:CONNECTS_PER_TICK]
        for sim in ready:
            self._to_connect.remove(sim)
            try:
                if sim.started:
                    sim.client.reconnect()
                else:
                    sim.started = True
                    sim.client.connect(self.host, self.port, self.keepalive)
            except OSError as exc:
                self._count("errors")
                log.info("simulated device %s cannot connect: %s", sim.device.id, exc)
                sim.retry_at = now + sim.backoff
                sim.backoff = min(sim.backoff * 2, 30.0)
                self._to_connect.append(sim)

    def _send_due(self, now: float) -> None:
        period = 1.0 / self.rate if self.rate > 0 else 0.0
        wall = time.time()
        while self._due and self._due[0][0] <= now:
            due, _, sim = heapq.heappop(self._due)
            if not sim.connected:
                continue  # back on the schedule when it subscribes again
            info = sim.client.publish(sim.telemetry_topic, sensor_payload(sim.index, wall, sim.rng), qos=self.qos)
            self._count("sent" if info.rc == mqtt.MQTT_ERR_SUCCESS else "errors")
            following = due + period
            heapq.heappush(self._due, (following if following > now - 1 else now + period, next(self._seq), sim))

    def _run(self) -> None:
        next_misc = time.monotonic() + MISC_EVERY_S
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if self._to_connect:
                    self._connect_some(now)
                while not self._answers.empty():
                    sim, messages = self._answers.get_nowait()
                    self._publish_all(sim, messages)
                self._send_due(now)
                for sim in list(self._want_write):
                    sim.client.loop_write()
                wait = 0.05
                if self._want_write:
                    wait = 0.0
                elif self._due:
                    wait = max(0.0, min(wait, self._due[0][0] - time.monotonic()))
                for key, _events in self._selector.select(wait):
                    key.data.client.loop_read()
                if now >= next_misc:
                    next_misc = now + MISC_EVERY_S
                    for sim in self._sims:
                        if sim.started:
                            sim.client.loop_misc()
            except Exception:
                log.exception("simulator loop")
                self._count("errors")
                time.sleep(0.1)


def provision(client: Client, count: int, cameras: int = 0, prefix: str = "sim") -> list[SimDevice]:
    """Devices `{prefix}-0000` … (the first `cameras` of them cameras), label `sim`: created through the API,
    or reused (their token rotated, since tokens are shown only once)."""
    if not topics.DEVICE_ID_RE.match(f"{prefix}-0000"):
        raise ValueError(f"prefix: {prefix!r} must start with a letter or digit and use only A-Za-z0-9_-")
    wanted = [(f"{prefix}-{i:04d}", CAMERA if i < cameras else SENSOR) for i in range(count)]
    existing = {d["name"]: d for d in client.get("devices", label=SIM_LABEL)}
    tokens: dict[str, tuple[str, str]] = {}
    missing = [(name, kind) for name, kind in wanted if name not in existing]
    for start in range(0, len(missing), 5000):
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["name", "id", "type", "labels"])
        writer.writerows([name, name, kind, f"{SIM_LABEL};{SIM_LABEL}-{kind}"] for name, kind in missing[start:
                                                                                                          start + 5000])
        result = client.request("POST", "devices/import", content=out.getvalue().encode(),
                                headers={"Content-Type": "text/csv"})
        tokens.update({d["name"]: (d["id"], d["token"]) for d in result["created"]})
    for name, _kind in wanted:
        if name in existing:
            rotated = client.post(f"devices/{existing[name]['id']}/token")
            tokens[name] = (rotated["id"], rotated["token"])
    return [SimDevice(tokens[name][0], tokens[name][1], kind) for name, kind in wanted]


def summary(stats: dict[str, int], seconds: float) -> str:
    rate = stats["sent"] / seconds if seconds > 0 else 0.0
    return (f"connected {stats['connected']} · sent {stats['sent']} ({rate:.0f}/s) · acked {stats['acked']} · "
            f"commands {stats['commands']} · files {stats['files']} · errors {stats['errors']}")


def dumps(stats: dict[str, int], seconds: float) -> str:
    return json.dumps({**stats, "seconds": round(seconds, 3)})
