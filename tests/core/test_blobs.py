"""The blob store names files by content, writes atomically and refuses what is past the limit."""

from __future__ import annotations

import hashlib
import io

import pytest

from controltower.core.blobs import BlobStore, BlobTooLargeError


def test_put_and_read_back(tmp_path) -> None:
    store = BlobStore(tmp_path, max_bytes=1024)
    ref = store.put_bytes(b"hello world")
    assert ref.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert ref.size == 11
    with store.open(ref.sha256) as fh:
        assert fh.read() == b"hello world"
    assert store.put_file(io.BytesIO(b"hello world")) == ref  # same content, same blob


def test_too_large_leaves_nothing_behind(tmp_path) -> None:
    store = BlobStore(tmp_path, max_bytes=10)
    with pytest.raises(BlobTooLargeError, match="CT_BLOB_MAX_BYTES"):
        store.put_chunks([b"12345", b"67890", b"x"])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_paths_only_from_digests(tmp_path) -> None:
    store = BlobStore(tmp_path, max_bytes=10)
    with pytest.raises(ValueError, match="sha256"):
        store.path("../../etc/passwd")
    assert store.delete("0" * 64) is False
