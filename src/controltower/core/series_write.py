"""The series write path: validate a batch, resolve series ids (cached), insert with one executemany."""

from __future__ import annotations

import bisect
import functools
import math
import re
from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import Connection, event, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from controltower.core.series_models import Series

NAME_PATTERN = r"[a-zA-Z_][a-zA-Z0-9_.:]*"
_NAME_RE = re.compile(NAME_PATTERN + r"\Z")
MAX_NAME_LEN = 255
MAX_LABELS = 32
MAX_LABEL_VALUE_LEN = 1024
MAX_KEY_LEN = 2048
# Epoch seconds: negative or past year 5138 is a unit mistake (milliseconds), not a real time.
MAX_TS = 1e11
ROLLUP_LOCK_ID = 0x5E41E5  # PostgreSQL advisory lock: writers share it, the rollup takes it alone
_CHUNK = 500  # keys per IN (...) lookup
_SQLITE_ROWS_PER_STATEMENT = 10_000  # 3 parameters each; SQLite allows 32,766 per statement


@functools.lru_cache(maxsize=64)
def _insert_samples_sql(rows: int) -> str:
    values = ",".join(("(?,?,?)",) * rows)
    return (f"INSERT INTO samples (series_id, ts, value) SELECT * FROM (VALUES {values}) WHERE true "
            "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value")


@functools.lru_cache(maxsize=64)
def _upsert_latest_sql(rows: int) -> str:
    values = ",".join(("(?,?,?)",) * rows)
    return (f"INSERT INTO series_latest (series_id, ts, value) SELECT * FROM (VALUES {values}) WHERE true "
            "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, value = excluded.value "
            "WHERE excluded.ts >= series_latest.ts")


# Statement sizes, in rows: compiling a multi-row INSERT costs about ten times executing it, so batches of any
# size use one of these few statements (each compiled once per connection), at most a quarter larger.
_STATEMENT_ROWS = sorted(
    {min(_SQLITE_ROWS_PER_STATEMENT, math.ceil(8 * 2 ** (k / 3))) for k in range(33)} | set(range(1, 9))
)


def _padded(flat: list[float]) -> tuple[float, ...]:
    """Rows (flat, three values each) padded to the next statement size by repeating the last row: it
    writes the same values again, which changes nothing (a repeated key keeps its last value)."""
    rows = len(flat) // 3
    size = _STATEMENT_ROWS[bisect.bisect_left(_STATEMENT_ROWS, rows)]
    return (*flat, *flat[-3:] * (size - rows)) if size > rows else tuple(flat)


_DEFERRED = "ct_series_deferred"


def _forget_deferred(session: Session) -> None:
    session.info[_DEFERRED] = []


_MOVE_WATERMARKS = text(
    "UPDATE series_rollup_state SET watermark = CASE resolution WHEN '1m' THEN :m ELSE :h END "
    "WHERE (resolution = '1m' AND watermark > :m) OR (resolution = '1h' AND watermark > :h)"
)


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    ts: float
    value: float


RawSample = tuple[str, dict[str, str] | None, float, float]  # what write() unpacks; a Sample is one


