"""The read path of the series store: pick a resolution, stitch rollups with raw data, bucket by step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

from sqlalchemy import Connection, Table, select

from controltower.core.series_models import Rollup1h, Rollup1m, RollupState, SampleRow, Series
from controltower.core.series_write import SeriesError

Agg = Literal["avg", "min", "max", "last", "sum", "count"]
Resolution = Literal["auto", "raw", "1m", "1h"]
AGGS: tuple[str, ...] = ("avg", "min", "max", "last", "sum", "count")
RESOLUTIONS: tuple[str, ...] = ("auto", "raw", "1m", "1h")

RAW_MAX_SPAN_S = 6 * 3600  # auto: raw up to 6 hours,
MINUTE_MAX_SPAN_S = 7 * 86400  # 1-minute rollups up to 7 days, 1-hour rollups beyond
MAX_BUCKETS = 100_000
_LEVELS: tuple[tuple[str, Table | None, float], ...] = (
    ("raw", None, 0.0),
    ("1m", Rollup1m.__table__, 60.0),  # type: ignore[arg-type]
    ("1h", Rollup1h.__table__, 3600.0),  # type: ignore[arg-type]
)
_IN_CHUNK = 500


class SeriesResult(NamedTuple):
    name: str
    labels: dict[str, str]
    points: list[tuple[float, float]]


# (ts, count, sum, min, max, last): a raw sample is (ts, 1, v, v, v, v).
_Partial = tuple[float, float, float, float, float, float]


def labels_match(labels: dict[str, str], wanted: dict[str, str] | None) -> bool:
    """Exact match on every wanted key; other labels are free."""
    if not wanted:
        return True
    return all(labels.get(k) == v for k, v in wanted.items())


def auto_level(start: float, end: float, step: float | None = None) -> int:
    """0 raw, 1 minutes, 2 hours: by the span, but never coarser than `step` or misaligned with it."""
    span = end - start
    level = 0 if span <= RAW_MAX_SPAN_S else 1 if span <= MINUTE_MAX_SPAN_S else 2
    if step is not None:
        while level > 0 and (_LEVELS[level][2] > step or step % _LEVELS[level][2]):
            level -= 1
    return level


def watermarks(conn: Connection) -> dict[str, float]:
    return {r: w for r, w in conn.execute(select(RollupState.resolution, RollupState.watermark))}


def _segments(level: int, a: float, b: float, marks: dict[str, float]) -> list[tuple[int, float, float]]:
    """Cover [a, b) with whole rollup buckets below the watermark, and finer data for the rest."""
    if a >= b:
        return []
    if level == 0:
        return [(0, a, b)]
    name, _table, size = _LEVELS[level]
    mark = marks.get(name)
    lo = math.ceil(a / size) * size
    hi = math.floor(b / size) * size
    if mark is not None:
        hi = min(hi, mark)
    if mark is None or lo >= hi:
        return _segments(level - 1, a, b, marks)
    return [*_segments(level - 1, a, lo, marks), (level, lo, hi), *_segments(level - 1, hi, b, marks)]


def _fetch(
    conn: Connection, level: int, ids: Sequence[int], a: float, b: float, out: dict[int, list[_Partial]]
) -> None:
    table = _LEVELS[level][1]
    for n in range(0, len(ids), _IN_CHUNK):
        chunk = ids[n : n + _IN_CHUNK]
        if table is None:
            t = SampleRow.__table__
            stmt = (
                select(t.c.series_id, t.c.ts, t.c.value)
                .where(t.c.series_id.in_(chunk), t.c.ts >= a, t.c.ts < b)
                .order_by(t.c.series_id, t.c.ts)
            )
            for sid, ts, v in conn.execute(stmt):
                out[sid].append((ts, 1.0, v, v, v, v))
        else:
            c = table.c
            stmt = (
                select(c.series_id, c.ts, c["count"], c["sum"], c["min"], c["max"], c["last"])
                .where(c.series_id.in_(chunk), c.ts >= a, c.ts < b)
                .order_by(c.series_id, c.ts)
            )
            for sid, ts, cnt, sm, mn, mx, last in conn.execute(stmt):
                out[sid].append((ts, float(cnt), sm, mn, mx, last))


def _value(agg: str, count: float, total: float, lo: float, hi: float, last: float) -> float:
    if agg == "avg":
        return total / count
    if agg == "min":
        return lo
    if agg == "max":
        return hi
    if agg == "last":
        return last
    if agg == "sum":
        return total
    return count


def _points(partials: list[_Partial], agg: str, step: float | None) -> list[tuple[float, float]]:
    if step is None:
        return [(p[0], _value(agg, *p[1:])) for p in partials]
    points: list[tuple[float, float]] = []
    bucket: float | None = None
    cnt = total = lo = hi = last = 0.0
    for ts, c, s, mn, mx, la in partials:  # time-ordered, so the newest partial's `last` wins
        b = math.floor(ts / step) * step
        if b != bucket:
            if bucket is not None:
                points.append((bucket, _value(agg, cnt, total, lo, hi, last)))
            bucket, cnt, total, lo, hi, last = b, c, s, mn, mx, la
        else:
            cnt += c
            total += s
            lo = min(lo, mn)
            hi = max(hi, mx)
            last = la
    if bucket is not None:
        points.append((bucket, _value(agg, cnt, total, lo, hi, last)))
    return points


def run_query(
    conn: Connection,
    name: str,
    labels: dict[str, str] | None,
    start: float,
    end: float,
    step: float | None,
    agg: str,
    resolution: str,
) -> list[SeriesResult]:
    if agg not in AGGS:
        raise SeriesError("agg", f"must be one of {', '.join(AGGS)}")
    if resolution not in RESOLUTIONS:
        raise SeriesError("resolution", f"must be one of {', '.join(RESOLUTIONS)}")
    for field, v in (("start", start), ("end", end)):
        if not math.isfinite(v):
            raise SeriesError(field, "must be a finite number of epoch seconds")
    if end < start:
        raise SeriesError("end", "must not be before start")
    if step is not None:
        if not (math.isfinite(step) and step > 0):
            raise SeriesError("step", "must be a positive number of seconds")
        if (end - start) / step > MAX_BUCKETS:
            raise SeriesError("step", f"too small: more than {MAX_BUCKETS} buckets in the range")
    rows = conn.execute(
        select(Series.id, Series.name, Series.labels).where(Series.name == name).order_by(Series.key)
    )
    matched = [(sid, n, lab or {}) for sid, n, lab in rows if labels_match(lab or {}, labels)]
    if not matched:
        return []
    ids = [sid for sid, _n, _l in matched]
    b = math.nextafter(end, math.inf)  # inclusive end as a half-open range
    if resolution == "auto":
        segments = _segments(auto_level(start, end, step), start, b, watermarks(conn))
    else:
        segments = [(("raw", "1m", "1h").index(resolution), start, b)]
    partials: dict[int, list[_Partial]] = {sid: [] for sid in ids}
    for level, a, z in segments:
        _fetch(conn, level, ids, a, z, partials)
    return [SeriesResult(n, lab, _points(partials[sid], agg, step)) for sid, n, lab in matched]
