"""Batch shapes: a source that sends the same series in the same order every time (an agent's push) has its
next batch prepared from its values alone, without validating and keying each sample again."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

from controltower.core.series_write import MAX_TS, PreparedSamples

_NUMBER_TYPES = frozenset((float, int))
_FLOAT = frozenset((float,))
Picker = Callable[[Sequence[float]], Sequence[float]]


def _picker(indices: list[int]) -> Picker:
    """Picks these positions, always as a sequence (itemgetter of one index returns the item itself)."""
    if len(indices) == 1:
        only = indices[0]
        return lambda values: (values[only],)
    return itemgetter(*indices)


@dataclass(frozen=True, slots=True)
class BatchShape:
    """The series of a validated batch whose samples share one timestamp, in sample order, with their
    committed ids: the order of the samples by series id (SQLite's insert order) and which sample is each
    series' newest (the last of a series repeated within the batch), so new parameters are built in C."""

    owner: object  # the writer whose ids these are: another store's shape is refused
    keys: list[str]
    slots: list[int]
    sorted_ids: tuple[int, ...]  # per sample, in insert order
    insert_order: Picker  # picks the values in that order
    latest_ids: tuple[int, ...] | None  # per series, sorted; None when no series repeats
    latest_pick: Picker | None

    @property
    def size(self) -> int:
        return len(self.slots)


def shape_of(owner: object, batch: PreparedSamples, ids: list[int] | None) -> BatchShape | None:
    """The shape of `batch` given the committed id of each of its keys, or None when an id is not known yet
    (`ids` None) or its samples differ in time."""
    if ids is None or not batch.slots or min(batch.ts) != max(batch.ts):
        return None
    slots = batch.slots
    # Stable: samples of one series keep their order, so a repeated series' last value is written last.
    order = sorted(range(len(slots)), key=lambda i: ids[slots[i]])
    last: dict[int, int] = {}
    for i, slot in enumerate(slots):
        last[slot] = i
    latest_ids, latest_pick = None, None
    if len(last) < len(slots):
        newest = sorted(last.values(), key=lambda i: ids[slots[i]])
        latest_ids, latest_pick = tuple(ids[slots[i]] for i in newest), _picker(newest)
    sorted_ids = tuple(ids[slots[i]] for i in order)
    return BatchShape(owner, batch.keys, slots, sorted_ids, _picker(order), latest_ids, latest_pick)


def prepare_shaped(
    owner: object, shape: BatchShape, ts: float, values: list[Any], for_sqlite: bool
) -> PreparedSamples | None:
    """The batch of `shape`'s series at `ts` with these values (one per sample, in order), or None when a
    value or the time would be refused (the full validation then names the offending sample) or the shape
    is another writer's."""
    if shape.owner is not owner or len(values) != shape.size or type(ts) not in _NUMBER_TYPES or not 0.0 <= ts < MAX_TS:
        return None
    kinds = set(map(type, values))  # bool is its own type: refused here, as by the full validation
    if not kinds <= _NUMBER_TYPES:
        return None
    try:
        floats: list[float] = values if kinds == _FLOAT else list(map(float, values))
        if not math.isfinite(sum(floats)):  # NaN or infinity among them (or a sum that overflows: checked fully)
            return None
    except OverflowError:
        return None
    ts = float(ts)
    params = None
    if for_sqlite:
        rows = list(chain.from_iterable(zip(shape.sorted_ids, repeat(ts), shape.insert_order(floats))))
        latest = rows
        if shape.latest_ids is not None and shape.latest_pick is not None:
            latest = list(chain.from_iterable(zip(shape.latest_ids, repeat(ts), shape.latest_pick(floats))))
        params = (rows, latest, shape.size)
    return PreparedSamples(shape.keys, {}, shape.slots, [ts] * shape.size, floats, params)
