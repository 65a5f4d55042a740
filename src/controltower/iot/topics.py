"""The MQTT topic scheme: everything of device `{id}` lives under `ct/d/{id}/`.

- `ct/d/{id}/telemetry`              device -> server: `{"ts": ..., "values": {...}}` or a list of those
- `ct/d/{id}/attributes`             device -> server: `{"key": any JSON, ...}` (latest state, kept with history)
- `ct/d/{id}/status`                 device -> server: `online` / `offline` (retained; `offline` as last will)
- `ct/d/{id}/commands`               server -> device: `{"id", "name", "params", "timeout_s", "expires_at"}`
- `ct/d/{id}/responses/{command_id}` device -> server: `{"status": "succeeded"|"failed", "result", "error"}`
- `ct/d/{id}/files/{upload_id}`      device -> server: a file's header `{"name", "content_type", "size", "sha256",
                                     "chunks", "command_id"}`, then its chunks in order, raw bytes, on
- `ct/d/{id}/files/{upload_id}/{n}`  n = 0 .. chunks-1 (iot/filechunks.py reassembles them)

A device may publish and subscribe only under its own prefix.
"""

from __future__ import annotations

import re
from typing import NamedTuple

PREFIX = "ct/d"
TELEMETRY = "telemetry"
ATTRIBUTES = "attributes"
STATUS = "status"
COMMANDS = "commands"
RESPONSES = "responses"
FILES = "files"

DEVICE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN + r"\Z")

# What the server subscribes to (as a privileged client of an external broker).
SERVER_SUBSCRIPTIONS = (
    f"{PREFIX}/+/{TELEMETRY}",
    f"{PREFIX}/+/{ATTRIBUTES}",
    f"{PREFIX}/+/{STATUS}",
    f"{PREFIX}/+/{RESPONSES}/+",
    f"{PREFIX}/+/{FILES}/#",
)


class DeviceTopic(NamedTuple):
    device_id: str
    channel: str
    rest: str


def device_prefix(device_id: str) -> str:
    return f"{PREFIX}/{device_id}/"


def topic(device_id: str, channel: str, *rest: str) -> str:
    return "/".join((PREFIX, device_id, channel, *rest))


def parse(name: str) -> DeviceTopic | None:
    """Split `ct/d/{id}/{channel}[/rest]`; None for a topic outside the scheme."""
    parts = name.split("/", 4)
    if len(parts) < 4 or f"{parts[0]}/{parts[1]}" != PREFIX or not DEVICE_ID_RE.match(parts[2]):
        return None
    return DeviceTopic(parts[2], parts[3], parts[4] if len(parts) == 5 else "")


def may_access(device_id: str, topic_or_filter: str) -> bool:
    """The ACL: a device's topics and filters must lie under `ct/d/{its id}/` (no wildcard above that)."""
    return topic_or_filter.startswith(device_prefix(device_id))
