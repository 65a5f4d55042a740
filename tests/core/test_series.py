"""The series store on SQLite and PostgreSQL: writes, queries, label filters, buckets, rollups, retention, HTTP."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, func, select, text
from sqlalchemy.orm import Session

from controltower.config import Settings
from controltower.core import series as series_module
from controltower.core.db import Database
from controltower.core.series import (
    Rollup1h,
    Rollup1m,
    RollupState,
    Sample,
    SampleRow,
    Series,
    SeriesError,
    SeriesStore,
    series_key,
)
from tests.support import RunningServer

HOUR = 3600.0
DAY = 86400.0
T0 = 1_699_999_200.0  # an hour boundary (2023-11-14T22:00:00Z)


@pytest.fixture
def store(db: Database, tmp_path: Path) -> SeriesStore:
    settings = Settings(data_dir=tmp_path, raw_retention_days=7, minute_retention_days=30, hour_retention_days=400)
    return SeriesStore(db, settings)


def count(db: Database, model: type) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def rollup_rows(db: Database, model: type) -> list[tuple]:
    with db.session() as s:
        return [
            tuple(r)
            for r in s.execute(
                select(Series.key, model.ts, model.count, model.sum, model.min, model.max, model.last)
                .join(Series, Series.id == model.series_id)
                .order_by(Series.key, model.ts)
            )
        ]


# -- write and query


def test_write_then_query_raw_round_trip(store: SeriesStore):
    samples = [Sample("host.cpu", {"host": "a"}, T0 + i * 10, float(i)) for i in range(30)]
    assert store.write(samples) == 30

    [result] = store.query("host.cpu", {"host": "a"}, T0, T0 + 290, resolution="raw")
    assert result.name == "host.cpu"
    assert result.labels == {"host": "a"}
    assert result.points == [(T0 + i * 10, float(i)) for i in range(30)]

    # start and end are inclusive
    [inner] = store.query("host.cpu", {"host": "a"}, T0 + 10, T0 + 30, resolution="raw")
    assert inner.points == [(T0 + 10, 1.0), (T0 + 20, 2.0), (T0 + 30, 3.0)]
    assert store.query("host.cpu", {"host": "zzz"}, T0, T0 + 290) == []
    assert store.query("no.such.metric", None, T0, T0 + 290) == []


def test_same_series_and_timestamp_overwrites(store: SeriesStore, db: Database):
    store.write([Sample("temp", {"room": "1"}, T0, 20.0)])
    store.write([Sample("temp", {"room": "1"}, T0, 21.5), Sample("temp", {"room": "1"}, T0 + 1, 22.0)])
    [result] = store.query("temp", None, T0, T0 + 10, resolution="raw")
    assert result.points == [(T0, 21.5), (T0 + 1, 22.0)]
    assert count(db, SampleRow) == 2
    assert count(db, Series) == 1


def test_a_batch_between_statement_sizes_stores_exactly_its_samples(store: SeriesStore, db: Database):
    # 23 rows are written by a statement of 26 (the last row repeated): nothing extra may appear, the repeated
    # (series, ts) keeps its last value, and the newest value of each series is right.
    samples = [Sample("temp", {"room": str(i)}, T0, float(i)) for i in range(20)]
    samples += [Sample("temp", {"room": "0"}, T0 + 1, 7.0), Sample("temp", {"room": "0"}, T0 + 2, 8.0),
                Sample("temp", {"room": "0"}, T0 + 2, 9.0)]
    assert store.write(samples) == 23
    assert count(db, SampleRow) == 22
    [room0] = store.query("temp", {"room": "0"}, T0, T0 + 10, resolution="raw")
    assert room0.points == [(T0, 0.0), (T0 + 1, 7.0), (T0 + 2, 9.0)]
    latest = {s.labels["room"]: (s.ts, s.value) for s in store.latest(name_prefix="temp")}
    assert latest == {"0": (T0 + 2, 9.0), **{str(i): (T0, float(i)) for i in range(1, 20)}}


def test_deferred_batches_go_in_together_at_commit_in_order(store: SeriesStore, db: Database):
    store.write([Sample("temp", {"room": "1"}, T0, 1.0), Sample("temp", {"room": "2"}, T0, 1.0)])  # known series
    first = store.prepare([Sample("temp", {"room": "1"}, T0 + 1, 20.0), Sample("temp", {"room": "2"}, T0 + 1, 5.0)])
    second = store.prepare([Sample("temp", {"room": "1"}, T0 + 1, 21.0)])  # same key: the later write wins
    with pytest.raises(RuntimeError), db.session() as session:
        store.store(session, first, defer=True)
        raise RuntimeError("rolled back: nothing deferred may land")
    assert count(db, SampleRow) == 2
    with db.session() as session:
        assert store.store(session, first, defer=True) == 2
        assert store.store(session, second, defer=True) == 1
    points = {tuple(r.labels.items()): r.points for r in store.query("temp", None, T0, T0 + 10, resolution="raw")}
    assert points == {(("room", "1"),): [(T0, 1.0), (T0 + 1, 21.0)], (("room", "2"),): [(T0, 1.0), (T0 + 1, 5.0)]}
    latest = {tuple(s.labels.items()): s.value for s in store.latest("temp")}
    assert latest == {(("room", "1"),): 21.0, (("room", "2"),): 5.0}


def test_label_filter_matches_a_subset_of_labels_exactly(store: SeriesStore):
    store.write(
        [
            Sample("disk.used", {"host": "a", "mount": "/"}, T0, 1.0),
            Sample("disk.used", {"host": "a", "mount": "/data"}, T0, 2.0),
            Sample("disk.used", {"host": "b", "mount": "/"}, T0, 3.0),
            Sample("disk.free", {"host": "a", "mount": "/"}, T0, 4.0),
        ]
    )
    by_host = store.query("disk.used", {"host": "a"}, T0, T0 + 1)
    assert [(r.labels, r.points) for r in by_host] == [
        ({"host": "a", "mount": "/"}, [(T0, 1.0)]),
        ({"host": "a", "mount": "/data"}, [(T0, 2.0)]),
    ]
    both = store.query("disk.used", {"host": "a", "mount": "/"}, T0, T0 + 1)
    assert [r.points for r in both] == [[(T0, 1.0)]]
    assert len(store.query("disk.used", None, T0, T0 + 1)) == 3
    assert len(store.query("disk.used", {}, T0, T0 + 1)) == 3
    assert store.query("disk.used", {"host": "a", "rack": "r1"}, T0, T0 + 1) == []
    assert store.query("disk.used", {"host": "A"}, T0, T0 + 1) == []


def test_step_buckets_with_every_aggregate(store: SeriesStore):
    # bucket [T0, T0+60): 1, 5, 3 ; bucket [T0+60, T0+120): 10, 2
    values = [(0, 1.0), (20, 5.0), (40, 3.0), (60, 10.0), (90, 2.0)]
    store.write([Sample("m", {}, T0 + dt, v) for dt, v in values])

    def buckets(agg: str) -> list[tuple[float, float]]:
        [r] = store.query("m", None, T0, T0 + 119, step=60, agg=agg)  # type: ignore[arg-type]
        return r.points

    assert buckets("avg") == [(T0, 3.0), (T0 + 60, 6.0)]
    assert buckets("min") == [(T0, 1.0), (T0 + 60, 2.0)]
    assert buckets("max") == [(T0, 5.0), (T0 + 60, 10.0)]
    assert buckets("last") == [(T0, 3.0), (T0 + 60, 2.0)]
    assert buckets("sum") == [(T0, 9.0), (T0 + 60, 12.0)]
    assert buckets("count") == [(T0, 3.0), (T0 + 60, 2.0)]
    # buckets are aligned to multiples of the step, not to start
    [r] = store.query("m", None, T0 + 30, T0 + 119, step=60, agg="count")
    assert r.points == [(T0, 1.0), (T0 + 60, 2.0)]


def test_query_rejects_bad_arguments(store: SeriesStore):
    store.write([Sample("m", {}, T0, 1.0)])
    with pytest.raises(SeriesError) as err:
        store.query("m", None, T0 + 10, T0)
    assert err.value.field == "end"
    with pytest.raises(SeriesError) as err:
        store.query("m", None, T0, T0 + 10, step=0)
    assert err.value.field == "step"
    with pytest.raises(SeriesError) as err:
        store.query("m", None, T0, T0 + 10, agg="median")  # type: ignore[arg-type]
    assert err.value.field == "agg"


# -- validation


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Sample("9starts.with.digit", {}, T0, 1.0), "samples.2.name"),
        (Sample("has space", {}, T0, 1.0), "samples.2.name"),
        (Sample("ok", {"bad-key": "x"}, T0, 1.0), "samples.2.labels"),
        (Sample("ok", {"k": 5}, T0, 1.0), "samples.2.labels.k"),  # type: ignore[dict-item]
        (Sample("ok", ["not", "a", "dict"], T0, 1.0), "samples.2.labels"),  # type: ignore[arg-type]
        (Sample("ok", {}, T0, math.nan), "samples.2.value"),
        (Sample("ok", {}, T0, math.inf), "samples.2.value"),
        (Sample("ok", {}, T0, "12"), "samples.2.value"),  # type: ignore[arg-type]
        (Sample("ok", {}, T0, True), "samples.2.value"),  # type: ignore[arg-type]
        (Sample("ok", {}, math.inf, 1.0), "samples.2.ts"),
        (Sample("ok", {}, -5.0, 1.0), "samples.2.ts"),
        (Sample("ok", {}, T0 * 1000, 1.0), "samples.2.ts"),  # milliseconds by mistake
        (("only", "three", "parts"), "samples.2"),
    ],
)
def test_invalid_sample_is_rejected_by_field_and_nothing_is_stored(store: SeriesStore, db: Database, bad, field):
    good = [Sample("ok", {"a": "1"}, T0, 1.0), Sample("other", {}, T0, 2.0)]
    with pytest.raises(SeriesError) as err:
        store.write([*good, bad, Sample("ok", {}, T0 + 1, 3.0)])
    assert err.value.field == field
    assert isinstance(err.value, ValueError)
    assert str(err.value).startswith(field + ": ")
    assert count(db, SampleRow) == 0
    assert count(db, Series) == 0


def test_integer_numbers_are_accepted(store: SeriesStore):
    assert store.write([Sample("m", {}, int(T0), 3)]) == 1  # type: ignore[arg-type]
    [r] = store.query("m", None, T0, T0)
    assert r.points == [(T0, 3.0)]


def test_rolled_back_write_leaves_nothing_and_does_not_poison_the_id_cache(store: SeriesStore, db: Database):
    session = db.sessionmaker()
    store.write([Sample("ghost", {"x": "1"}, T0, 1.0)], session=session)
    session.rollback()
    session.close()
    assert count(db, Series) == 0

    # a different series takes the rolled-back id on SQLite; the ghost must get a fresh one
    store.write([Sample("real", {}, T0, 2.0)])
    store.write([Sample("ghost", {"x": "1"}, T0, 3.0)])
    [ghost] = store.query("ghost", None, T0, T0)
    [real] = store.query("real", None, T0, T0)
    assert ghost.points == [(T0, 3.0)]
    assert real.points == [(T0, 2.0)]


def test_write_joins_the_callers_transaction(store: SeriesStore, db: Database):
    with pytest.raises(RuntimeError), db.session() as session:
        store.write([Sample("m", {}, T0, 1.0)], session=session)
        raise RuntimeError("the caller fails after the write")
    assert count(db, SampleRow) == 0
    with db.session() as session:
        assert store.write([Sample("m", {}, T0, 2.0)], session=session) == 1
    assert store.query("m", None, T0, T0)[0].points == [(T0, 2.0)]


def test_concurrent_writers_creating_the_same_series(store: SeriesStore, db: Database):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            # a separate store per thread: no shared id cache, so every writer races to create the series
            own = SeriesStore(db, store.settings)
            own.write([Sample("race", {"i": str(i)}, T0 + n, float(n)) for i in range(50)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(db, Series) == 50
    assert count(db, SampleRow) == 200
    assert {len(r.points) for r in store.query("race", None, T0, T0 + 3)} == {4}


def test_series_key_is_canonical_and_unambiguous():
    assert series_key("cpu", {}) == "cpu"
    assert series_key("cpu", {"b": "2", "a": "1"}) == 'cpu{a="1",b="2"}'
    assert series_key("m", {"a": '1",b="2'}) != series_key("m", {"a": "1", "b": "2"})


# -- latest and listing


def test_latest_returns_the_newest_sample_of_each_series(store: SeriesStore):
    store.write([Sample("host.cpu", {"host": "a"}, T0 + 20, 5.0), Sample("host.cpu", {"host": "a"}, T0 + 10, 4.0)])
    store.write([Sample("host.cpu", {"host": "b"}, T0, 7.0), Sample("host.mem", {"host": "a"}, T0, 50.0)])
    store.write([Sample("host.cpu", {"host": "a"}, T0 + 5, 1.0)])  # late, older: must not become latest
    store.write([Sample("hostXcpu", {}, T0, 9.0), Sample("app.req", {}, T0, 1.0)])

    assert store.latest(name="host.cpu") == [
        ("host.cpu", {"host": "a"}, T0 + 20, 5.0),
        ("host.cpu", {"host": "b"}, T0, 7.0),
    ]
    assert store.latest(name_prefix="host.", labels={"host": "a"}) == [
        ("host.cpu", {"host": "a"}, T0 + 20, 5.0),
        ("host.mem", {"host": "a"}, T0, 50.0),
    ]
    assert [s.name for s in store.latest(name_prefix="host_")] == []  # '_' is literal, not a wildcard
    assert len(store.latest()) == 5
    store.write([Sample("host.cpu", {"host": "b"}, T0, 8.0)])  # same ts overwrites, latest follows
    assert store.latest(name="host.cpu", labels={"host": "b"})[0].value == 8.0


def test_list_series_by_prefix_and_labels(store: SeriesStore):
    store.write([Sample("iot.temp", {"device": "d1"}, T0, 1.0), Sample("iot.hum", {"device": "d2"}, T0 + 5, 2.0)])
    store.write([Sample("host.cpu", {"host": "a"}, T0, 3.0)])
    listed = store.list_series(name_prefix="iot.")
    assert [(s.name, s.labels, s.key, s.last_ts, s.last_value) for s in listed] == [
        ("iot.hum", {"device": "d2"}, 'iot.hum{device="d2"}', T0 + 5, 2.0),
        ("iot.temp", {"device": "d1"}, 'iot.temp{device="d1"}', T0, 1.0),
    ]
    assert [s.name for s in store.list_series(labels={"device": "d1"})] == ["iot.temp"]
    assert len(store.list_series()) == 3


# -- rollups


def _minute_data() -> list[Sample]:
    """Two series over three minutes with hand-checkable aggregates."""
    a = {"host": "a"}
    b = {"host": "b"}
    return [
        # minute 0 of series a: 4, 8, 6 -> count 3, sum 18, min 4, max 8, last 6
        Sample("cpu", a, T0 + 0, 4.0), Sample("cpu", a, T0 + 30, 8.0), Sample("cpu", a, T0 + 59.5, 6.0),
        # minute 1 of series a: 1 -> all 1
        Sample("cpu", a, T0 + 60, 1.0),
        # minute 2 of series a: 10, 0 -> count 2, sum 10, min 0, max 10, last 0
        Sample("cpu", a, T0 + 125, 10.0), Sample("cpu", a, T0 + 170, 0.0),
        # minute 0 of series b: -2, 2 -> count 2, sum 0, min -2, max 2, last 2
        Sample("cpu", b, T0 + 10, -2.0), Sample("cpu", b, T0 + 20, 2.0),
    ]


def test_rollup_minutes_and_hours_exactly(store: SeriesStore, db: Database):
    store.write(_minute_data())
    store.write([Sample("cpu", {"host": "a"}, T0 + HOUR + 1, 100.0)])  # in the next hour
    written = store.rollup(now=T0 + HOUR + 3 * 60)
    assert written == {"1m": 5, "1h": 2}

    assert rollup_rows(db, Rollup1m) == [
        ('cpu{host="a"}', T0, 3, 18.0, 4.0, 8.0, 6.0),
        ('cpu{host="a"}', T0 + 60, 1, 1.0, 1.0, 1.0, 1.0),
        ('cpu{host="a"}', T0 + 120, 2, 10.0, 0.0, 10.0, 0.0),
        ('cpu{host="a"}', T0 + HOUR, 1, 100.0, 100.0, 100.0, 100.0),
        ('cpu{host="b"}', T0, 2, 0.0, -2.0, 2.0, 2.0),
    ]
    # the first hour is closed; the second is not, so it is not rolled up yet
    assert rollup_rows(db, Rollup1h) == [
        ('cpu{host="a"}', T0, 6, 29.0, 0.0, 10.0, 0.0),
        ('cpu{host="b"}', T0, 2, 0.0, -2.0, 2.0, 2.0),
    ]
    # only closed minutes are rolled up: the minute holding `now` is not
    with db.session() as s:
        marks = dict(s.execute(select(RollupState.resolution, RollupState.watermark)).all())
    assert marks == {"1m": T0 + HOUR + 120, "1h": T0 + HOUR}

    [a_min] = store.query("cpu", {"host": "a"}, T0, T0 + 179, resolution="1m", agg="avg")
    assert a_min.points == [(T0, 6.0), (T0 + 60, 1.0), (T0 + 120, 5.0)]
    [a_last] = store.query("cpu", {"host": "a"}, T0, T0 + 179, resolution="1m", agg="last")
    assert a_last.points == [(T0, 6.0), (T0 + 60, 1.0), (T0 + 120, 0.0)]
    # a step over rollup buckets merges them: avg is weighted by count, not an average of averages
    [merged] = store.query("cpu", {"host": "a"}, T0, T0 + 179, step=180, resolution="1m", agg="avg")
    assert merged.points == [(T0, 29.0 / 6)]
    [hour_max] = store.query("cpu", {"host": "a"}, T0, T0 + 2 * HOUR, resolution="1h", agg="max")
    assert hour_max.points == [(T0, 10.0)]


def test_rollup_is_idempotent(store: SeriesStore, db: Database):
    store.write(_minute_data())
    now = T0 + 2 * HOUR
    first = store.rollup(now=now)
    assert first["1m"] == 4
    minutes, hours = rollup_rows(db, Rollup1m), rollup_rows(db, Rollup1h)
    assert store.rollup(now=now) == {"1m": 0, "1h": 0}
    assert store.rollup(now=now + 30) == {"1m": 0, "1h": 0}
    assert rollup_rows(db, Rollup1m) == minutes
    assert rollup_rows(db, Rollup1h) == hours
    # forgetting the watermarks recomputes from scratch, to the same result
    with db.session() as s:
        s.execute(RollupState.__table__.delete())
    store.rollup(now=now)
    assert rollup_rows(db, Rollup1m) == minutes
    assert rollup_rows(db, Rollup1h) == hours


def test_late_samples_reopen_rolled_up_buckets(store: SeriesStore, db: Database):
    store.write(_minute_data())
    store.rollup(now=T0 + 2 * HOUR)
    # a late sample in minute 1 of series a, and an overwrite of the last sample of minute 0
    store.write([Sample("cpu", {"host": "a"}, T0 + 61, 5.0), Sample("cpu", {"host": "a"}, T0 + 59.5, 12.0)])
    # before the next rollup, queries already see them: the stale buckets are read from raw samples
    [r] = store.query("cpu", {"host": "a"}, T0, T0 + 2 * HOUR, step=60, agg="max")
    assert r.points == [(T0, 12.0), (T0 + 60, 5.0), (T0 + 120, 10.0)]
    [r] = store.query("cpu", {"host": "a"}, T0 - 8 * DAY, T0 + HOUR, step=HOUR, agg="count")
    assert r.points == [(T0, 7.0)]
    store.rollup(now=T0 + 2 * HOUR)
    minutes = rollup_rows(db, Rollup1m)
    assert minutes[0] == ('cpu{host="a"}', T0, 3, 24.0, 4.0, 12.0, 12.0)
    assert minutes[1] == ('cpu{host="a"}', T0 + 60, 2, 6.0, 1.0, 5.0, 5.0)
    assert rollup_rows(db, Rollup1h)[0] == ('cpu{host="a"}', T0, 7, 40.0, 0.0, 12.0, 0.0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL: one transaction, advisory lock
def test_a_write_between_rollup_steps_is_rolled_up_next_time(
    store: SeriesStore, db: Database, monkeypatch: pytest.MonkeyPatch
):
    """SQLite rolls up in steps of series, each its own transaction: a sample written for a series whose
    step is done (here: committed right after that step's aggregation) keeps the watermark before it."""
    store.write([Sample("cpu", {"host": h}, T0 + 10, 1.0) for h in "abc"])
    late = store.prepare([Sample("cpu", {"host": "a"}, T0 + 30, 5.0)])
    monkeypatch.setattr(series_module, "ROLLUP_STEP_SERIES", 1)
    real_aggregate, steps = series_module.aggregate, []

    def aggregate_then_write(conn: Connection, job: Any, ids: tuple[int, int] | None = None) -> int:
        written = real_aggregate(conn, job, ids)
        if not steps:  # series a is done: a late sample for it lands before the next step
            with Session(bind=conn) as session:
                store.store(session, late)
        steps.append(ids)
        return written

    monkeypatch.setattr(series_module, "aggregate", aggregate_then_write)
    assert store.rollup(now=T0 + 2 * HOUR)["1m"] == 3
    assert len(steps) == 3
    with db.session() as s:
        marks = dict(s.execute(select(RollupState.resolution, RollupState.watermark)).all())
    assert marks["1m"] == T0  # held at the late sample's minute, not T0 + 2 h
    monkeypatch.setattr(series_module, "aggregate", real_aggregate)
    store.rollup(now=T0 + 2 * HOUR)
    assert rollup_rows(db, Rollup1m)[0] == ('cpu{host="a"}', T0, 2, 6.0, 1.0, 5.0, 5.0)
    assert rollup_rows(db, Rollup1h)[0] == ('cpu{host="a"}', T0, 2, 6.0, 1.0, 5.0, 5.0)


def test_auto_resolution_picks_raw_minutes_or_hours_and_falls_back_to_raw(store: SeriesStore):
    # one sample every 20 s for two days
    start = T0 - 2 * DAY
    store.write([Sample("m", {}, start + i * 20, float(i % 3)) for i in range(int(2 * DAY / 20))])

    def points(span: float) -> list[tuple[float, float]]:
        [r] = store.query("m", None, T0 - span, T0, agg="count")
        return r.points

    # nothing rolled up yet: every range falls back to raw samples (count 1 per point)
    day = points(DAY)
    assert len(day) == DAY / 20
    assert {v for _, v in day} == {1.0}

    store.rollup(now=T0 + 10)
    # <= 6 h: raw samples
    assert len(points(6 * HOUR)) == 6 * HOUR / 20
    # <= 7 d: one point per minute holding 3 samples
    day = points(DAY)
    assert len(day) == DAY / 60
    assert {v for _, v in day} == {3.0}
    assert all(ts % 60 == 0 for ts, _ in day)
    # > 7 d: one point per hour holding 180 samples
    [r] = store.query("m", None, T0 - 8 * DAY, T0, agg="count")
    assert len(r.points) == 48
    assert {v for _, v in r.points} == {180.0}
    # a step finer than a minute (or not a whole number of minutes) reads raw samples
    [r] = store.query("m", None, T0 - DAY, T0, step=20, agg="count")
    assert len(r.points) == DAY / 20
    [r] = store.query("m", None, T0 - DAY, T0, step=90, agg="count")
    assert {v for _, v in r.points} == {4.0, 5.0}  # 90 s holds 4 or 5 samples 20 s apart
    # with a step of whole hours, a long range still reads hours
    [r] = store.query("m", None, T0 - 8 * DAY, T0, step=2 * HOUR, agg="count")
    assert {v for _, v in r.points} == {360.0}
    # samples newer than the watermark come from raw data, after the rolled-up minutes
    store.write([Sample("m", {}, T0 + 5, 7.0)])
    [r] = store.query("m", None, T0 - DAY, T0 + 10, agg="max")
    assert len(r.points) == DAY / 60 + 1
    assert r.points[-1] == (T0 + 5, 7.0)
    # a range that is not minute-aligned takes its ragged edges from raw samples
    [r] = store.query("m", None, T0 - DAY + 30, T0 - 1, agg="count")
    assert sum(v for _, v in r.points) == DAY / 20 - 2
    assert r.points[0] == (T0 - DAY + 40, 1.0)  # raw, before the first whole minute
    assert r.points[1] == (T0 - DAY + 60, 3.0)  # then minutes


# -- retention


def test_retention_deletes_only_rows_past_their_retention(store: SeriesStore, db: Database):
    now = T0 + 500 * DAY
    ages = {"new": 1 * DAY, "mid": 10 * DAY, "old": 100 * DAY, "ancient": 450 * DAY}
    store.write([Sample("m", {"age": k}, now - age, 1.0) for k, age in ages.items()])
    store.rollup(now=now)
    assert count(db, SampleRow) == 4
    assert count(db, Rollup1m) == 4
    assert count(db, Rollup1h) == 4

    deleted = store.apply_retention(now=now)
    assert deleted == {"raw": 3, "1m": 2, "1h": 1}

    def ages_in(model: type) -> set[str]:
        with db.session() as s:
            labels = s.scalars(select(Series.labels).join(model, model.series_id == Series.id))
            return {lab["age"] for lab in labels}

    assert ages_in(SampleRow) == {"new"}  # raw: 7 days
    assert ages_in(Rollup1m) == {"new", "mid"}  # minutes: 30 days
    assert ages_in(Rollup1h) == {"new", "mid", "old"}  # hours: 400 days
    assert store.apply_retention(now=now) == {"raw": 0, "1m": 0, "1h": 0}
    assert len(store.list_series()) == 4  # series rows stay, with their newest value


def test_a_late_sample_behind_raw_retention_keeps_the_older_rollups(store: SeriesStore, db: Database):
    now = T0 + 20 * DAY
    hourly = [now - 10 * DAY + k * HOUR for k in range(240)]
    store.write([Sample("m", {}, ts, float(k)) for k, ts in enumerate(hourly)])
    store.rollup(now=now)
    assert store.apply_retention(now=now)["raw"] == 72  # raw kept 7 days, rollups kept longer
    minutes_before = rollup_rows(db, Rollup1m)
    assert len(minutes_before) == 240

    late = hourly[24] + 120  # nine days old, in a minute of its own
    store.write([Sample("m", {}, late, 1000.0)])
    store.rollup(now=now)
    minutes = rollup_rows(db, Rollup1m)
    assert len(minutes) == 241
    assert set(minutes_before) < set(minutes)  # every older minute survived the recomputation
    hours = {ts: (n, total) for _key, ts, n, total, *_ in rollup_rows(db, Rollup1h)}
    assert len(hours) == 239  # the newest hour is not closed yet
    assert hours[hourly[24]] == (2, 24.0 + 1000.0)
    assert hours[hourly[23]] == (1, 23.0)


def test_register_jobs_schedules_rollup_and_retention(store: SeriesStore, db: Database):
    from controltower.core.scheduler import Scheduler

    scheduler = Scheduler(db)
    store.register_jobs(scheduler)
    jobs = {j.name: j.spec for j in scheduler.jobs()}
    assert jobs == {"series.rollup": "every 30s", "series.retention": "every 3600s"}


def test_rollup_scans_series_through_the_primary_key_on_sqlite(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'plan.db'}")
    db.migrate()
    store = SeriesStore(db, Settings(data_dir=tmp_path))
    store.write([Sample("m", {}, T0, 1.0)])
    with db.engine.connect() as conn:
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT series_id, count(*) FROM samples WHERE series_id IN "
                    "(SELECT series_id FROM series_latest WHERE ts >= :a) AND ts >= :a AND ts < :b GROUP BY series_id"
                ),
                {"a": T0, "b": T0 + 60},
            )
        )
    assert "SCAN samples" not in plan
    assert "SEARCH samples USING PRIMARY KEY (series_id=?" in plan


