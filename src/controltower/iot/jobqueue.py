"""A bounded FIFO that takes and hands out items in bulk: one lock round per batch of messages, not per message."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class JobQueue(Generic[T]):
    """Producers `put`/`put_many`, one consumer takes `get_batch` and reports `done`; `unfinished` counts
    items taken in but not yet done, so a caller can wait for everything queued so far."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._unfinished = 0

    def put(self, item: T, wait: bool = False) -> bool:
        """False when the queue is full and `wait` is not set."""
        return self.put_many((item,), wait) == 1

    def put_many(self, items: Sequence[T], wait: bool = False) -> int:
        """Append in order. With `wait`, block while full until all are in; without, keep what fits.
        Returns how many were taken."""
        taken = 0
        with self._lock:
            while taken < len(items):
                room = self.maxsize - len(self._items)
                if room <= 0:
                    if not wait:
                        break
                    self._not_full.wait()
                    continue
                chunk = items[taken : taken + room]
                self._items.extend(chunk)
                taken += len(chunk)
                self._unfinished += len(chunk)
                self._not_empty.notify()
        return taken

    def get_batch(self, limit: int) -> list[T]:
        """Wait for at least one item, then take up to `limit` in order."""
        with self._lock:
            while not self._items:
                self._not_empty.wait()
            popleft = self._items.popleft
            batch = [popleft() for _ in range(min(limit, len(self._items)))]
            self._not_full.notify_all()
            return batch

    def done(self, count: int) -> None:
        """`count` items taken by get_batch are finished."""
        with self._lock:
            self._unfinished -= count

    @property
    def unfinished(self) -> int:
        return self._unfinished

    def __len__(self) -> int:
        return len(self._items)
