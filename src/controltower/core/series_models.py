"""Tables of the time-series store: series, raw samples, 1-minute and 1-hour rollups, rollup watermarks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, PrimaryKeyConstraint, String
from sqlalchemy.orm import Mapped, declared_attr, mapped_column

from controltower.core.db import Base, UtcDateTime, utcnow


class Series(Base):
    """A labelled series: `key` is the canonical `name{k="v",...}` (labels sorted)."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    key: Mapped[str] = mapped_column(String(2048), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class SeriesLatest(Base):
    """The newest sample of each series, upserted once per series per batch.

    A narrow table of its own: updating it dirties far fewer pages than rewriting wide `series` rows."""

    __tablename__ = "series_latest"

    series_id: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    ts: Mapped[float] = mapped_column()
    value: Mapped[float] = mapped_column()


class SampleRow(Base):
    """A raw sample. A second write of the same (series, ts) overwrites the value (last write wins)."""

    __tablename__ = "samples"
    # Clustered on (series_id, ts) in SQLite: one B-tree instead of a rowid table plus an index.
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(
        ForeignKey("series.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    ts: Mapped[float] = mapped_column(primary_key=True)
    value: Mapped[float] = mapped_column()


class _RollupColumns:
    """One bucket of one series: `ts` is the bucket start; `last` is the value of the newest sample in it."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (PrimaryKeyConstraint("series_id", "ts"), {"sqlite_with_rowid": False})

    @declared_attr
    def series_id(cls) -> Mapped[int]:
        return mapped_column(ForeignKey("series.id", ondelete="CASCADE"), autoincrement=False)

    ts: Mapped[float] = mapped_column()
    count: Mapped[int] = mapped_column()
    sum: Mapped[float] = mapped_column()
    min: Mapped[float] = mapped_column()
    max: Mapped[float] = mapped_column()
    last: Mapped[float] = mapped_column()


class Rollup1m(_RollupColumns, Base):
    __tablename__ = "samples_1m"


class Rollup1h(_RollupColumns, Base):
    __tablename__ = "samples_1h"


class RollupState(Base):
    """Per resolution: every bucket that starts before `watermark` is rolled up and current."""

    __tablename__ = "series_rollup_state"

    resolution: Mapped[str] = mapped_column(String(8), primary_key=True)
    watermark: Mapped[float] = mapped_column()
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