# -- HTTP


def _api(server: RunningServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.url + "/api/v1", headers={"Authorization": f"Bearer {server.token}"}, timeout=30
    )


def test_http_write_list_query_latest(server: RunningServer):
    now = time.time()
    body = {
        "samples": [
            {"name": "iot.temp", "labels": {"device": "d1"}, "ts": now - 120 + i * 10, "value": 20 + i}
            for i in range(6)
        ]
        + [{"name": "iot.temp", "labels": {"device": "d2"}, "value": 5}]  # ts defaults to now
    }
    with _api(server) as api:
        r = api.post("/series", json=body)
        assert r.status_code == 200, r.text
        assert r.json() == {"written": 7}

        r = api.get("/series", params={"name_prefix": "iot.", "label": "device:d1"})
        assert r.status_code == 200, r.text
        assert [(s["name"], s["labels"], s["last_value"]) for s in r.json()] == [("iot.temp", {"device": "d1"}, 25.0)]

        r = api.get("/series/query", params={"name": "iot.temp", "labels": "device:d1", "start": "-5m"})
        assert r.status_code == 200, r.text
        [series] = r.json()["series"]
        assert [v for _, v in series["points"]] == [20.0, 21.0, 22.0, 23.0, 24.0, 25.0]

        r = api.get(
            "/series/query",
            params={"name": "iot.temp", "start": str(now - 125), "end": "now", "step": "1h", "agg": "count"},
        )
        assert r.status_code == 200, r.text
        assert sorted(sum(v for _, v in s["points"]) for s in r.json()["series"]) == [1.0, 6.0]

        r = api.get("/series/latest", params={"name": "iot.temp"})
        assert r.status_code == 200, r.text
        assert [(s["labels"]["device"], s["value"]) for s in r.json()] == [("d1", 25.0), ("d2", 5.0)]

        r = api.get("/series/query", params={"name": "iot.temp", "start": "yesterday-ish"})
        assert r.status_code == 422
        assert "start" in r.json()["detail"]


def test_http_malformed_batch_is_a_422_naming_the_field_and_stores_nothing(server: RunningServer):
    good = {"name": "app.req", "labels": {}, "ts": time.time(), "value": 1}
    with _api(server) as api:
        bad_type = {"samples": [good, good, good, {**good, "value": "lots"}]}
        r = api.post("/series", json=bad_type)
        assert r.status_code == 422
        assert "samples.3.value" in r.json()["detail"]

        bad_name = {"samples": [good, {**good, "name": "bad name"}]}
        r = api.post("/series", json=bad_name)
        assert r.status_code == 422
        assert "samples.1.name" in r.json()["detail"]

        bad_label = {"samples": [{**good, "labels": {"bad-key": "x"}}]}
        r = api.post("/series", json=bad_label)
        assert r.status_code == 422
        assert "samples.0.labels" in r.json()["detail"]

        r = api.post("/series", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422

        assert api.get("/series").json() == []

        anonymous = httpx.post(server.url + "/api/v1/series", json={"samples": [good]})
        assert anonymous.status_code == 401
        assert api.get("/series").json() == []
