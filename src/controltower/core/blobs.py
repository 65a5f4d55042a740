"""Content-addressed file store: files named by their sha256, written atomically, with a size limit."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


class BlobTooLargeError(ValueError):
    """The blob is past the size limit."""


@dataclass(frozen=True)
class BlobRef:
    sha256: str
    size: int


class BlobStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put_bytes(self, data: bytes) -> BlobRef:
        return self.put_chunks([data])

    def put_file(self, fh: BinaryIO) -> BlobRef:
        return self.put_chunks(iter(lambda: fh.read(CHUNK), b""))

    def put_chunks(self, chunks: Iterable[bytes]) -> BlobRef:
        """Stream chunks to a temporary file, hashing as it goes; move it into place when complete."""
        writer = _BlobWriter(self)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.finish()
        finally:
            writer.discard()

    async def put_stream(self, chunks: AsyncIterator[bytes]) -> BlobRef:
        writer = _BlobWriter(self)
        try:
            async for chunk in chunks:
                writer.write(chunk)
            return writer.finish()
        finally:
            writer.discard()

    def open(self, sha256: str) -> BinaryIO:
        return self.path(sha256).open("rb")

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False


class _BlobWriter:
    def __init__(self, store: BlobStore) -> None:
        self.store = store
        store.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=store.root, prefix=".incoming-")
        self.tmp = Path(name)
        self.fh = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.store.max_bytes:
            raise BlobTooLargeError(
                f"blob is larger than the limit of {self.store.max_bytes} bytes (CT_BLOB_MAX_BYTES)"
            )
        self.digest.update(chunk)
        self.fh.write(chunk)

    def finish(self) -> BlobRef:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        sha = self.digest.hexdigest()
        target = self.store.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.tmp, target)
        return BlobRef(sha256=sha, size=self.size)

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)
