"""Batch shapes on SQLite and PostgreSQL: a batch of known series prepared from its values alone stores
exactly what the full validation would, and anything the full validation would refuse goes back to it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from controltower.config import Settings
from controltower.core.db import Database
from controltower.core.series import BatchShape, PreparedSamples, Sample, SeriesStore

T0 = 1_699_999_200.0
# In neither key nor id order, with one series (cpu core 1) twice: its last value is the newest.
LAYOUT = [
    ("host.disk", {"mount": "/"}),
    ("host.cpu", {"core": "1"}),
    ("host.cpu", {"core": "0"}),
    ("host.mem", {}),
    ("host.cpu", {"core": "1"}),
]


def _samples(ts: float, values: list[float]) -> list[Sample]:
    return [Sample(name, labels, ts, value) for (name, labels), value in zip(LAYOUT, values, strict=True)]


@pytest.fixture
def store(db: Database, tmp_path: Path) -> SeriesStore:
    return SeriesStore(db, Settings(data_dir=tmp_path))


def _shape(store: SeriesStore) -> BatchShape:
    store.write(_samples(T0, [1.0, 2.0, 3.0, 4.0, 5.0]))  # the series exist and are committed
    shape = store.shape(store.prepare(_samples(T0 + 10, [0.0] * len(LAYOUT))))
    assert shape is not None
    return shape


def _store(store: SeriesStore, db: Database, batch: PreparedSamples) -> None:
    with db.session() as session:
        store.store(session, batch)


def test_a_shaped_batch_equals_the_fully_prepared_one(store: SeriesStore):
    shape = _shape(store)
    values = [10.5, 20.0, 30.25, 40.0, 50.0]
    shaped = store.prepare_shaped(shape, T0 + 20, list(values))
    full = store.prepare(_samples(T0 + 20, values))
    assert shaped is not None
    assert (shaped.keys, shaped.slots, shaped.ts, shaped.values) == (full.keys, full.slots, full.ts, full.values)
    assert shaped.sqlite_params == full.sqlite_params  # SQLite: same rows in the same order; else both None


def test_shaped_batches_are_stored_and_the_repeated_series_keeps_its_last_value(store: SeriesStore, db: Database):
    shape = _shape(store)
    for n in range(1, 4):
        batch = store.prepare_shaped(shape, T0 + 60 * n, [n, n * 2.0, n * 3.0, n * 4.0, n * 5.0])  # ints too
        assert batch is not None
        _store(store, db, batch)
    cpu1 = store.query("host.cpu", {"core": "1"}, T0 + 1, T0 + 200)
    assert [tuple(p) for p in cpu1[0].points] == [(T0 + 60, 5.0), (T0 + 120, 10.0), (T0 + 180, 15.0)]
    latest = {(s.name, tuple(s.labels.items())): (s.ts, s.value) for s in store.latest(name_prefix="host.")}
    assert latest == {
        ("host.disk", (("mount", "/"),)): (T0 + 180, 3.0),
        ("host.cpu", (("core", "1"),)): (T0 + 180, 15.0),
        ("host.cpu", (("core", "0"),)): (T0 + 180, 9.0),
        ("host.mem", ()): (T0 + 180, 12.0),
    }


@pytest.mark.parametrize(
    ("ts", "values"),
    [
        (T0, [1.0, math.nan, 3.0, 4.0, 5.0]),
        (T0, [1.0, 2.0, math.inf, 4.0, 5.0]),
        (T0, [1.0, 2.0, 3.0, True, 5.0]),
        (T0, [1.0, 2.0, 3.0, 4.0, "5"]),
        (T0, [None, 2.0, 3.0, 4.0, 5.0]),
        (T0, [10**400, 2.0, 3.0, 4.0, 5.0]),
        (T0, [1.0, 2.0, 3.0, 4.0]),
        (-1.0, [1.0, 2.0, 3.0, 4.0, 5.0]),
        (1e12, [1.0, 2.0, 3.0, 4.0, 5.0]),
        (True, [1.0, 2.0, 3.0, 4.0, 5.0]),
    ],
)
def test_what_the_full_validation_would_refuse_is_left_to_it(store: SeriesStore, ts: float, values: list) -> None:
    assert store.prepare_shaped(_shape(store), ts, values) is None


def test_no_shape_before_the_series_are_committed_nor_for_mixed_times(store: SeriesStore):
    assert store.shape(store.prepare(_samples(T0, [1.0] * len(LAYOUT)))) is None  # series not created yet
    store.write(_samples(T0, [1.0] * len(LAYOUT)))
    mixed = [Sample("host.mem", {}, T0 + 1, 1.0), Sample("host.mem", {}, T0 + 2, 2.0)]
    assert store.shape(store.prepare(mixed)) is None


def test_another_stores_shape_is_refused(store: SeriesStore, db: Database, tmp_path: Path):
    other = SeriesStore(db, Settings(data_dir=tmp_path))  # its own id cache: the shape's ids are not its own
    assert other.prepare_shaped(_shape(store), T0 + 20, [1.0] * len(LAYOUT)) is None
