"""JobQueue: bounded, in order, bulk in and out, waiting producers, and counting what is unfinished."""

from __future__ import annotations

import threading
import time

from controltower.iot.jobqueue import JobQueue


def test_bulk_in_order_and_unfinished_counts_until_done() -> None:
    q: JobQueue[int] = JobQueue(10)
    assert q.put_many([1, 2, 3]) == 3
    assert q.put(4)
    assert q.get_batch(3) == [1, 2, 3]
    assert q.unfinished == 4
    q.done(3)
    assert q.get_batch(10) == [4]
    q.done(1)
    assert q.unfinished == 0 and len(q) == 0


def test_full_queue_keeps_what_fits_without_wait() -> None:
    q: JobQueue[int] = JobQueue(3)
    assert q.put_many([1, 2, 3, 4, 5]) == 3
    assert not q.put(6)
    assert q.get_batch(10) == [1, 2, 3]


def test_a_waiting_producer_blocks_until_the_consumer_makes_room() -> None:
    q: JobQueue[int] = JobQueue(2)
    finished = threading.Event()

    def produce() -> None:
        q.put_many(list(range(6)), wait=True)
        finished.set()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.2)
    assert not finished.is_set() and len(q) == 2
    taken: list[int] = []
    while len(taken) < 6:
        batch = q.get_batch(10)
        taken += batch
        q.done(len(batch))
    producer.join(5)
    assert finished.is_set() and taken == list(range(6))


def test_get_batch_waits_for_the_first_item() -> None:
    q: JobQueue[str] = JobQueue(5)
    got: list[list[str]] = []
    consumer = threading.Thread(target=lambda: got.append(q.get_batch(5)))
    consumer.start()
    time.sleep(0.1)
    assert not got
    q.put("x")
    consumer.join(5)
    assert got == [["x"]]
