"""Time series from any source (host metrics, device telemetry): writes, range queries, rollups, retention.

Storage: `series` (one row per name + label set; its newest sample in `series_latest`), raw `samples` keyed by
(series_id, ts) — a second write of the same (series, ts) overwrites the value, so a resent batch is
harmless — and rollup tables `samples_1m` / `samples_1h` built behind a watermark. A late sample (older
than the watermark) moves the watermark back, so the next rollup recomputes the buckets it touched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower.config import Settings
from controltower.core.db import Database
from controltower.core.series_models import Rollup1h, Rollup1m, RollupState, SampleRow, Series, SeriesLatest
from controltower.core.series_query import (
    AGGS,
    RESOLUTIONS,
    Agg,
    Resolution,
    SeriesResult,
    labels_match,
    run_query,
)
from controltower.core.series_rollup import (
    active_series_ids,
    aggregate,
    delete_older,
    finish,
    minutes_end,
    plan,
    retention_chunks,
    rollup,
    rollup_hours,
    series_ids,
)
from controltower.core.series_shape import BatchShape, prepare_shaped, shape_of
from controltower.core.series_write import (
    NAME_PATTERN,
    PreparedSamples,
    RawSample,
    Sample,
    SeriesError,
    SeriesWriter,
    series_key,
)

if TYPE_CHECKING:
    from controltower.core.scheduler import Scheduler

__all__ = [
    "AGGS",
    "NAME_PATTERN",
    "RESOLUTIONS",
    "Agg",
    "BatchShape",
    "LatestSample",
    "PreparedSamples",
    "RawSample",
    "Resolution",
    "Rollup1h",
    "Rollup1m",
    "RollupState",
    "Sample",
    "SampleRow",
    "Series",
    "SeriesError",
    "SeriesInfo",
    "SeriesLatest",
    "SeriesResult",
    "SeriesStore",
    "series_key",
]

DAY_S = 86400.0
ROLLUP_STEP_SERIES = 2000  # series per rollup transaction on SQLite


def _floor(ts: float, size: int) -> float:
    return ts - ts % size


class LatestSample(NamedTuple):
    name: str
    labels: dict[str, str]
    ts: float
    value: float


class SeriesInfo(NamedTuple):
    name: str
    labels: dict[str, str]
    key: str
    last_ts: float | None
    last_value: float | None


class SeriesStore:
    """The one time-series store every subsystem writes to and reads from."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._writer = SeriesWriter()

    def prepare(self, samples: Iterable[Sample | RawSample]) -> PreparedSamples:
        """Validate (SeriesError names the bad sample) and ready samples for `store`, outside any transaction."""
        return self._writer.prepare(samples, for_sqlite=self.db.dialect == "sqlite")

    def shape(self, prepared: PreparedSamples) -> BatchShape | None:
        """The shape of a prepared batch whose samples share one time, once all its series exist (else None):
        `prepare_shaped` then readies the next batch of the same series from its values alone."""
        return shape_of(self._writer, prepared, self._writer.committed_ids(prepared.keys))

    def prepare_shaped(self, shape: BatchShape, ts: float, values: list[Any]) -> PreparedSamples | None:
        """`prepare` for samples of `shape`'s series, in its order, at `ts`; None when a value or `ts` needs the
        full validation (which names the bad sample)."""
        return prepare_shaped(self._writer, shape, ts, values, for_sqlite=self.db.dialect == "sqlite")

    def store(self, session: Session, prepared: PreparedSamples, defer: bool = False) -> int:
        """Insert prepared samples in `session`'s transaction (the caller commits); how many.

        `defer`: on SQLite the rows may wait for the commit, to go in with the transaction's other deferred
        samples in one statement (group commit); they are not visible to queries in the transaction before."""
        return self._writer.store(session, prepared, defer) if prepared.slots else 0

    def write(self, samples: Iterable[Sample | RawSample], session: Session | None = None) -> int:
        """Store samples; all are validated before any is written. Returns how many were stored.

        With `session`, the write joins its transaction (the caller commits); otherwise it commits its own.
        Raises SeriesError (a ValueError) whose `field` names the bad sample, e.g. `samples.3.value`.
        """
        batch = self.prepare(samples)
        if not batch.slots:
            return 0
        if session is not None:
            return self.store(session, batch)
        with self.db.session() as own:
            return self.store(own, batch)

    def query(
        self,
        name: str,
        labels: dict[str, str] | None,
        start: float,
        end: float,
        step: float | None = None,
        agg: Agg = "avg",
        resolution: Resolution = "auto",
    ) -> list[SeriesResult]:
        """Points of every series called `name` whose labels include `labels`, for start <= ts <= end.

        `auto` reads raw samples for spans up to 6 h, 1-minute rollups up to 7 days, else 1-hour rollups
        (finer when `step` is smaller than, or not a multiple of, the rollup bucket), and fills what a
        rollup does not cover yet from the finer data. Without `step`, a rollup bucket is
        one point at its start (valued by `agg`) and a raw sample is itself (`count` gives 1); with `step`,
        points are aggregated into step-aligned buckets (epoch multiples of `step`).
        """
        with self.db.read_session() as session:  # never queues behind (or blocks) writers
            return run_query(session.connection(), name, labels, start, end, step, agg, resolution)

    def latest(
        self, name: str | None = None, labels: dict[str, str] | None = None, name_prefix: str | None = None
    ) -> list[LatestSample]:
        """The newest sample of each matching series, ordered by series key."""
        stmt = select(Series.name, Series.labels, SeriesLatest.ts, SeriesLatest.value).join(
            SeriesLatest, SeriesLatest.series_id == Series.id
        )
        stmt = self._filter(stmt, name, name_prefix).order_by(Series.key)
        with self.db.read_session() as session:
            rows = session.execute(stmt).all()
        return [
            LatestSample(n, lab or {}, ts, v) for n, lab, ts, v in rows if labels_match(lab or {}, labels)
        ]

    def list_series(
        self, name_prefix: str | None = None, labels: dict[str, str] | None = None, name: str | None = None
    ) -> list[SeriesInfo]:
        stmt = select(Series.name, Series.labels, Series.key, SeriesLatest.ts, SeriesLatest.value).outerjoin(
            SeriesLatest, SeriesLatest.series_id == Series.id
        )
        stmt = self._filter(stmt, name, name_prefix).order_by(Series.key)
        with self.db.read_session() as session:
            rows = session.execute(stmt).all()
        return [
            SeriesInfo(n, lab or {}, k, ts, v) for n, lab, k, ts, v in rows if labels_match(lab or {}, labels)
        ]

    @staticmethod
    def _filter(stmt: Any, name: str | None, name_prefix: str | None) -> Any:
        if name is not None:
            stmt = stmt.where(Series.name == name)
        if name_prefix:
            stmt = stmt.where(Series.name.startswith(name_prefix, autoescape=True))
        return stmt

    def rollup(self, now: float | None = None) -> dict[str, int]:
        """Aggregate closed minutes (from raw) and closed hours (from minutes) since the watermarks.

        Idempotent: buckets are recomputed whole, so running it again changes nothing. Returns rows written.
        """
        now = time.time() if now is None else now
        if self.db.dialect != "sqlite":  # writers wait on the rollup's advisory lock: one transaction
            with self.db.session() as session:
                return rollup(session.connection(), now)
        return self._rollup_in_steps(now)

    def _rollup_in_steps(self, now: float) -> dict[str, int]:
        """SQLite's rollup as short write transactions of ROLLUP_STEP_SERIES series each, so a heavy ingest
        waits for one step at a time, not for the whole minute of samples being aggregated.

        Writes between steps may land in buckets already recomputed: the writer notes the oldest sample
        stored from the first step on (every write transaction after it: SQLite has one writer at a time),
        and the watermark stops at that sample's minute, so the next rollup recomputes from there."""
        with self.db.session() as session:
            conn = session.connection()
            self._writer.oldest_written = math.inf
            minutes = plan(conn, "1m", None, minutes_end(now))
            ids = active_series_ids(conn, minutes.begin) if minutes.begin < minutes.end else []
        written = 0
        for start in range(0, len(ids), ROLLUP_STEP_SERIES):
            step = ids[start : start + ROLLUP_STEP_SERIES]
            with self.db.session() as session:
                written += aggregate(session.connection(), minutes, (step[0], step[-1]))
        with self.db.session() as session:
            conn = session.connection()
            oldest = self._writer.oldest_written
            redone_from = finish(conn, minutes, oldest if oldest < math.inf else None)
            return {"1m": written, "1h": rollup_hours(conn, redone_from, minutes.end)}

    def apply_retention(self, now: float | None = None) -> dict[str, int]:
        """Delete raw samples and rollups older than their retention settings; returns rows deleted per table.

        Series rows are kept (they are small and hold the newest value).
        """
        now = time.time() if now is None else now
        s = self.settings
        # Cutoffs fall on bucket boundaries of the next coarser table, so a bucket recomputed after
        # retention (for a late sample) has either all of its finer data or none, never a part.
        cutoffs = {
            "raw": ("samples", _floor(now - s.raw_retention_days * DAY_S, 60)),
            "1m": ("samples_1m", _floor(now - s.minute_retention_days * DAY_S, 3600)),
            "1h": ("samples_1h", now - s.hour_retention_days * DAY_S),
        }
        deleted = dict.fromkeys(cutoffs, 0)
        with self.db.session() as session:
            ids = series_ids(session.connection())
        for chunk in retention_chunks(ids):  # short transactions: writers wait for one chunk at most
            with self.db.session() as session:
                conn = session.connection()
                for res, (table, cutoff) in cutoffs.items():
                    deleted[res] += delete_older(conn, table, chunk, cutoff)
        return deleted

    def register_jobs(self, scheduler: Scheduler) -> None:
        """Roll up every 30 s and apply retention every hour."""
        scheduler.every("series.rollup", 30.0, self.rollup, run_at_start=True)  # catch up after a restart
        scheduler.every("series.retention", 3600.0, self.apply_retention)
