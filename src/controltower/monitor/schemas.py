"""Monitor's API models for hosts and health checks: pushed metrics, checks, results, state history."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any, NotRequired

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$"
METRIC_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:]{0,254}$"
LABEL_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"

MAX_PUSH_SAMPLES = 100_000

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like `500ms`, `10s`, `5m`, `1h`, `1d`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10s', '5m', '1h'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration; use seconds or e.g. '10s', '5m', '1h'")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError("a duration is a number of seconds or a string like '10s', '5m', '1h'")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be finite")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


# -- hosts ----------------------------------------------------------------------------------------


# TypedDicts rather than models: an agent's push is validated about twice as fast this way, and names,
# labels and values are checked again (with their index in the batch) by the series store.
class MetricSampleIn(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    name: Annotated[str, Field(description="Dotted metric name, e.g. host.cpu.percent")]
    labels: NotRequired[dict[str, str]]
    value: Annotated[float, Field(allow_inf_nan=False)]


class MetricsPush(TypedDict):
    """What an agent's collector sends each interval."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    ts: Annotated[float, Field(gt=0, allow_inf_nan=False, description="Unix time of the samples, seconds")]
    samples: Annotated[list[MetricSampleIn], Field(max_length=MAX_PUSH_SAMPLES)]
    dropped: NotRequired[
        Annotated[int, Field(ge=0, description="Samples the agent dropped since its last push (outbox full)")]
    ]


METRICS_PUSH = TypeAdapter(MetricsPush)
_PUSH_KEYS = frozenset(MetricsPush.__annotations__)
_SAMPLE_KEYS = frozenset(MetricSampleIn.__annotations__)


def parse_metrics_push(body: bytes) -> MetricsPush:
    """A push parsed by orjson when it has the expected shape (five times faster than full validation);
    anything else goes through pydantic, which raises ValidationError naming the field. The values
    themselves (numbers, names, labels) are checked, with their index, by the series store."""
    try:
        push = orjson.loads(body)
    except orjson.JSONDecodeError:
        return METRICS_PUSH.validate_json(body)
    return push if _has_push_shape(push) else METRICS_PUSH.validate_python(push)


def _has_push_shape(push: object) -> bool:
    if type(push) is not dict or not push.keys() <= _PUSH_KEYS:
        return False
    ts, samples, dropped = push.get("ts"), push.get("samples"), push.get("dropped", 0)
    if type(ts) not in (int, float) or not 0 < ts < math.inf or type(dropped) is not int or dropped < 0:
        return False
    if type(samples) is not list or len(samples) > MAX_PUSH_SAMPLES:
        return False
    keys, no_labels = _SAMPLE_KEYS, {}
    return all(
        type(s) is dict and s.keys() <= keys and "name" in s and "value" in s
        and type(s.get("labels", no_labels)) is dict
        for s in samples
    )


class MetricsAccepted(BaseModel):
    host: str
    accepted: int


class MetricValue(BaseModel):
    name: str
    labels: dict[str, str]
    ts: dt.datetime
    value: float


class HostStatusChange(BaseModel):
    ts: dt.datetime
    from_status: str
    to_status: str


class HostPublic(BaseModel):
    name: str
    agent_id: int
    status: str
    status_since: dt.datetime
    last_seen: dt.datetime | None
    last_metrics_at: dt.datetime | None
    facts: dict[str, Any] = Field(description="A summary of the agent's facts")
    labels: list[str]
    cpu_percent: float | None
    memory_percent: float | None
    disk_percent: float | None = Field(description="The fullest mount's disk use")
    samples_received: int
    samples_dropped_by_agent: int


class HostDetail(HostPublic):
    all_facts: dict[str, Any]
    history: list[HostStatusChange]
    metrics: list[MetricValue]


# -- checks ---------------------------------------------------------------------------------------


class CheckCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    type: str = Field(description="http, tcp, icmp, dns or tls")
    target: str = Field(min_length=1, max_length=2048)
    interval: Duration = Field(60.0, ge=1.0, le=86400.0, description="Seconds, or '10s', '5m', '1h'")
    timeout: Duration | None = Field(None, gt=0, le=300.0, description="Default: the interval, at most 10 s")
    retries: int = Field(0, ge=0, le=20, description="Failures beyond the first before the check is DOWN")
    params: dict[str, Any] = Field(default_factory=dict, description="Type-specific settings")
    enabled: bool = True


class CheckUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str | None = None
    target: str | None = Field(None, min_length=1, max_length=2048)
    interval: Duration | None = Field(None, ge=1.0, le=86400.0)
    timeout: Duration | None = Field(None, gt=0, le=300.0)
    retries: int | None = Field(None, ge=0, le=20)
    params: dict[str, Any] | None = None
    enabled: bool | None = None


class StateChangePublic(BaseModel):
    ts: dt.datetime
    from_state: str
    to_state: str
    error: str | None


class CheckPublic(BaseModel):
    name: str
    type: str
    target: str
    interval_s: float
    timeout_s: float
    retries: int
    params: dict[str, Any]
    enabled: bool
    state: str
    state_since: dt.datetime
    consecutive_failures: int
    last_run_at: dt.datetime | None
    last_latency_ms: float | None
    last_error: str | None
    uptime_24h: float | None = Field(description="Percent of the known time UP in the last 24 h")
    created_at: dt.datetime
    updated_at: dt.datetime


class CheckDetail(CheckPublic):
    uptime_7d: float | None
    uptime_30d: float | None
    history: list[StateChangePublic]


class CheckResultPublic(BaseModel):
    ts: dt.datetime
    ok: bool
    latency_ms: float | None
    error: str | None
    detail: dict[str, Any]


class CheckRunResult(BaseModel):
    name: str
    ok: bool
    latency_ms: float | None
    error: str | None
    detail: dict[str, Any]
    state: str


class RunCheckParams(BaseModel):
    """Input of the `monitor.run_check` action."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="The check to run now")
