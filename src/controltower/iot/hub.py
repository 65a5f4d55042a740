"""The ingestion hub: transports (embedded broker, external broker, HTTP) hand it messages and connection
changes; one worker thread stores them in batches, keeps dead letters, and delivers queued commands."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from controltower.core.auth import Role, authenticate
from controltower.core.context import Context
from controltower.core.db import utcnow
from controltower.core.series import RawSample
from controltower.iot import commands, deadletters, presence, topics
from controltower.iot.filechunks import Reassembler
from controltower.iot.jobqueue import JobQueue
from controltower.iot.models import Device
from controltower.iot.payloads import (
    Rejected,
    load_json,
    parse_attributes,
    parse_response,
    parse_telemetry,
)
from controltower.iot.store import record_file, store_attributes, store_readings

log = logging.getLogger("controltower.iot.hub")

BATCH_MAX = 5000  # under a backlog, a big batch writes far fewer SQLite pages per message
DROP_LOG_EVERY_S = 10.0


class Transport(Protocol):
    """How the hub reaches devices: the embedded broker or a client of an external one."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Send to devices; callable from any thread."""

    def is_up(self) -> bool:
        """Listening (embedded) or connected (external)."""

    def disconnect_device(self, device_id: str) -> int:
        """Drop the device's live sessions (its token was revoked); how many were dropped."""


@dataclass(slots=True)  # not frozen: a frozen dataclass costs a setattr call per field, per message
class Job:
    kind: str  # message | reject | connected | disconnected | deliver
    device_id: str
    topic: str = ""
    payload: bytes = b""
    source: str = "mqtt"
    refusal: Rejected | None = None  # for `reject`: refused before it was queued
    parsed: topics.DeviceTopic | None = None  # for `message`: its topic, parsed when it was queued
    receipt: Any = None  # the transport's token for acknowledging it once processed (on_processed)


@dataclass
class BatchWrites:
    """What the messages of one batch write together at its end: their numbers (one series write) and,
    per device, how many messages arrived (one UPDATE per device instead of an ORM flush of each)."""

    samples: list[RawSample] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, str] = field(default_factory=dict)  # the batch's known devices -> status, kept current

    def write(self, ctx: Context, session: Session) -> None:
        if self.samples:
            ctx.series.write(self.samples, session=session)
        # One UPDATE per distinct count (a batch has few: most devices sent once or twice), not one per device.
        by_count: defaultdict[int, list[str]] = defaultdict(list)
        for device_id, count in self.seen.items():
            by_count[count].append(device_id)
        table, now = Device.__table__, utcnow()
        for count, device_ids in by_count.items():
            session.execute(
                update(table)
                .where(table.c.id.in_(device_ids))
                .values(messages_received=func.coalesce(table.c.messages_received, 0) + count, last_seen_at=now)
            )


@dataclass
class Outcome:
    """What storing one message did."""

    readings: int = 0
    numbers: int = 0
    attributes: int = 0
    files: int = 0


