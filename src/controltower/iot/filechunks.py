"""Files over MQTT: a header on `ct/d/{id}/files/{upload_id}`, then chunk n on `ct/d/{id}/files/{upload_id}/{n}`,
streamed to a temporary file under the data dir, checked (size, sha256) and moved into the blob store."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from controltower.core.blobs import BlobRef, BlobStore, BlobTooLargeError
from controltower.iot import topics
from controltower.iot.payloads import Rejected, load_json

UPLOAD_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
HEADER_FIELDS = frozenset({"name", "content_type", "size", "sha256", "chunks", "command_id"})
UPLOADS_PER_DEVICE = 16  # files one device may have in progress at once
CLOSED_KEEP = 10_000  # finished or refused uploads remembered: their resent or remaining messages are ignored


@dataclass(frozen=True)
class Header:
    """What a device announces before the chunks of a file."""

    name: str | None
    content_type: str
    size: int
    sha256: str
    chunks: int
    command_id: int | None


@dataclass(frozen=True)
class Completed:
    """A file whose chunks all arrived, checked and stored in the blob store."""

    upload_id: str
    header: Header
    blob: BlobRef


@dataclass
class _Upload:
    header: Header
    topic: str
    fh: IO[bytes]
    path: Path
    touched: float
    digest: Any = field(default_factory=hashlib.sha256)
    received: int = 0
    next_chunk: int = 0


def _int(data: dict[str, Any], key: str, minimum: int) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Rejected("invalid", f"body.{key}: must be an integer >= {minimum}")
    return value


def parse_header(data: Any, max_bytes: int) -> Header:
    """The header's fields, each checked; `oversize` when the announced size is past the limit."""
    if not isinstance(data, dict):
        raise Rejected("invalid", "body: a file header must be a JSON object")
    unknown = set(data) - HEADER_FIELDS
    if unknown:
        raise Rejected("invalid", f"body.{sorted(unknown)[0]}: unknown field (expected {sorted(HEADER_FIELDS)})")
    size = _int(data, "size", 0)
    if size > max_bytes:
        raise Rejected("oversize", f"body.size: {size} bytes; the limit is {max_bytes} (CT_IOT_FILE_MAX_BYTES)")
    chunks = _int(data, "chunks", 0)
    if (chunks == 0) != (size == 0) or chunks > size > 0:
        raise Rejected("invalid", f"body.chunks: {chunks} chunks cannot carry {size} bytes")
    sha256 = data.get("sha256")
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise Rejected("invalid", "body.sha256: must be 64 lowercase hex digits")
    content_type = data.get("content_type", "application/octet-stream")
    if not isinstance(content_type, str) or not 0 < len(content_type) <= 255:
        raise Rejected("invalid", "body.content_type: must be a string of 1-255 characters")
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 255):
        raise Rejected("invalid", "body.name: must be a string of at most 255 characters")
    command_id = data.get("command_id")
    if command_id is not None:
        command_id = _int(data, "command_id", 1)
    return Header(name, content_type, size, sha256, chunks, command_id)


