"""Rollups (raw -> 1 minute -> 1 hour, behind a watermark) and retention of the series store."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, insert, select, text, update

from controltower.core.series_models import RollupState, Series
from controltower.core.series_write import ROLLUP_LOCK_ID

GRACE_S = 5.0  # a minute is rolled up once it ended this long ago
_WINDOW_S = 86400.0  # recompute at most a day per statement, to bound temporary space
_RETENTION_CHUNK = 500  # series per retention transaction

# resolution -> (table, bucket size, source table, source columns giving count, sum, min, max, last)
_PLANS = {
    "1m": ("samples_1m", 60, "samples", ("count(*)", "sum(value)", "min(value)", "max(value)"), "value"),
    "1h": ("samples_1h", 3600, "samples_1m", ("sum(count)", "sum(sum)", "min(min)", "max(max)"), "last"),
}


def _floor(ts: float, size: int) -> float:
    return float(ts - ts % size)


def _bucket_sql(dialect: str, size: int) -> str:
    # Timestamps are validated non-negative, so integer truncation is a floor on SQLite.
    if dialect == "sqlite":
        return f"(CAST(ts AS INTEGER) / {size}) * {size}"
    return f"floor(ts / {size}) * {size}"


def _aggregate(conn: Connection, resolution: str, a: float, b: float, ids: tuple[int, int] | None = None) -> int:
    """Recompute the buckets of `resolution` in [a, b) that have finer data, replacing what they held; with
    `ids` (first, last), only those of the series in that id range.

    An upsert, not delete-and-insert: a bucket whose finer data retention already removed is kept.
    (`WHERE true` keeps SQLite from reading ON CONFLICT as part of the join.)"""
    table, size, source, (n, s, lo, hi), last_col = _PLANS[resolution]
    # Only series written since `a` can have rows in [a, b): one primary-key range scan per such series.
    active = "series_id IN (SELECT series_id FROM series_latest WHERE ts >= :a"
    active += " AND series_id BETWEEN :first AND :last)" if ids is not None else ")"
    bucket = _bucket_sql(conn.dialect.name, size)
    first, last = ids if ids is not None else (None, None)
    result = conn.execute(
        text(
            f"INSERT INTO {table} (series_id, ts, count, sum, min, max, last) "
            f"SELECT g.series_id, g.bucket, g.n, g.s, g.lo, g.hi, x.{last_col} FROM ("
            f"  SELECT series_id, {bucket} AS bucket, {n} AS n, {s} AS s, {lo} AS lo, {hi} AS hi,"
            f"         max(ts) AS newest"
            f"  FROM {source} WHERE {active} AND ts >= :a AND ts < :b"
            f"  GROUP BY series_id, {bucket}"
            f") g JOIN {source} x ON x.series_id = g.series_id AND x.ts = g.newest WHERE true "
            "ON CONFLICT (series_id, ts) DO UPDATE SET count = excluded.count, sum = excluded.sum, "
            "min = excluded.min, max = excluded.max, last = excluded.last"
        ),
        {"a": a, "b": b, "first": first, "last": last},
    )
    return max(result.rowcount or 0, 0)


def _earliest(conn: Connection, source: str) -> float | None:
    """Oldest timestamp in `source`, found per series through the primary key (no full scan)."""
    return conn.execute(
        text(f"SELECT min((SELECT min(ts) FROM {source} s WHERE s.series_id = series.id)) FROM series")
    ).scalar()


class Plan(NamedTuple):
    """What one resolution's rollup recomputes: [begin, end)."""

    resolution: str
    begin: float
    end: float

    def windows(self) -> list[tuple[float, float]]:
        """[begin, end) in steps of at most a day, to bound temporary space per statement."""
        out, a = [], self.begin
        while a < self.end:
            out.append((a, min(a + _WINDOW_S, self.end)))
            a = out[-1][1]
        return out


