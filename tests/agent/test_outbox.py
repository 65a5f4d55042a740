"""The on-disk outbox against a real HTTP server that is down, then failing, then accepting."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from controltower.agent.outbox import Outbox
from tests.support import free_port


class _Receiver(ThreadingHTTPServer):
    """Answers 503 to the first `failures` POSTs, 400 to bodies with "bad", and records the rest."""

    daemon_threads = True

    def __init__(self, port: int, failures: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.failures = failures
        self.failed = 0
        self.received: list[tuple[str, dict]] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            if self.server.failed < self.server.failures:
                self.server.failed += 1
                self._answer(503, {"detail": "starting up"})
            elif body.get("bad"):
                self._answer(400, {"detail": "samples.0.value: not a number"})
            else:
                self.server.received.append((self.path, body))
                self._answer(200, {"accepted": 1})

    def _answer(self, status: int, data: dict) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_args: object) -> None:
        pass


def _serve(port: int, failures: int = 0) -> _Receiver:
    receiver = _Receiver(port, failures)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    return receiver


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", max_messages=1000)
    yield box
    box.close()


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def _send_until(outbox: Outbox, port: int, done, before_start=None) -> None:
    """Run the sender against 127.0.0.1:port until done() is true, then stop it."""

    async def scenario() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            task = asyncio.create_task(outbox.send_forever(http, stop, backoff_initial=0.02, backoff_max=0.2))
            if before_start is not None:
                await before_start()
            await _until(done)
            stop.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_messages_survive_an_outage_and_arrive_in_order(outbox: Outbox) -> None:
    port = free_port()
    for n in range(20):
        outbox.put("/api/v1/things", {"n": n})
    holder: dict[str, _Receiver] = {}

    async def outage_then_flaky_server() -> None:
        await asyncio.sleep(0.5)  # nothing listens: connection refused, retried
        assert len(outbox) == 20
        holder["rx"] = _serve(port, failures=5)  # then 503s, retried
        for n in range(20, 30):
            outbox.put("/api/v1/things", {"n": n})

    try:
        _send_until(
            outbox,
            port,
            lambda: "rx" in holder and len(holder["rx"].received) == 30,
            outage_then_flaky_server,
        )
        rx = holder["rx"]
        assert rx.failed == 5
        assert [body["n"] for _path, body in rx.received] == list(range(30))
        assert {path for path, _body in rx.received} == {"/api/v1/things"}
        assert len(outbox) == 0 and outbox.peek() is None
    finally:
        if "rx" in holder:
            holder["rx"].shutdown()


def test_queued_messages_persist_across_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_messages=10)
    ids = [box.put("/p", {"n": n}) for n in range(3)]
    box.close()
    again = Outbox(tmp_path / "o.db", max_messages=10)
    try:
        assert len(again) == 3
        assert [(m.id, m.body["n"]) for m in again.messages()] == list(zip(ids, range(3), strict=True))
    finally:
        again.close()


def test_bound_drops_oldest_and_reports_the_count_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_messages=5)
    for n in range(8):
        box.put("/m", {"n": n, "dropped": 0})
    assert len(box) == 5
    assert [m.body["n"] for m in box.messages()] == [3, 4, 5, 6, 7]
    assert box.unreported_drops == 3
    assert box.dropped_total == 3
    box.close()
    box = Outbox(tmp_path / "o.db", max_messages=5)  # the counts are on disk too
    assert box.unreported_drops == 3

    port = free_port()
    rx = _serve(port)
    try:
        _send_until(box, port, lambda: len(rx.received) == 5)
        assert [body["n"] for _p, body in rx.received] == [3, 4, 5, 6, 7]
        assert [body["dropped"] for _p, body in rx.received] == [3, 0, 0, 0, 0]
        assert box.unreported_drops == 0
        assert box.dropped_total == 3
    finally:
        rx.shutdown()
        box.close()


def test_rejected_message_is_set_aside_and_the_queue_moves_on(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_messages=3)
    box.put("/m", {"n": 0, "dropped": 0})  # dropped by the bound below
    box.put("/m", {"n": 1, "dropped": 0, "bad": True})
    box.put("/m", {"n": 2, "dropped": 0})
    box.put("/m", {"n": 3, "dropped": 0})
    assert box.unreported_drops == 1
    port = free_port()
    rx = _serve(port)
    try:
        _send_until(box, port, lambda: len(rx.received) == 2)
        assert [body["n"] for _p, body in rx.received] == [2, 3]
        # The drop count rode on the rejected message; it was not lost but reported with the next one.
        assert [body["dropped"] for _p, body in rx.received] == [1, 0]
        rejected = box.rejected()
        assert [(r.body["n"], r.status) for r in rejected] == [(1, 400)]
        assert "samples.0.value: not a number" in rejected[0].reason
        assert len(box) == 0
    finally:
        rx.shutdown()
        box.close()


def test_flush_sends_what_it_can_and_stops_at_the_first_failure(outbox: Outbox) -> None:
    for n in range(3):
        outbox.put("/m", {"n": n})
    port = free_port()

    async def flush() -> int:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:
            return await outbox.flush(http, deadline_s=2)

    assert asyncio.run(flush()) == 3  # server down: everything stays
    rx = _serve(port)
    try:
        assert asyncio.run(flush()) == 0
        assert [body["n"] for _p, body in rx.received] == [0, 1, 2]
    finally:
        rx.shutdown()


def test_bound_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_messages"):
        Outbox(tmp_path / "o.db", max_messages=0)


def test_drops_count_the_items_a_message_held(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_messages=2)
    try:
        box.put("/m", {"samples": [1, 2, 3], "dropped": 0}, items=3)
        box.put("/m", {"samples": [4, 5], "dropped": 0}, items=2)
        box.put("/m", {"samples": [6], "dropped": 0}, items=1)
        assert [m.body["samples"] for m in box.messages()] == [[4, 5], [6]]
        assert box.unreported_drops == 3
        assert box.dropped_total == 3
    finally:
        box.close()


def test_nudge_cuts_a_long_backoff_short(outbox: Outbox) -> None:
    port = free_port()
    outbox.put("/m", {"n": 1})
    holder: dict[str, _Receiver] = {}

    async def scenario() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            # The first attempt fails (nobody listens) and the sender backs off for 10 minutes...
            task = asyncio.create_task(outbox.send_forever(http, stop, backoff_initial=600, backoff_max=600))
            await asyncio.sleep(0.3)
            holder["rx"] = _serve(port)
            outbox.nudge()  # ...unless told the server is back.
            await _until(lambda: len(holder["rx"].received) == 1, timeout=20)
            stop.set()
            await asyncio.wait_for(task, 10)

    try:
        asyncio.run(scenario())
        assert [body for _p, body in holder["rx"].received] == [{"n": 1}]
    finally:
        if "rx" in holder:
            holder["rx"].shutdown()
