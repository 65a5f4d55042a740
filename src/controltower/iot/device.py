"""The Python client for real devices: telemetry, attributes, files and command handlers over MQTT, buffered on disk.

It needs only paho-mqtt and the standard library, so it runs on small devices::

    from controltower.iot.device import Device, File

    device = Device("cam-7", TOKEN, host="ctower.local", buffer_dir="/var/lib/cam7")

    @device.command("capture")
    def capture(params: dict) -> File:
        return File(take_picture(params.get("res", "720p")), "image/jpeg", "shot.jpg")

    device.start()
    device.send_telemetry({"temp": 21.5})
    device.send_file("/var/log/boot.log", "text/plain")

Everything sent goes first into an on-disk outbox (SQLite in `buffer_dir`, bounded: the oldest messages are
dropped and counted) and is removed only when the broker acknowledged it (QoS 1), so nothing is lost while the
broker or the server is unreachable, or across a restart of the device program; it is resent in order.

Login: MQTT username = device id, password = its token. The client subscribes to `ct/d/{id}/commands`, then
publishes `online` (retained) on `ct/d/{id}/status`, with `offline` as its last will. A handler's return value
is the command's result (a raised exception fails the command with its message); a handler may return `File`s
(or a `Reply` with a result and files): they are sent in chunks linked to the command.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mimetypes
import sqlite3
import ssl
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from controltower.iot import topics

log = logging.getLogger("controltower.iot.device")

CHUNK_BYTES = 64 * 1024  # below the server's CT_IOT_MESSAGE_MAX_BYTES (256 KiB)
WINDOW = 100  # messages handed to paho and not yet acknowledged
SEEN_COMMANDS = 1000  # command ids remembered, so a redelivered command runs once

Message = tuple[str, bytes]
Handler = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class File:
    """Bytes to send as a file; `name` is shown on the server."""

    data: bytes
    content_type: str = "application/octet-stream"
    name: str | None = None

    @classmethod
    def from_path(cls, path: str | Path, content_type: str | None = None) -> File:
        path = Path(path)
        guessed = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return cls(path.read_bytes(), guessed, path.name)


@dataclass(frozen=True)
class Reply:
    """What a command handler returns when it has both a result and files."""

    result: Any = None
    files: Sequence[File] = field(default_factory=tuple)


def telemetry_payload(values: dict[str, Any], ts: float | None = None) -> bytes:
    """`{"ts": ..., "values": {...}}`, stamped now unless `ts` (epoch seconds) is given."""
    return json.dumps({"ts": time.time() if ts is None else ts, "values": values}).encode()


def file_messages(
    device_id: str, file: File, command_id: int | None = None, chunk_bytes: int = CHUNK_BYTES,
    upload_id: str | None = None,
) -> list[Message]:
    """The header and the chunk messages of one file (see `controltower.iot.topics`)."""
    upload_id = upload_id or uuid.uuid4().hex[:16]
    data = file.data
    chunks = [data[i:i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    header = {"name": file.name, "content_type": file.content_type, "size": len(data),
              "sha256": hashlib.sha256(data).hexdigest(), "chunks": len(chunks), "command_id": command_id}
    messages = [(topics.topic(device_id, topics.FILES, upload_id), json.dumps(header).encode())]
    messages += [(topics.topic(device_id, topics.FILES, upload_id, str(n)), chunk) for n, chunk in enumerate(chunks)]
    return messages


def path_messages(
    device_id: str, path: Path, content_type: str, name: str | None, command_id: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[str, Iterator[Message]]:
    """(upload id, messages) of the file at `path`, read in chunks: a big file is never held in memory."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    upload_id = uuid.uuid4().hex[:16]
    chunks = -(-size // chunk_bytes)
    header = {"name": name, "content_type": content_type, "size": size, "sha256": digest.hexdigest(),
              "chunks": chunks, "command_id": command_id}

    def messages() -> Iterator[Message]:
        yield topics.topic(device_id, topics.FILES, upload_id), json.dumps(header).encode()
        with path.open("rb") as fh:
            for n in range(chunks):
                yield topics.topic(device_id, topics.FILES, upload_id, str(n)), fh.read(chunk_bytes)

    return upload_id, messages()


def _split(returned: Any) -> tuple[Any, list[File]]:
    if isinstance(returned, Reply):
        return returned.result, list(returned.files)
    if isinstance(returned, File):
        return None, [returned]
    if isinstance(returned, list | tuple) and returned and all(isinstance(f, File) for f in returned):
        return None, list(returned)
    return returned, []


class Handlers:
    """Command name -> handler; turns one command message into the messages that answer it."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._lock = threading.Lock()

    def command(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: `@handlers.command("capture")` on a function of the command's params."""

        def register(fn: Handler) -> Handler:
            self._handlers[name] = fn
            return fn

        return register

    def _first_time(self, command_id: int) -> bool:
        with self._lock:
            if command_id in self._seen:
                return False
            self._seen[command_id] = None
            while len(self._seen) > SEEN_COMMANDS:
                self._seen.popitem(last=False)
            return True

    def run(self, device_id: str, payload: bytes, chunk_bytes: int = CHUNK_BYTES) -> list[Message]:
        """Run the handler of a command message: its files' messages, then the response (none if one-way)."""
        try:
            command = json.loads(payload)
            command_id, name = int(command["id"]), str(command["name"])
            params = command.get("params") or {}
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a command message that is not a command: %.200r", payload)
            return []
        if not self._first_time(command_id):
            return []
        files: list[File] = []
        handler = self._handlers.get(name)
        if handler is None:
            body: dict[str, Any] = {"status": "failed", "error": f"no handler for command {name!r}"}
        else:
            try:
                result, files = _split(handler(params))
                if result is None and files:
                    result = {"files": [{"name": f.name, "content_type": f.content_type, "size": len(f.data),
                                         "sha256": hashlib.sha256(f.data).hexdigest()} for f in files]}
                body = {"status": "succeeded", "result": result}
                json.dumps(body)
            except Exception as exc:
                log.warning("command %s (%d) failed: %s", name, command_id, exc)
                body = {"status": "failed", "error": str(exc) or exc.__class__.__name__}
        messages = [m for f in files for m in file_messages(device_id, f, command_id, chunk_bytes)]
        if not command.get("one_way"):
            messages.append((topics.topic(device_id, topics.RESPONSES, str(command_id)), json.dumps(body).encode()))
        return messages


class Outbox:
    """Messages waiting for the broker's acknowledgement, oldest first, in SQLite (memory when `path` is None)."""

    def __init__(self, path: Path | None, max_messages: int) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox "
                         "(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL)")

    def put(self, messages: Iterable[Message]) -> None:
        """Append in one transaction; past `max_messages` the oldest are dropped (and counted)."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO outbox (topic, payload) VALUES (?, ?)", messages)
            (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
            excess = count - self.max_messages
            if excess > 0:
                self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                                 (excess,))
                self.dropped += excess
            self._db.execute("COMMIT")
        if excess > 0:
            log.warning("device outbox full (%d messages): dropped the %d oldest", self.max_messages, excess)

    def after(self, row_id: int, limit: int) -> list[tuple[int, str, bytes]]:
        with self._lock:
            return self._db.execute("SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (row_id, limit)).fetchall()

    def remove(self, row_ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in row_ids])

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Device:
    """One device's MQTT connection, outbox and command handlers. `start()` connects (and reconnects) in the
    background; `send_*` never block on the network."""

    def __init__(
        self,
        device_id: str,
        token: str,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        buffer_dir: str | Path | None = None,
        max_buffered: int = 100_000,
        tls: bool | ssl.SSLContext = False,
        keepalive: int = 30,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if not topics.DEVICE_ID_RE.match(device_id):
            raise ValueError(f"device_id: {device_id!r} must match {topics.DEVICE_ID_PATTERN}")
        self.device_id = device_id
        self.host, self.port, self.keepalive = host, port, keepalive
        self.chunk_bytes = chunk_bytes
        self.handlers = Handlers()
        self.stats: Counter[str] = Counter()
        path = Path(buffer_dir) / f"{device_id}.outbox.sqlite" if buffer_dir is not None else None
        self.outbox = Outbox(path, max_buffered)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-{uuid.uuid4().hex[:8]}",
                                  clean_session=True)
        self.client.username_pw_set(device_id, token)
        self.client.will_set(self._topic(topics.STATUS), b"offline", qos=1, retain=True)
        if tls:
            self.client.tls_set_context(tls if isinstance(tls, ssl.SSLContext) else ssl.create_default_context())
        self.client.reconnect_delay_set(1, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_publish = lambda *_args: self._wake.set()
        self.last_error: str | None = None
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._pending: list[tuple[mqtt.MQTTMessageInfo, int]] = []
        self._cursor = 0
        self._pump: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"ct-device-{device_id}")

    # -- API -----------------------------------------------------------------------------------

    def command(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator for the handler of command `name`: `@device.command("capture")`."""
        return self.handlers.command(name)

    def start(self) -> Device:
        """Connect in the background (retrying until `stop()`); buffered messages go out once connected."""
        self.client.connect_async(self.host, self.port, self.keepalive)
        self.client.loop_start()
        self._pump = threading.Thread(target=self._run_pump, name=f"ct-device-{self.device_id}-pump", daemon=True)
        self._pump.start()
        return self

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def send_telemetry(self, values: dict[str, Any], ts: float | None = None) -> None:
        """Numbers become series `iot.<key>` on the server, other values attributes; `ts` defaults to now."""
        self._send([(self._topic(topics.TELEMETRY), telemetry_payload(values, ts))])

    def send_attributes(self, values: dict[str, Any]) -> None:
        """The device's latest state (any JSON values), kept with history."""
        self._send([(self._topic(topics.ATTRIBUTES), json.dumps(values).encode())])

    def send_file(
        self, data: bytes | str | Path, content_type: str | None = None, command_id: int | None = None,
        name: str | None = None,
    ) -> str:
        """Send bytes, or the file at a path (read chunk by chunk), in chunks; returns the upload id.

        `content_type` defaults to a guess from the path's name; `name` to the path's name."""
        if isinstance(data, bytes):
            file = File(data, content_type or "application/octet-stream", name)
            messages = file_messages(self.device_id, file, command_id, self.chunk_bytes)
            self._send(messages)
            return messages[0][0].rsplit("/", 1)[1]
        path = Path(data)
        guessed = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        upload_id, stream = path_messages(self.device_id, path, guessed, name or path.name, command_id,
                                          self.chunk_bytes)
        self._send(stream)
        return upload_id

    def buffered(self) -> int:
        """Messages not yet acknowledged by the broker."""
        return len(self.outbox)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the broker acknowledged everything sent so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.outbox) == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return len(self.outbox) == 0

    def stop(self, timeout: float = 5.0) -> None:
        """Say `offline`, disconnect, and close the outbox (what is still in it is sent after the next start)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._stopping.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(timeout)
        if self._connected.is_set():
            self.client.publish(self._topic(topics.STATUS), b"offline", qos=1, retain=True).wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self.outbox.close()

    def __enter__(self) -> Device:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------------

    def _topic(self, channel: str, *rest: str) -> str:
        return topics.topic(self.device_id, channel, *rest)

    def _send(self, messages: Iterable[Message]) -> None:
        self.outbox.put(messages)
        self._wake.set()

    def _run_pump(self) -> None:
        """Hands the outbox to paho in order (at most WINDOW unacknowledged) and deletes what the broker acked."""
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._pump_once()
            except Exception:
                log.exception("device %s: outbox pump failed", self.device_id)
                time.sleep(0.5)

    def _pump_once(self) -> None:
        acked = [row for info, row in self._pending if info.is_published()]
        if acked:
            self._pending = [(info, row) for info, row in self._pending if not info.is_published()]
            self.outbox.remove(acked)
            self.stats["acked"] += len(acked)
        room = WINDOW - len(self._pending)
        if not self._connected.is_set() or room <= 0:
            return
        for row_id, topic, payload in self.outbox.after(self._cursor, room):
            # paho keeps an unacknowledged QoS 1 message and resends it after a reconnect
            self._pending.append((self.client.publish(topic, payload, qos=1), row_id))
            self._cursor = row_id
            self.stats["sent"] += 1

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"the broker refused the login: {reason}"
            log.warning("device %s: %s", self.device_id, self.last_error)
            return
        self.last_error = None
        client.subscribe(self._topic(topics.COMMANDS), qos=1)

    def _on_subscribe(self, client: mqtt.Client, _userdata: Any, _mid: int, codes: list[Any], _props: Any) -> None:
        if any(code.is_failure for code in codes):
            self.last_error = "the broker refused the subscription to the commands topic"
            log.warning("device %s: %s", self.device_id, self.last_error)
        client.publish(self._topic(topics.STATUS), b"online", qos=1, retain=True)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if not self._stopping.is_set():
            log.info("device %s: disconnected (%s); reconnecting", self.device_id, reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._topic(topics.COMMANDS):
            self.stats["commands"] += 1
            with contextlib.suppress(RuntimeError):  # stopping
                self._executor.submit(self._handle, msg.payload)

    def _handle(self, payload: bytes) -> None:
        messages = self.handlers.run(self.device_id, payload, self.chunk_bytes)
        if messages:
            self._send(messages)
