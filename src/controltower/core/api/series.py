"""Time-series routes: agents and operators write batches; viewers list, query and read latest values."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterator
from typing import Annotated, Any, NotRequired

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from controltower.core.auth import Principal, Role, Viewer, require
from controltower.core.deps import CtxDep, SessionDep
from controltower.core.series import Agg, RawSample, Resolution, SeriesError

router = APIRouter(tags=["series"])

Writer = Annotated[Principal, require(Role.operator, Role.agent)]

_OFFLOAD_BYTES = 1024 * 1024  # parse bodies larger than this in a worker thread, off the event loop
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)\Z")


# A TypedDict rather than a model: validating a batch this way is about twice as fast.
class SampleIn(TypedDict):
    """One sample of one series."""

    name: Annotated[str, Field(description="Series name, matching [a-zA-Z_][a-zA-Z0-9_.:]*")]
    labels: NotRequired[Annotated[dict[str, str], Field(description="Label keys match the name pattern")]]
    ts: NotRequired[Annotated[float, Field(description="Epoch seconds; default: when the server receives it")]]
    value: float


class SeriesWrite(TypedDict):
    samples: list[SampleIn]


class WriteResult(BaseModel):
    written: int


class SeriesPublic(BaseModel):
    name: str
    labels: dict[str, str]
    key: str
    last_ts: float | None
    last_value: float | None


class LatestPublic(BaseModel):
    name: str
    labels: dict[str, str]
    ts: float
    value: float


class SeriesPoints(BaseModel):
    name: str
    labels: dict[str, str]
    points: list[tuple[float, float]] = Field(description="[ts, value] pairs, oldest first")


class QueryResult(BaseModel):
    start: float
    end: float
    step: float | None
    agg: str
    resolution: str
    series: list[SeriesPoints]


_BODY = TypeAdapter(SeriesWrite)
_SAMPLE_SCHEMA = TypeAdapter(SampleIn).json_schema()


def _invalid(field: str, reason: str, where: str = "query") -> RequestValidationError:
    loc = (where, *field.split(".")) if field else (where,)
    return RequestValidationError([{"loc": loc, "msg": reason, "type": "value_error"}])


def _parse_body(body: bytes) -> list[SampleIn]:
    try:
        return _BODY.validate_json(body)["samples"]
    except ValidationError as exc:
        raise RequestValidationError(
            [{"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]} for err in exc.errors()]
        ) from None


def as_samples(samples: list[SampleIn], now: float) -> Iterator[RawSample]:
    """(name, labels, ts, value) tuples made one at a time as the store consumes them: a 100k-sample
    batch then leaves no second copy of itself for the garbage collector to walk."""
    return ((s["name"], s.get("labels"), s.get("ts", now), s["value"]) for s in samples)


async def read_samples(request: Request) -> list[SampleIn]:
    """The request body parsed straight from bytes (pydantic-core JSON), skipping the generic body path."""
    body = await request.body()
    if len(body) > _OFFLOAD_BYTES:
        return await asyncio.to_thread(_parse_body, body)
    return _parse_body(body)


def parse_labels(values: list[str], field: str) -> dict[str, str] | None:
    """`k:v` pairs (split at the first colon) to a dict; None when there are none."""
    out: dict[str, str] = {}
    for raw in values:
        key, sep, value = raw.partition(":")
        if not sep or not key:
            raise _invalid(field, f"expected key:value, got {raw!r}")
        out[key] = value
    return out or None


def parse_time(value: str, now: float, field: str) -> float:
    """Epoch seconds, ISO 8601 (UTC unless it says otherwise), `now`, or relative to now: `-1h`, `now-30m`."""
    text = value.strip()
    if text == "now":
        return now
    if text.startswith("now"):
        text = text[3:].strip()
        if not text.startswith("-"):
            raise _invalid(field, f"expected now-<duration>, got {value!r}")
    if text.startswith("-"):
        if m := _DURATION.match(text[1:].strip()):
            return now - float(m.group(1)) * _UNITS[m.group(2) or "s"]
        raise _invalid(field, f"expected a relative time like -1h or -30m, got {value!r}")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        reason = f"expected epoch seconds, ISO 8601 or a relative time like -1h, got {value!r}"
        raise _invalid(field, reason) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def parse_duration(value: str, field: str) -> float:
    """Seconds, or a number with a unit: `30s`, `5m`, `1h`, `1d`, `1w`."""
    m = _DURATION.match(value.strip())
    if not m:
        raise _invalid(field, f"expected seconds or a duration like 5m, got {value!r}")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise _invalid(field, "must be positive")
    return seconds


LabelQuery = Annotated[
    list[str], Query(description="Label filter key:value, repeatable; a series must carry every one")
]


@router.post(
    "/series",
    response_model=WriteResult,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["samples"],
                        "properties": {"samples": {"type": "array", "items": _SAMPLE_SCHEMA}},
                    }
                }
            },
        }
    },
)
def write_series(
    _principal: Writer,
    ctx: CtxDep,
    session: SessionDep,
    samples: Annotated[list[SampleIn], Depends(read_samples)],
) -> dict[str, int]:
    """Store a batch of samples. All are checked first: one bad sample rejects the batch (422 names it)."""
    try:
        written = ctx.series.write(as_samples(samples, time.time()), session)
    except SeriesError as exc:
        raise _invalid(exc.field, exc.reason, "body") from None
    session.commit()
    return {"written": written}


@router.get("/series", response_model=list[SeriesPublic])
def list_series(
    _principal: Viewer,
    ctx: CtxDep,
    name: str | None = None,
    name_prefix: str | None = None,
    label: LabelQuery = [],  # noqa: B006 (FastAPI copies defaults)
    labels: LabelQuery = [],  # noqa: B006
) -> list[dict[str, Any]]:
    wanted = parse_labels([*label, *labels], "label")
    return [s._asdict() for s in ctx.series.list_series(name_prefix=name_prefix, labels=wanted, name=name)]


@router.get("/series/latest", response_model=list[LatestPublic])
def latest(
    _principal: Viewer,
    ctx: CtxDep,
    name: str | None = None,
    name_prefix: str | None = None,
    label: LabelQuery = [],  # noqa: B006
    labels: LabelQuery = [],  # noqa: B006
) -> list[dict[str, Any]]:
    """The newest sample of every matching series."""
    wanted = parse_labels([*label, *labels], "label")
    return [s._asdict() for s in ctx.series.latest(name=name, labels=wanted, name_prefix=name_prefix)]


@router.get("/series/query", response_model=QueryResult)
def query_series(
    _principal: Viewer,
    ctx: CtxDep,
    name: str,
    start: Annotated[str, Query(description="Epoch seconds, ISO 8601, or relative: -1h, now-30m")] = "-1h",
    end: Annotated[str, Query(description="Like start; default now")] = "now",
    step: Annotated[str | None, Query(description="Bucket size: seconds or 30s, 5m, 1h, 1d")] = None,
    agg: Agg = "avg",
    resolution: Resolution = "auto",
    label: LabelQuery = [],  # noqa: B006
    labels: LabelQuery = [],  # noqa: B006
) -> dict[str, Any]:
    """Points of every series called `name` carrying the given labels, start <= ts <= end."""
    now = time.time()
    t0, t1 = parse_time(start, now, "start"), parse_time(end, now, "end")
    step_s = parse_duration(step, "step") if step is not None else None
    wanted = parse_labels([*labels, *label], "labels")
    try:
        results = ctx.series.query(name, wanted, t0, t1, step=step_s, agg=agg, resolution=resolution)
    except SeriesError as exc:
        raise _invalid(exc.field, exc.reason) from None
    return {
        "start": t0,
        "end": t1,
        "step": step_s,
        "agg": agg,
        "resolution": resolution,
        "series": [r._asdict() for r in results],
    }