class Reassembler:
    """Upload state of every device, one temporary file per upload in progress. Thread-safe."""

    def __init__(self, directory: Path, blobs: BlobStore, max_bytes: int, idle_s: float) -> None:
        self.directory = directory
        self.blobs = blobs
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self._uploads: dict[tuple[str, str], _Upload] = {}
        self._closed: OrderedDict[tuple[str, str], None] = OrderedDict()
        # How uploads closed since the caller last committed, by the message that closed them: a rolled-back
        # transaction gets them again for the same message instead of a resend being ignored.
        self._unsettled: dict[tuple[str, str], tuple[str, Completed | Rejected]] = {}
        self._replayable: dict[tuple[str, str], tuple[str, Completed | Rejected]] = {}
        self._lock = threading.Lock()
        for leftover in directory.glob("*.part"):  # a previous run's uploads in progress
            leftover.unlink(missing_ok=True)

    def in_progress(self) -> int:
        with self._lock:
            return len(self._uploads)

    def receive(self, device_id: str, rest: str, payload: bytes) -> Completed | None:
        """One message under `files/`: a header (`rest` = upload id) or a chunk (`upload id/n`).

        Returns the stored file once its last chunk is in; Rejected (upload dropped) when something is wrong.
        A resent header or chunk (QoS 1 redelivery, a device replaying its buffer) is ignored, and so are the
        remaining chunks of a refused upload: one dead letter per upload. The caller says when what it
        recorded of these outcomes is committed (`outcomes_committed`) or rolled back (`outcomes_rolled_back`).
        """
        upload_id, _, index = rest.partition("/")
        if not UPLOAD_ID_RE.match(upload_id):
            raise Rejected("invalid", f"topic: upload id {upload_id!r} must be 1-64 of A-Za-z0-9_-")
        key = (device_id, upload_id)
        with self._lock:
            if key in self._closed:
                return self._replay(key, rest)
            try:
                if not index:
                    done = self._header(key, payload)
                elif not index.isdigit():
                    raise Rejected("invalid", f"topic: chunk number {index!r} is not a non-negative integer")
                else:
                    done = self._chunk(key, int(index), payload)
            except Rejected as exc:
                self._drop(key)
                self._close(key)
                self._unsettled[key] = (rest, exc)
                raise
            if done is not None:
                self._unsettled[key] = (rest, done)
            return done

    def outcomes_committed(self) -> None:
        """What the caller recorded of the uploads closed (or replayed) since it last committed or rolled back
        is durable: from now on their resent messages are ignored."""
        with self._lock:
            self._unsettled.clear()

    def outcomes_rolled_back(self) -> None:
        """What the caller recorded of the uploads closed since it last committed was rolled back: the message
        that closed each, handled again, returns the stored file (or raises the refusal) once more."""
        with self._lock:
            self._replayable.update(self._unsettled)
            self._unsettled.clear()

    def _replay(self, key: tuple[str, str], rest: str) -> Completed | None:
        kept = self._replayable.get(key)
        if kept is None or kept[0] != rest:
            return None
        del self._replayable[key]
        self._unsettled[key] = kept
        outcome = kept[1]
        if isinstance(outcome, Rejected):
            raise Rejected(outcome.kind, outcome.reason)
        return outcome

    def _header(self, key: tuple[str, str], payload: bytes) -> Completed | None:
        header = parse_header(load_json(payload), self.max_bytes)
        current = self._uploads.get(key)
        if current is not None:
            if current.header == header:
                return None
            self._drop(key)
            raise Rejected("invalid", f"topic: upload {key[1]!r} was already in progress with another header; "
                                      "both dropped")
        if sum(1 for device_id, _ in self._uploads if device_id == key[0]) >= UPLOADS_PER_DEVICE:
            raise Rejected("invalid", f"topic: device {key[0]} already has {UPLOADS_PER_DEVICE} uploads in progress")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=f"{key[0]}-{key[1]}-", suffix=".part")
        upload = _Upload(header, topics.topic(key[0], topics.FILES, key[1]), os.fdopen(fd, "w+b"), Path(name),
                         time.monotonic())
        self._uploads[key] = upload
        return self._finish(key) if header.chunks == 0 else None

    def _chunk(self, key: tuple[str, str], index: int, payload: bytes) -> Completed | None:
        upload = self._uploads.get(key)
        if upload is None:
            raise Rejected("invalid", f"topic: no upload {key[1]!r} in progress (header missing, expired or "
                                      "already refused)")
        if index < upload.next_chunk:
            return None
        if index != upload.next_chunk:
            self._drop(key)
            raise Rejected("invalid", f"topic: chunk {index} of upload {key[1]!r} arrived when chunk "
                                      f"{upload.next_chunk} was expected; upload dropped")
        if index >= upload.header.chunks or upload.received + len(payload) > upload.header.size:
            self._drop(key)
            raise Rejected("oversize", f"body: chunk {index} goes past the announced {upload.header.size} bytes "
                                       f"in {upload.header.chunks} chunks; upload dropped")
        upload.fh.write(payload)
        upload.digest.update(payload)
        upload.received += len(payload)
        upload.next_chunk += 1
        upload.touched = time.monotonic()
        return self._finish(key) if upload.next_chunk == upload.header.chunks else None

    def _finish(self, key: tuple[str, str]) -> Completed:
        upload = self._uploads[key]
        header = upload.header
        try:
            if upload.received != header.size:
                raise Rejected("invalid", f"body.size: {upload.received} bytes arrived, the header said {header.size}")
            actual = upload.digest.hexdigest()
            if actual != header.sha256:
                raise Rejected("invalid", f"body.sha256: the chunks hash to {actual}, the header said "
                                          f"{header.sha256}; upload dropped")
            upload.fh.flush()
            upload.fh.seek(0)
            try:
                blob = self.blobs.put_file(upload.fh)
            except BlobTooLargeError as exc:
                raise Rejected("oversize", f"body.size: {exc}") from None
        finally:
            self._drop(key)
        self._close(key)
        return Completed(key[1], header, blob)

    def _close(self, key: tuple[str, str]) -> None:
        self._closed[key] = None
        while len(self._closed) > CLOSED_KEEP:
            forgotten, _ = self._closed.popitem(last=False)
            self._replayable.pop(forgotten, None)

    def _drop(self, key: tuple[str, str]) -> None:
        upload = self._uploads.pop(key, None)
        if upload is not None:
            upload.fh.close()
            upload.path.unlink(missing_ok=True)

    def expire(self) -> list[tuple[str, str, str]]:
        """Drop uploads idle for `idle_s`: (device id, header topic, reason) of each."""
        cutoff = time.monotonic() - self.idle_s
        expired = []
        with self._lock:
            for key, upload in list(self._uploads.items()):
                if upload.touched <= cutoff:
                    reason = (f"upload {key[1]!r}: {upload.next_chunk} of {upload.header.chunks} chunks arrived, "
                              f"then nothing for {self.idle_s:g}s (CT_IOT_UPLOAD_IDLE_S); dropped")
                    expired.append((key[0], upload.topic, reason))
                    self._drop(key)
        return expired

    def close(self) -> None:
        with self._lock:
            for key in list(self._uploads):
                self._drop(key)
