"""Parse and check device payloads (telemetry, attributes, command responses) before anything is stored."""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from controltower.core.series import NAME_PATTERN
from controltower.core.series_write import MAX_TS

SERIES_PREFIX = "iot."
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}\Z")
SERIES_KEY_RE = re.compile(NAME_PATTERN + r"\Z")
MAX_READINGS = 10_000


class Rejected(ValueError):
    """A payload ingestion refuses; `kind` is the dead-letter category, the message names the field."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass
class Reading:
    """One telemetry entry: numbers go to the series store, everything else to attributes."""

    ts: float
    numbers: dict[str, float] = field(default_factory=dict)
    others: dict[str, Any] = field(default_factory=dict)


def series_name(key: str) -> str:
    """Telemetry key `temperature` is series `iot.temperature` with label `device=<id>`."""
    return SERIES_PREFIX + key


def load_json(data: bytes | str) -> Any:
    """Strict JSON (no NaN/Infinity); Rejected('malformed_json') with the parser's reason."""
    try:
        return orjson.loads(data)  # strict like the standard: NaN and Infinity are not JSON
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejected("malformed_json", f"body: not valid JSON: {exc}") from None


def parse_ts(value: Any, where: str, now: float) -> float:
    """Epoch seconds (number) or an ISO 8601 string; missing means `now`."""
    if value is None:
        return now
    if isinstance(value, bool):
        raise Rejected("invalid", f"{where}: must be epoch seconds or an ISO 8601 string, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0 or value >= MAX_TS:
            raise Rejected("invalid", f"{where}: {value!r} is not epoch seconds (milliseconds?)")
        return float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise Rejected("invalid", f"{where}: {value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        ts = parsed.timestamp()
        if not 0 <= ts < MAX_TS:
            raise Rejected("invalid", f"{where}: {value!r} is outside the years 1970 to 5138")
        return ts
    raise Rejected("invalid", f"{where}: must be epoch seconds or an ISO 8601 string, not {type(value).__name__}")


def _reading(entry: Any, where: str, now: float) -> Reading:
    if not isinstance(entry, dict):
        raise Rejected("invalid", f"{where}: must be an object with 'values', not {type(entry).__name__}")
    unknown = set(entry) - {"ts", "values"}
    if unknown:
        raise Rejected("invalid", f"{where}.{sorted(unknown)[0]}: unknown field (expected 'ts' and 'values')")
    values = entry.get("values")
    if not isinstance(values, dict):
        raise Rejected("invalid", f"{where}.values: must be an object of key -> value")
    reading = Reading(ts=parse_ts(entry.get("ts"), f"{where}.ts", now))
    for key, value in values.items():
        if not KEY_RE.match(key):
            raise Rejected("invalid", f"{where}.values.{key}: key must match {KEY_RE.pattern[:-2]}")
        if isinstance(value, int | float):  # a bool is stored as 1.0 / 0.0
            if not SERIES_KEY_RE.match(key):
                raise Rejected("invalid", f"{where}.values.{key}: a numeric key must match {NAME_PATTERN}")
            number = float(value)
            if not math.isfinite(number):
                raise Rejected("invalid", f"{where}.values.{key}: must be a finite number")
            reading.numbers[key] = number
        else:
            reading.others[key] = value
    return reading


def parse_telemetry(data: Any, now: float) -> list[Reading]:
    """`{"ts": ..., "values": {...}}` or a list of those (already decoded JSON)."""
    if isinstance(data, list):
        if not data:
            raise Rejected("invalid", "body: an empty list")
        if len(data) > MAX_READINGS:
            raise Rejected("oversize", f"body: {len(data)} entries; at most {MAX_READINGS} per message")
        return [_reading(entry, str(i), now) for i, entry in enumerate(data)]
    return [_reading(data, "body", now)]


def parse_attributes(data: Any) -> dict[str, Any]:
    """A JSON object of key -> any JSON value."""
    if not isinstance(data, dict) or not data:
        raise Rejected("invalid", "body: attributes must be a non-empty JSON object")
    for key in data:
        if not KEY_RE.match(key):
            raise Rejected("invalid", f"body.{key}: key must match {KEY_RE.pattern[:-2]}")
    return data


@dataclass(frozen=True)
class Response:
    succeeded: bool
    result: Any
    error: str | None


def parse_response(data: Any) -> Response:
    """`{"status": "succeeded"|"failed", "result": ..., "error": "..."}`; a missing status means succeeded."""
    if not isinstance(data, dict):
        raise Rejected("invalid", "body: a command response must be a JSON object")
    status = data.get("status", "succeeded")
    if status not in ("succeeded", "failed"):
        raise Rejected("invalid", f"body.status: must be 'succeeded' or 'failed', not {status!r}")
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise Rejected("invalid", "body.error: must be a string")
    return Response(status == "succeeded", data.get("result"), error)