def plan(conn: Connection, resolution: str, start: float | None, end: float) -> Plan:
    """From the watermark (or `start`, if lower; or the oldest data, with no watermark yet) to `end`."""
    state = RollupState.__table__
    mark = conn.execute(select(state.c.watermark).where(state.c.resolution == resolution)).scalar()
    size = _PLANS[resolution][1]
    begin = mark
    if begin is None:
        earliest = _earliest(conn, _PLANS[resolution][2])
        begin = _floor(earliest, size) if earliest is not None else end
    if start is not None:
        begin = min(begin, _floor(start, size))
    return Plan(resolution, begin, end)


def aggregate(conn: Connection, job: Plan, ids: tuple[int, int] | None = None) -> int:
    """Recompute what `job` covers, for every series or those in the `ids` range; rows written."""
    return sum(_aggregate(conn, job.resolution, a, b, ids) for a, b in job.windows())


def finish(conn: Connection, job: Plan, written_since: float | None = None) -> float | None:
    """Advance the watermark to the job's end, or only to the bucket of `written_since` (the oldest sample
    written while the job ran in steps: what it may have missed). Returns where recomputation began."""
    state = RollupState.__table__
    new_mark = max(job.begin, job.end)
    if written_since is not None and written_since < new_mark:
        new_mark = _floor(written_since, _PLANS[job.resolution][1])
    current = conn.execute(select(state.c.watermark).where(state.c.resolution == job.resolution)).scalar()
    if current is not None and current < job.begin:  # a late write moved it back meanwhile: keep that
        new_mark = min(new_mark, current)
    if current is None:
        conn.execute(insert(state).values(resolution=job.resolution, watermark=new_mark))
    elif new_mark != current:
        conn.execute(update(state).where(state.c.resolution == job.resolution).values(watermark=new_mark))
    return job.begin if job.begin < job.end else None


def minutes_end(now: float) -> float:
    return _floor(now - GRACE_S, 60)


def rollup_hours(conn: Connection, redone_from: float | None, fallback_end: float) -> int:
    """Hours from minutes, up to the last hour the minutes' watermark closes."""
    # Hours are built from minutes, so recomputed minutes make their hours due again.
    mark_1m = conn.execute(select(RollupState.watermark).where(RollupState.resolution == "1m")).scalar()
    hours = plan(conn, "1h", redone_from, _floor(mark_1m if mark_1m is not None else fallback_end, 3600))
    written = aggregate(conn, hours)
    finish(conn, hours)
    return written


def rollup(conn: Connection, now: float) -> dict[str, int]:
    """Roll closed minutes up from raw and closed hours up from minutes, in one transaction; safe to run
    again at any time."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ROLLUP_LOCK_ID})")
    end = minutes_end(now)
    minutes = plan(conn, "1m", None, end)
    written = aggregate(conn, minutes)
    redone_from = finish(conn, minutes)
    return {"1m": written, "1h": rollup_hours(conn, redone_from, end)}


def active_series_ids(conn: Connection, since: float) -> list[int]:
    """Series written at or after `since`, in id order."""
    return list(conn.execute(
        text("SELECT series_id FROM series_latest WHERE ts >= :a ORDER BY series_id"), {"a": since}
    ).scalars())


def series_ids(conn: Connection) -> list[int]:
    return list(conn.execute(select(Series.id).order_by(Series.id)).scalars())


def delete_older(conn: Connection, table: str, ids: list[int], cutoff: float) -> int:
    """Delete rows of `table` older than `cutoff` for these series, one primary-key range per series."""
    ph = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = f"DELETE FROM {table} WHERE series_id = {ph} AND ts < {ph}"
    deleted = 0
    for sid in ids:
        deleted += max(conn.exec_driver_sql(sql, (sid, cutoff)).rowcount, 0)
    return deleted


def retention_chunks(ids: list[int]) -> list[list[int]]:
    return [ids[n : n + _RETENTION_CHUNK] for n in range(0, len(ids), _RETENTION_CHUNK)]