class Hub:
    """Owns the ingestion queue and worker; thread-safe entry points for every transport."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.transport: Transport | None = None
        self.on_processed: Callable[[list[Any]], None] | None = None  # receipts of a processed batch
        self.stats: Counter[str] = Counter()
        self._queue: JobQueue[Job | None] = JobQueue(ctx.settings.iot_queue_max)
        self._lock = threading.Lock()
        self._connections: Counter[str] = Counter()
        self._ready: set[str] = set()
        self._thread: threading.Thread | None = None
        self._dropped_logged_at = -DROP_LOG_EVERY_S
        self._idle = threading.Event()
        self._idle.set()
        settings = ctx.settings
        self.uploads = Reassembler(settings.data_dir / "iot-uploads", ctx.blobs,
                                   min(settings.iot_file_max_bytes, ctx.blobs.max_bytes), settings.iot_upload_idle_s)

    # -- lifecycle -----------------------------------------------------------------------------

    def start_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="iot-ingest", daemon=True)
            self._thread.start()

    def stop_worker(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None, wait=True)
            self._thread.join(timeout)
            self._thread = None
        self.uploads.close()

    # -- entry points for transports (any thread) ----------------------------------------------

    def check_device(self, username: str | None, password: str | None) -> bool:
        """MQTT login: username = device id, password = its token (role device, subject device:<id>)."""
        if not username or not password:
            return False
        principal = self.ctx.principals.get(password)
        if principal is None:
            with self.ctx.db.read_session() as session:
                principal = authenticate(session, password)
            if principal is not None:
                self.ctx.principals.put(password, principal)
        return principal is not None and principal.role == Role.device and principal.subject == f"device:{username}"

    def message(self, topic: str, payload: bytes, source: str = "mqtt", wait: bool = False) -> None:
        """A device published; oversize is refused here, the rest is parsed on the worker.

        With `wait`, a full queue makes the caller wait (an external broker's client: the broker keeps the
        messages meanwhile); without, a full queue drops the message (the embedded broker, which must not
        block its event loop, first waits asynchronously for `has_room`)."""
        self._enqueue(self._job(topic, payload, source), wait)

    def has_room(self) -> bool:
        """Whether a message handed over now is queued rather than dropped."""
        return len(self._queue) < self._queue.maxsize

    def messages(self, received: Sequence[tuple[str, bytes, Any]], source: str = "mqtt") -> None:
        """Many (topic, payload, receipt) at once, in order, waiting while the queue is full (an external
        broker's client). Once a batch is stored (or dead-lettered), its receipts go to `on_processed`."""
        self._queue.put_many([self._job(topic, payload, source, receipt) for topic, payload, receipt in received],
                             wait=True)

    def _job(self, topic: str, payload: bytes, source: str, receipt: Any = None) -> Job:
        self.stats["received"] += 1
        parsed = topics.parse(topic)
        device_id = parsed.device_id if parsed else ""
        limit = self.ctx.settings.iot_message_max_bytes
        if len(payload) > limit:
            reason = f"body: {len(payload)} bytes; the limit is {limit} (CT_IOT_MESSAGE_MAX_BYTES)"
            kept = payload[: deadletters.PAYLOAD_KEEP]
            return Job("reject", device_id, topic, kept, source, Rejected("oversize", reason), None, receipt)
        return Job("message", device_id, topic, payload, source, None, parsed, receipt)

    def connected(self, device_id: str) -> None:
        with self._lock:
            self._connections[device_id] += 1
            first = self._connections[device_id] == 1
        if first:
            self._enqueue(Job("connected", device_id))

    def disconnected(self, device_id: str) -> None:
        with self._lock:
            self._connections[device_id] -= 1
            last = self._connections[device_id] <= 0
            if last:
                del self._connections[device_id]
                self._ready.discard(device_id)
        if last:
            self._enqueue(Job("disconnected", device_id))

    def commands_ready(self, device_id: str, ready: bool = True) -> None:
        """The device listens for commands (subscribed, or said `online`): deliver what is queued."""
        with self._lock:
            if ready:
                self._ready.add(device_id)
            else:
                self._ready.discard(device_id)
        if ready:
            self._enqueue(Job("deliver", device_id))

    def is_ready(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._ready

    def transport_ready(self) -> bool:
        transport = self.transport
        return transport is not None and transport.is_up()

    def credentials_revoked(self, device_id: str) -> None:
        """The device's token no longer works: its live MQTT sessions are closed, so it must log in again."""
        transport = self.transport
        if transport is not None:
            dropped = transport.disconnect_device(device_id)
            if dropped:
                log.warning("closed %d MQTT session(s) of %s: its token was revoked", dropped, device_id)

    def expire_uploads(self) -> int:
        """Files sent in chunks that stalled for CT_IOT_UPLOAD_IDLE_S become dead letters."""
        expired = self.uploads.expire()
        for device_id, topic, reason in expired:
            self._enqueue(Job("reject", device_id, topic, b"", "mqtt", Rejected("incomplete", reason)))
        return len(expired)

    def notify_command(self, device_id: str) -> None:
        """A command was queued (and committed): deliver now if the device listens."""
        if self.is_ready(device_id):
            self._enqueue(Job("deliver", device_id))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is processed (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished == 0:
                return True
            time.sleep(0.01)
        return False

    def _enqueue(self, job: Job, wait: bool = False) -> None:
        if not self._queue.put(job, wait):
            self.stats["dropped"] += 1
            now = time.monotonic()
            if now - self._dropped_logged_at >= DROP_LOG_EVERY_S:  # one line, not one per message
                self._dropped_logged_at = now
                log.warning("iot ingestion queue full (%d): %d messages dropped so far (last: %s from %s)",
                            self._queue.maxsize, self.stats["dropped"], job.kind, job.device_id)

    # -- the worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            taken = self._queue.get_batch(BATCH_MAX)
            batch = [job for job in taken if job is not None]  # None: stop (after what came with it)
            try:
                if batch:
                    self._process(batch)
                    self._acknowledge(batch)
            except Exception:
                log.exception("iot ingestion batch failed")
            finally:
                self._queue.done(len(taken))
            if len(batch) < len(taken):
                return

    def _acknowledge(self, batch: list[Job]) -> None:
        """Only now may the broker forget them: a server killed before this gets them again."""
        on_processed = self.on_processed
        receipts = [job.receipt for job in batch if job.receipt is not None]
        if on_processed is not None and receipts:
            on_processed(receipts)

    def _process(self, batch: list[Job]) -> None:
        outbox: list[tuple[str, bytes]] = []
        try:
            with self.ctx.db.session() as session:
                # One query for the batch's devices and one series write for all its numbers: per message,
                # those were most of the cost. Telemetry of an online device needs only the device's id and
                # status; loading Device objects (the rare paths) is left to session.get.
                ids = {job.device_id for job in batch if job.device_id}
                table = Device.__table__
                known = session.execute(select(table.c.id, table.c.status).where(table.c.id.in_(ids))).all()
                writes = BatchWrites(statuses={device_id: status for device_id, status in known})
                for job in batch:
                    self._handle(session, job, outbox, writes)
                writes.write(self.ctx, session)
        except Exception:
            log.exception("iot batch of %d failed; storing its messages one by one", len(batch))
            self.uploads.outcomes_rolled_back()  # a file completed in the batch is recorded by its job alone
            outbox = []
            for job in batch:
                try:
                    with self.ctx.db.session() as session:
                        self._handle(session, job, outbox)
                except Exception as exc:
                    log.exception("iot message from %s failed", job.device_id)
                    self._dead_letter_alone(job, "error", f"{exc.__class__.__name__}: {exc}")
                self.uploads.outcomes_committed()
        else:
            self.uploads.outcomes_committed()
        self._publish(outbox)

    def _publish(self, outbox: list[tuple[str, bytes]]) -> None:
        transport = self.transport
        for topic, payload in outbox:
            if transport is None:
                log.warning("no MQTT transport; command for %s stays sent until it times out", topic)
                continue
            try:
                transport.publish(topic, payload, 1)
            except Exception:
                log.exception("publishing %s failed", topic)

    def _dead_letter_alone(self, job: Job, kind: str, reason: str) -> None:
        try:
            with self.ctx.db.session() as session:
                deadletters.record(session, source=job.source, topic=job.topic, kind=kind, reason=reason,
                                   payload=job.payload, device_id=job.device_id or None)
            self.stats["dead_letters"] += 1
        except Exception:
            log.exception("could not keep a dead letter for %s", job.topic)

    def _handle(
        self, session: Session, job: Job, outbox: list[tuple[str, bytes]], writes: BatchWrites | None = None
    ) -> None:
        """One job in the batch's transaction. Every check comes before any write, so a refusal writes
        only its dead letter."""
        if job.refusal is not None:
            self._reject(session, job, job.refusal)
            return
        if job.kind == "deliver":
            for command in commands.take_pending(self.ctx, session, job.device_id):
                outbox.append((topics.topic(job.device_id, topics.COMMANDS), commands.message(command)))
            return
        try:
            if writes is not None and writes.statuses.get(job.device_id) == presence.ONLINE and job.kind == "message":
                parsed = job.parsed
                if parsed is not None and parsed.channel == topics.TELEMETRY and not parsed.rest:
                    self._telemetry(session, job.device_id, job.payload, writes.samples)
                    writes.seen[job.device_id] += 1
                    self.stats["stored"] += 1
                    return
            device = session.get(Device, job.device_id) if job.device_id else None
            if job.kind in ("connected", "disconnected"):
                if device is not None:
                    status = presence.ONLINE if job.kind == "connected" else presence.OFFLINE
                    presence.set_status(self.ctx, session, device, status, "mqtt")
                    if writes is not None:
                        writes.statuses[device.id] = device.status
                return
            if device is None:
                raise Rejected("unknown_device", f"topic: no device with id {job.device_id!r} ({job.topic})")
            self.store(session, device, job.topic, job.payload, job.source, writes)
            if writes is not None:
                writes.statuses[device.id] = device.status
            self.stats["stored"] += 1
        except Rejected as exc:
            self._reject(session, job, exc)

    def _reject(self, session: Session, job: Job, exc: Rejected) -> None:
        deadletters.record(session, source=job.source, topic=job.topic, kind=exc.kind, reason=exc.reason,
                           payload=job.payload, device_id=job.device_id or None)
        self.stats["dead_letters"] += 1

    def store(
        self, session: Session, device: Device, topic: str, payload: bytes, via: str,
        writes: BatchWrites | None = None,
    ) -> Outcome:
        """Parse and store one message of `device`; Rejected (nothing written) when it is bad.

        With `writes`, its numbers are checked, and they and its count are left there for the caller to
        write with the rest of the batch."""
        parsed = topics.parse(topic)
        if parsed is None or parsed.device_id != device.id:
            raise Rejected("invalid", f"topic: {topic!r} is not under {topics.device_prefix(device.id)}")
        outcome = Outcome()
        if parsed.channel == topics.TELEMETRY and not parsed.rest:
            outcome = self._telemetry(session, device.id, payload, writes.samples if writes else None)
        elif parsed.channel == topics.ATTRIBUTES and not parsed.rest:
            values = parse_attributes(load_json(payload))
            outcome.attributes = store_attributes(session, device.id, values, utcnow())
        elif parsed.channel == topics.FILES and parsed.rest:
            done = self.uploads.receive(device.id, parsed.rest, payload)
            if done is not None:
                header = done.header
                record_file(session, device, sha256=done.blob.sha256, size=done.blob.size,
                            content_type=header.content_type, filename=header.name, command_id=header.command_id)
                outcome.files = 1
        elif parsed.channel == topics.STATUS and not parsed.rest:
            self._status(session, device, payload)
            return outcome
        elif parsed.channel == topics.RESPONSES and parsed.rest:
            try:
                command_id = int(parsed.rest)
            except ValueError:
                raise Rejected("invalid", f"topic: {parsed.rest!r} is not a command id") from None
            commands.respond(self.ctx, session, device.id, command_id, parse_response(load_json(payload)))
        else:
            raise Rejected("invalid", f"topic: {topic!r} is not a channel devices publish to")
        if writes is None:
            device.messages_received = (device.messages_received or 0) + 1
            presence.seen(self.ctx, session, device, via)
        else:
            writes.seen[device.id] += 1
            if via == "http" or device.status != presence.ONLINE:  # a status change (rare): as usual
                presence.seen(self.ctx, session, device, via)
        return outcome

    def _telemetry(self, session: Session, device_id: str, payload: bytes, batch: list[RawSample] | None) -> Outcome:
        readings = parse_telemetry(load_json(payload), time.time())
        numbers, attributes = store_readings(self.ctx, session, device_id, readings, batch)
        return Outcome(readings=len(readings), numbers=numbers, attributes=attributes)

    def _status(self, session: Session, device: Device, payload: bytes) -> None:
        text = payload.decode("utf-8", errors="replace").strip().strip('"').lower()
        if text not in (presence.ONLINE, presence.OFFLINE):
            raise Rejected("invalid", f"body: status must be 'online' or 'offline', not {text[:40]!r}")
        presence.set_status(self.ctx, session, device, text, "mqtt")
        self.commands_ready(device.id, text == presence.ONLINE)


_HUBS: dict[int, Hub] = {}


def hub_of(ctx: Context) -> Hub:
    """The one hub of a Context (the API, the service and the actions share it)."""
    hub = _HUBS.get(id(ctx))
    if hub is None or hub.ctx is not ctx:
        hub = _HUBS[id(ctx)] = Hub(ctx)
    return hub
