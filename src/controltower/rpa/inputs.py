"""A run's input data on the server: size limits for JSON, and references to uploaded input files."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from controltower.core.blobs import BlobStore
from controltower.rpa.schemas import InputFileRef

FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_@+=,-][A-Za-z0-9._ @+=,-]*$")


class InputRefused(ValueError):
    """Bad input data; the message starts with the field."""


def check_json_size(value: Any, field: str, limit: int) -> None:
    """Refuse JSON whose serialised form is past `limit` bytes (the setting CT_RPA_DATA_MAX_BYTES)."""
    if value is None:
        return
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > limit:
        raise InputRefused(f"{field}: {size} bytes of JSON is larger than the limit of {limit} bytes "
                           "(CT_RPA_DATA_MAX_BYTES)")


def resolve_files(blobs: BlobStore, refs: Sequence[InputFileRef], field: str = "files") -> list[dict[str, Any]]:
    """Check each reference names a plain, unique file name and an uploaded blob; the entries to store."""
    seen: set[str] = set()
    entries: list[dict[str, Any]] = []
    for i, ref in enumerate(refs):
        where = f"{field}[{i}]"
        if not FILE_NAME_RE.match(ref.name):
            raise InputRefused(f"{where}.name: {ref.name!r} must be a plain file name "
                               "(letters, digits, '.', '_', '-', no '/' and not starting with '.')")
        if ref.name in seen:
            raise InputRefused(f"{where}.name: {ref.name!r} is given twice")
        seen.add(ref.name)
        if not blobs.exists(ref.sha256):
            raise InputRefused(f"{where}.sha256: no uploaded file has sha256 {ref.sha256} (POST /api/v1/rpa/files)")
        size = blobs.path(ref.sha256).stat().st_size
        entries.append({"name": ref.name, "sha256": ref.sha256, "size": size})
    return entries


def find_file(entries: Sequence[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((e for e in entries if e.get("name") == name), None)
