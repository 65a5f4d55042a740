"""Chart helpers for dashboard pages: range plans, ECharts options, inline SVG sparklines, number formats."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RANGES: dict[str, float] = {"15m": 900.0, "1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0}


@dataclass(frozen=True)
class RangePlan:
    """How to read a span: the step the series store buckets by (None: every raw sample).

    The store's `auto` resolution then reads raw samples up to 6 h, 1-minute rollups up to 7 days and
    1-hour rollups beyond, never coarser than the step.
    """

    span_s: float
    step_s: float | None
    live: bool


def parse_local(text: str) -> float | None:
    """A `datetime-local` input's value (the browser's local time, taken as the server's) as epoch seconds."""
    try:
        return dt.datetime.fromisoformat(text).astimezone().timestamp()
    except ValueError:
        return None


def plan_for(span_s: float) -> RangePlan:
    """About 300 points whatever the span, on steps that rollup buckets divide."""
    if span_s <= 900:
        return RangePlan(span_s, None, True)
    if span_s <= 3600:
        return RangePlan(span_s, 60.0, True)
    if span_s <= 7 * 86400:
        step = max(60.0, math.ceil(span_s / 300 / 60) * 60)
        return RangePlan(span_s, step, False)
    return RangePlan(span_s, max(3600.0, math.ceil(span_s / 300 / 3600) * 3600), False)


def line_options(series: Sequence[tuple[str, list[tuple[float, float]]]], unit: str,
                 y_max: float | None = None, window: tuple[float, float] | None = None) -> dict:
    """A time-axis line chart; points are (epoch seconds, value). `window` (start, end) fixes the time
    axis to the range asked for, so a chart with few points does not stretch over days."""
    y_axis: dict = {"type": "value", "name": unit, "min": 0}
    if y_max is not None:
        y_axis["max"] = y_max
    x_axis: dict = {"type": "time", "axisLabel": {"hideOverlap": True}}
    if window is not None:
        x_axis["min"], x_axis["max"] = round(window[0] * 1000), round(window[1] * 1000)
    return {
        "animation": False,
        "grid": {"left": 56, "right": 16, "top": 48, "bottom": 28},
        "tooltip": {"trigger": "axis"},
        "legend": {"type": "scroll", "top": 0},
        "xAxis": x_axis,
        "yAxis": y_axis,
        "series": [
            {
                "type": "line",
                "name": name,
                "showSymbol": False,
                "sampling": "lttb",
                "data": [[round(ts * 1000), round(v, 3)] for ts, v in points],
            }
            for name, points in series
        ],
    }


def sparkline(values: Sequence[float], y_max: float | None = None, width: int = 120, height: int = 26) -> str:
    """An inline SVG polyline: cheap enough for hundreds of host cards updating live."""
    if len(values) < 2:
        return f'<svg width="{width}" height="{height}" role="img" aria-label="no data yet"></svg>'
    top = y_max if y_max is not None else max(max(values), 1e-9)
    dx = width / (len(values) - 1)
    pts = " ".join(
        f"{i * dx:.1f},{height - 1 - (min(max(v, 0.0), top) / top) * (height - 2):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<polyline points="{pts}" fill="none" stroke="currentColor" stroke-width="1.5"/></svg>'
    )


def merge(points_lists: Iterable[list[tuple[float, float]]], how: str) -> list[tuple[float, float]]:
    """Combine several series on their timestamps: `sum` (network over interfaces) or `max` (fullest disk)."""
    acc: dict[float, float] = {}
    for points in points_lists:
        for ts, v in points:
            if ts not in acc:
                acc[ts] = v
            elif how == "sum":
                acc[ts] += v
            else:
                acc[ts] = max(acc[ts], v)
    return sorted(acc.items())


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} %"


def rate(value: float | None) -> str:
    """Bytes per second, humanly."""
    if value is None:
        return "-"
    for unit in ("B/s", "KB/s", "MB/s", "GB/s"):
        if abs(value) < 1024 or unit == "GB/s":
            return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB/s"