class SeriesError(ValueError):
    """Bad input to the series store; `field` names what is wrong, e.g. `samples.3.value`."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series_key(name: str, labels: dict[str, str]) -> str:
    """Canonical identity of a series: `name` or `name{a="1",b="2"}` with labels sorted (Prometheus style)."""
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def check_name(value: Any, field: str, what: str = "name") -> str:
    if not isinstance(value, str):
        raise SeriesError(field, f"{what} must be a string, got {type(value).__name__}")
    if len(value) > MAX_NAME_LEN:
        raise SeriesError(field, f"{what} is longer than {MAX_NAME_LEN} characters")
    if not _NAME_RE.match(value):
        raise SeriesError(field, f"{what} {value!r} does not match {NAME_PATTERN}")
    return value


def check_labels(labels: Any, field: str) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise SeriesError(field, f"labels must be an object of strings, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise SeriesError(field, f"more than {MAX_LABELS} labels")
    for k, v in labels.items():
        check_name(k, field, "label key")
        if not isinstance(v, str):
            raise SeriesError(f"{field}.{k}", f"label value must be a string, got {type(v).__name__}")
        if len(v) > MAX_LABEL_VALUE_LEN:
            raise SeriesError(f"{field}.{k}", f"label value is longer than {MAX_LABEL_VALUE_LEN} characters")
    return labels


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SeriesError(field, f"must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise SeriesError(field, "number is too large") from None


class PreparedSamples(NamedTuple):
    """A validated batch, ready to insert."""

    keys: list[str]  # distinct series keys in this batch
    meta: dict[int, tuple[str, dict[str, str]]]  # (name, labels) of the keys not yet in the id cache
    slots: list[int]  # per sample: index into keys
    ts: list[float]
    values: list[float]
    # For SQLite, when every series id was cached: the insert's parameters, built before any transaction
    # so that the writer holding SQLite's lock only executes them.
    sqlite_params: tuple[list[float], list[float], int] | None = None


_BY_SERIES_AND_TS = itemgetter(0, 1)  # rows (series_id, ts, value)
_BY_SERIES = itemgetter(0)


class SeriesWriter:
    """Validates and stores batches. Keeps key -> id in memory; an id enters the cache only once committed."""

    def __init__(self) -> None:
        # The oldest sample time stored since a rollup in steps reset it (series.SeriesStore.rollup).
        self.oldest_written = math.inf
        self._ids: dict[str, int] = {}
        self._keys: dict[tuple[str, ...], str] = {}  # (name, *label keys, *label values) -> key

    # -- validation (no database)

    def prepare(self, samples: Iterable[Sample | RawSample], *, for_sqlite: bool = False) -> PreparedSamples:
        """Validate every sample before anything is written; raise SeriesError naming the first bad field."""
        known = self._keys
        cached = self._ids  # only grows, so a key cached now is still cached when the batch is stored
        slot_of: dict[str, int] = {}
        keys: list[str] = []
        meta: dict[int, tuple[str, dict[str, str]]] = {}
        slots: list[int] = []
        tss: list[float] = []
        values: list[float] = []
        isfinite = math.isfinite
        for i, sample in enumerate(samples):
            try:
                name, labels, ts, value = sample
            except (TypeError, ValueError):
                raise SeriesError(f"samples.{i}", "expected (name, labels, ts, value)") from None
            try:
                ident = (name, *labels, *labels.values()) if labels else (name,)
                key = known.get(ident)
            except (AttributeError, TypeError):  # labels not a dict, or unhashable parts
                ident, key = None, None
            if key is None:
                check_name(name, f"samples.{i}.name")
                labels = check_labels(labels, f"samples.{i}.labels")
                key = series_key(name, labels)
                if len(key) > MAX_KEY_LEN:
                    raise SeriesError(f"samples.{i}.labels", f"series key over {MAX_KEY_LEN} characters")
                if ident is not None:
                    if len(known) > 200_000:
                        known.clear()
                    known[ident] = key
            slot = slot_of.get(key)
            if slot is None:
                slot = slot_of[key] = len(keys)
                keys.append(key)
                if key not in cached:
                    meta[slot] = (name, labels or {})
            if type(ts) is not float:
                ts = _number(ts, f"samples.{i}.ts")
            if not 0.0 <= ts < MAX_TS:
                reason = f"must be epoch seconds in [0, {MAX_TS:.0e})" if isfinite(ts) else "must be finite"
                raise SeriesError(f"samples.{i}.ts", reason)
            if type(value) is not float:
                value = _number(value, f"samples.{i}.value")
            if not isfinite(value):
                raise SeriesError(f"samples.{i}.value", "must be finite (no NaN or infinity)")
            slots.append(slot)
            tss.append(ts)
            values.append(value)
        batch = PreparedSamples(keys, meta, slots, tss, values)
        if for_sqlite and slots and not meta:
            ids = [cached[k] for k in keys]
            batch = batch._replace(sqlite_params=self._sqlite_params(batch, ids, self._newest(batch, ids)))
        return batch

    def committed_ids(self, keys: list[str]) -> list[int] | None:
        """The id of each key, or None while one of them is not committed yet."""
        cached = self._ids
        if not all(key in cached for key in keys):
            return None
        return [cached[key] for key in keys]

    # -- storage

    def store(self, session: Session, batch: PreparedSamples, defer: bool = False) -> int:
        """Insert a prepared batch in `session`'s transaction; the caller commits.

        With `defer` (SQLite, every series known), the rows wait for the commit and go in with every other
        deferred batch of the transaction in one statement: for a group commit of many requests, a few
        statements instead of a few per request (each statement hands the GIL back and forth)."""
        if not batch.slots:
            return 0
        if batch.sqlite_params is not None:
            if defer:
                self._defer(session, batch)
                return len(batch.slots)
            conn = session.connection()
            written = self._store_sqlite(conn, *batch.sqlite_params)
            self._move_watermarks(conn, min(batch.ts))
            return written
        ids = [self._ids.get(k, 0) for k in batch.keys]
        if not all(ids):  # new series: creating them starts the transaction (SQLite's write lock) here
            ids = self._resolve(session, session.connection(), batch)
        newest = self._newest(batch, ids)
        if session.get_bind().dialect.name == "postgresql":
            conn = session.connection()
            written = self._store_postgres(conn, batch, ids, newest)
        else:
            # Everything up to the first statement runs before the transaction takes the write lock.
            params = self._sqlite_params(batch, ids, newest)
            conn = session.connection()
            written = self._store_sqlite(conn, *params)
        self._move_watermarks(conn, min(batch.ts))
        return written

    def _move_watermarks(self, conn: Connection, first: float) -> None:
        """Data behind a rollup watermark makes rolled-up buckets stale: move the watermarks back, so
        queries read finer data there and the next rollup recomputes those buckets."""
        if first < self.oldest_written:
            self.oldest_written = first
        conn.execute(_MOVE_WATERMARKS, {"m": first - first % 60, "h": first - first % 3600})

    @staticmethod
    def _sqlite_params(
        batch: PreparedSamples, ids: list[int], newest: list[tuple[float, float, int]]
    ) -> tuple[list[float], list[float], int]:
        """The batch's rows and newest values, sorted by key and flattened into bind parameters."""
        rows = [(ids[s], t, v) for s, t, v in zip(batch.slots, batch.ts, batch.values, strict=True)]
        # In key order, consecutive rows land on the same B-tree pages; for a batch spread over many
        # series that is fewer page reads and splits. A repeated (series, ts) keeps its last value
        # because the sort is stable.
        rows.sort(key=_BY_SERIES_AND_TS)
        latest = [(sid, ts, value) for ts, value, sid in newest]
        latest.sort(key=_BY_SERIES)
        return list(chain.from_iterable(rows)), list(chain.from_iterable(latest)), len(rows)

    @staticmethod
    def _store_sqlite(conn: Connection, rows: list[float], latest: list[float], count: int) -> int:
        # Many rows per statement, their values bound in C from one flat sequence: no per-row round trip
        # through Python (as executemany makes) and no JSON for SQLite to parse (as json_each would).
        for start in range(0, len(rows), _SQLITE_ROWS_PER_STATEMENT * 3):
            chunk = _padded(rows[start : start + _SQLITE_ROWS_PER_STATEMENT * 3])
            conn.exec_driver_sql(_insert_samples_sql(len(chunk) // 3), chunk)
        for start in range(0, len(latest), _SQLITE_ROWS_PER_STATEMENT * 3):
            chunk = _padded(latest[start : start + _SQLITE_ROWS_PER_STATEMENT * 3])
            conn.exec_driver_sql(_upsert_latest_sql(len(chunk) // 3), chunk)
        return count

    @staticmethod
    def _store_postgres(
        conn: Connection, batch: PreparedSamples, ids: list[int], newest: list[tuple[float, float, int]]
    ) -> int:
        # One statement over arrays is far faster than a per-row executemany; a statement may not
        # touch a row twice, so a repeated (series, ts) keeps its last value, as sequential writes would.
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({ROLLUP_LOCK_ID})")
        rows = {(ids[s], t): v for s, t, v in zip(batch.slots, batch.ts, batch.values, strict=True)}
        conn.exec_driver_sql(
            "INSERT INTO samples (series_id, ts, value) "
            "SELECT * FROM unnest(%(sid)s::integer[], %(ts)s::float8[], %(v)s::float8[]) "
            "ON CONFLICT (series_id, ts) DO UPDATE SET value = excluded.value",
            {"sid": [k[0] for k in rows], "ts": [k[1] for k in rows], "v": list(rows.values())},
        )
        conn.exec_driver_sql(
            "INSERT INTO series_latest (series_id, ts, value) "
            "SELECT * FROM unnest(%(sid)s::integer[], %(ts)s::float8[], %(v)s::float8[]) "
            "ON CONFLICT (series_id) DO UPDATE SET ts = excluded.ts, value = excluded.value "
            "WHERE excluded.ts >= series_latest.ts",
            {"ts": [r[0] for r in newest], "v": [r[1] for r in newest], "sid": [r[2] for r in newest]},
        )
        return len(batch.slots)

    @staticmethod
    def _newest(batch: PreparedSamples, ids: list[int]) -> list[tuple[float, float, int]]:
        best_ts = [-1.0] * len(batch.keys)
        best_val = [0.0] * len(batch.keys)
        for s, t, v in zip(batch.slots, batch.ts, batch.values, strict=True):
            if t >= best_ts[s]:
                best_ts[s] = t
                best_val[s] = v
        return [(best_ts[s], best_val[s], ids[s]) for s in range(len(batch.keys))]

    def _resolve(self, session: Session, conn: Connection, batch: PreparedSamples) -> list[int]:
        """Series id per distinct key; missing series are created (insert-or-ignore, then select)."""
        cache = self._ids
        ids = [cache.get(k, 0) for k in batch.keys]
        missing = [i for i, sid in enumerate(ids) if not sid]
        if not missing:
            return ids
        found = self._lookup(conn, [batch.keys[i] for i in missing])
        new = [i for i in missing if batch.keys[i] not in found]
        if new:
            dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = dialect_insert(Series.__table__).on_conflict_do_nothing(index_elements=["key"])
            conn.execute(
                stmt,
                [{"name": batch.meta[i][0], "labels": batch.meta[i][1], "key": batch.keys[i]} for i in new],
            )
            found.update(self._lookup(conn, [batch.keys[i] for i in new]))
        for i in missing:
            ids[i] = found[batch.keys[i]]
        self._remember_on_commit(session, found)
        return ids

    @staticmethod
    def _lookup(conn: Connection, keys: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in range(0, len(keys), _CHUNK):
            chunk = keys[n : n + _CHUNK]
            for sid, key in conn.execute(select(Series.id, Series.key).where(Series.key.in_(chunk))):
                out[key] = sid
        return out

    def _defer(self, session: Session, batch: PreparedSamples) -> None:
        assert batch.sqlite_params is not None
        deferred: list[PreparedSamples] | None = session.info.get(_DEFERRED)
        if deferred is None:
            deferred = session.info[_DEFERRED] = []
            event.listen(session, "before_commit", self._flush_deferred)
            event.listen(session, "after_rollback", _forget_deferred)
        deferred.append(batch)

    def _flush_deferred(self, session: Session) -> None:
        deferred: list[PreparedSamples] = session.info.get(_DEFERRED) or []
        if not deferred:
            return
        session.info[_DEFERRED] = []
        rows = list(chain.from_iterable(b.sqlite_params[0] for b in deferred if b.sqlite_params))
        latest = list(chain.from_iterable(b.sqlite_params[1] for b in deferred if b.sqlite_params))
        conn = session.connection()
        self._store_sqlite(conn, rows, latest, len(rows) // 3)
        self._move_watermarks(conn, min(min(b.ts) for b in deferred))

    def _remember_on_commit(self, session: Session, found: dict[str, int]) -> None:
        # A rolled-back insert must not leave its id in the cache (SQLite would hand the id out again).
        info = session.info
        pending: dict[str, int] | None = info.get("ct_series_pending")
        if pending is None:
            pending = info["ct_series_pending"] = {}
            event.listen(session, "after_commit", self._on_commit)
            event.listen(session, "after_rollback", self._on_rollback)
        pending.update(found)

    def _on_commit(self, session: Session) -> None:
        pending = session.info.get("ct_series_pending")
        if pending:
            self._ids.update(pending)
            pending.clear()

    @staticmethod
    def _on_rollback(session: Session) -> None:
        pending = session.info.get("ct_series_pending")
        if pending:
            pending.clear()
