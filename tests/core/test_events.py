"""Event bus: wildcards, persistence, delivery from threads and the loop, commit-bound publish, SSE."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from controltower.core.db import Database, utcnow
from controltower.core.events import Event, EventBus, EventRecord, recent, topic_matches
from controltower.core.scheduler import Scheduler
from tests.support import RunningServer


async def until(predicate: Callable[[], Any], timeout: float = 10.0, message: str = "condition") -> None:
    """Poll on the loop until predicate() is truthy; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        await asyncio.sleep(0.01)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("monitor.alert.firing", "monitor.alert.firing", True),
        ("monitor.alert.firing", "monitor.alert.resolved", False),
        ("monitor.alert.*", "monitor.alert.firing", True),
        ("monitor.alert.*", "monitor.alert", False),
        ("monitor.alert.*", "monitor.alert.firing.extra", False),
        ("monitor.*.firing", "monitor.alert.firing", True),
        ("*.*", "iot.device", True),
        ("*", "iot.device", False),
        ("monitor.#", "monitor", True),
        ("monitor.#", "monitor.alert", True),
        ("monitor.#", "monitor.alert.firing.deep", True),
        ("monitor.#", "monitors.alert", False),
        ("monitor.*.#", "monitor", False),
        ("monitor.*.#", "monitor.alert", True),
        ("#", "anything.at.all", True),
        ("#", "x", True),
        ("iot.device", "iot.device.offline", False),
        ("iot.device.offline", "iot.device", False),
    ],
)
def test_wildcard_matching(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


@pytest.mark.parametrize("pattern", ["", "a..b", "a.#.b", "a.b*", "mon#", ".a"])
def test_bad_patterns_are_rejected_with_the_reason(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"pattern|empty"):
        topic_matches(pattern, "a.b")


@pytest.mark.parametrize("topic", ["", "a.*", "a.#", "a..b"])
def test_publishing_a_wildcard_or_malformed_topic_is_refused(db: Database, topic: str) -> None:
    bus = EventBus(db)
    with pytest.raises(ValueError, match="topic"):
        bus.publish(topic, {})
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(EventRecord)) == 0


def test_publish_persists_and_recent_filters_by_pattern(db: Database) -> None:
    bus = EventBus(db)
    ids = [
        bus.publish("monitor.alert.firing", {"rule": "cpu", "at": utcnow()}),
        bus.publish("monitor.alert.resolved", {"rule": "cpu"}),
        bus.publish("iot.device.offline", {"device": "d1"}),
        bus.publish("monitor_x.alert.firing", {"rule": "like-underscore"}),
    ]
    assert ids == sorted(ids) and len(set(ids)) == 4

    with db.session() as session:
        everything = recent(session)
        assert [e.id for e in everything] == ids
        first = everything[0]
        assert first.topic == "monitor.alert.firing"
        assert first.payload["rule"] == "cpu"
        assert isinstance(first.payload["at"], str)  # datetimes are stored as ISO text
        assert first.ts.tzinfo is not None

        alerts = ["monitor.alert.firing", "monitor.alert.resolved"]
        assert [e.topic for e in recent(session, "monitor.alert.*")] == alerts
        assert [e.topic for e in recent(session, "monitor.#")] == alerts
        firing = ["monitor.alert.firing", "monitor_x.alert.firing"]
        assert [e.topic for e in recent(session, "*.*.firing")] == firing
        assert [e.topic for e in recent(session, "iot.device.offline")] == ["iot.device.offline"]
        assert recent(session, "nothing.#") == []
        # the newest `limit`, oldest first; or the first `limit` after a cursor
        assert [e.id for e in bus.recent(session, limit=2)] == ids[2:]
        assert [e.id for e in bus.recent(session, after_id=ids[0], limit=2)] == ids[1:3]
        assert [e.id for e in bus.recent(session, "monitor.#", after_id=ids[0])] == [ids[1]]


def test_recent_with_a_wildcard_pages_past_non_matching_rows(db: Database) -> None:
    bus = EventBus(db)
    wanted = bus.publish("a.x.end", {})
    for i in range(450):
        bus.publish("a.x.other", {"i": i})
    with db.session() as session:
        assert [e.id for e in recent(session, "a.*.end", limit=5)] == [wanted]


def test_publish_from_a_thread_and_from_the_loop_reaches_subscribers(db: Database) -> None:
    bus = EventBus(db)
    sync_seen: list[tuple[str, int]] = []
    async_seen: list[str] = []
    handler_threads: set[int] = set()

    def on_sync(event: Event) -> None:
        handler_threads.add(threading.get_ident())
        sync_seen.append((event.topic, event.payload["n"]))

    async def on_async(event: Event) -> None:
        async_seen.append(event.topic)

    bus.subscribe("test.#", on_sync)  # before start, as subsystems do in setup()

    async def main() -> None:
        await bus.start()
        bus.subscribe("test.*.loop", on_async)  # after start, from the loop
        loop_thread = threading.get_ident()
        bus.publish("test.from.loop", {"n": 1})
        worker = threading.Thread(target=lambda: bus.publish("test.from.thread", {"n": 2}))
        worker.start()
        await asyncio.to_thread(worker.join)
        bus.publish("other.topic", {"n": 3})
        await until(lambda: len(sync_seen) == 2, message="both events at the sync handler")
        await until(lambda: async_seen == ["test.from.loop"], message="the loop event at the async handler")
        assert sorted(sync_seen) == [("test.from.loop", 1), ("test.from.thread", 2)]
        assert loop_thread not in handler_threads  # sync handlers never block the loop
        assert bus.stats()["subscribers"] == 2
        await bus.stop()

    run(main)


def test_handler_subscriptions_survive_a_restart_on_a_new_loop(db: Database) -> None:
    bus = EventBus(db)
    seen: list[str] = []

    async def on_event(event: Event) -> None:
        seen.append(event.topic)

    bus.subscribe("r.#", on_event)

    def once(topic: str, expected: list[str]) -> Callable[[], Awaitable[None]]:
        async def main() -> None:
            await bus.start()
            await bus.apublish(topic, {})
            await until(lambda: seen == expected, message=f"{topic} at the handler")
            await bus.stop()

        return main

    run(once("r.first", ["r.first"]))
    bus.publish("r.while_stopped", {})  # persisted, nobody running to hear it
    run(once("r.second", ["r.first", "r.second"]))


def test_a_failing_handler_is_logged_and_breaks_nobody(db: Database, caplog: pytest.LogCaptureFixture):
    bus = EventBus(db)
    calls: list[int] = []
    good: list[int] = []

    def bad(event: Event) -> None:
        calls.append(event.id)
        raise RuntimeError("handler bug")

    bus.subscribe("x.#", bad)
    bus.subscribe("x.#", lambda e: good.append(e.id))

    async def main() -> None:
        await bus.start()
        first = bus.publish("x.one", {})
        second = bus.publish("x.two", {})
        await until(lambda: len(calls) == 2 and len(good) == 2, message="both handlers called twice")
        assert good == [first, second]
        await bus.stop()

    run(main)
    assert "handler bug" in caplog.text


def test_cancelled_subscription_hears_nothing_more(db: Database) -> None:
    bus = EventBus(db)
    cancelled: list[str] = []
    marker: list[str] = []

    async def main() -> None:
        await bus.start()
        sub = bus.subscribe("c.#", lambda e: cancelled.append(e.topic))
        bus.subscribe("c.#", lambda e: marker.append(e.topic))
        bus.publish("c.before", {})
        await until(lambda: cancelled == ["c.before"], message="the first event")
        sub.cancel()
        bus.publish("c.after", {})
        await until(lambda: marker == ["c.before", "c.after"], message="the marker subscriber")
        assert cancelled == ["c.before"]
        await bus.stop()

    run(main)


def test_session_publish_notifies_only_after_commit(db: Database) -> None:
    bus = EventBus(db)

    async def main() -> None:
        await bus.start()
        stream = bus.open_stream("tx.#")
        # Dispatch is queued on the loop before a worker thread's result is, so once an awaited
        # `to_thread` returns, anything `publish`/`commit` dispatched is already in the stream's queue.

        # Committed: persisted with the caller's rows, heard only after commit.
        session = db.sessionmaker()
        try:
            event_id = await asyncio.to_thread(bus.publish, "tx.committed", {"k": 1}, session)
            assert stream.pending == 0
            await asyncio.to_thread(session.commit)
            assert stream.pending == 1
        finally:
            session.close()

        # Rolled back: never heard, never stored; a later commit in that session does not resurrect it.
        session = db.sessionmaker()
        try:
            await asyncio.to_thread(bus.publish, "tx.rolledback", {}, session)
            await asyncio.to_thread(session.rollback)
            await asyncio.to_thread(bus.publish, "tx.after_rollback", {}, session)
            await asyncio.to_thread(session.commit)
        finally:
            session.close()

        # A savepoint rolled back inside a committed transaction takes its event along.
        session = db.sessionmaker()
        try:
            def nested() -> None:
                savepoint = session.begin_nested()
                bus.publish("tx.in_savepoint", {}, session)
                savepoint.rollback()
                bus.publish("tx.outer", {}, session)
                session.commit()

            await asyncio.to_thread(nested)
        finally:
            session.close()

        await bus.apublish("tx.marker", {})
        seen: list[str] = []
        async with stream:
            async for event in stream:
                seen.append(event.topic)
                if event.topic == "tx.marker":
                    break
        assert seen == ["tx.committed", "tx.after_rollback", "tx.outer", "tx.marker"]
        await bus.stop()

        with db.session() as check:
            stored = check.scalars(select(EventRecord.topic).order_by(EventRecord.id)).all()
            assert stored == ["tx.committed", "tx.after_rollback", "tx.outer", "tx.marker"]
            assert check.get(EventRecord, event_id).topic == "tx.committed"

    run(main)


def test_session_closed_without_commit_drops_its_events(db: Database) -> None:
    bus = EventBus(db)
    seen: list[str] = []
    bus.subscribe("#", lambda e: seen.append(e.topic))

    async def main() -> None:
        await bus.start()

        def abandoned() -> None:
            session = db.sessionmaker()
            bus.publish("gone.never", {}, session)
            session.close()
            with db.session() as again:  # the same registry, a fresh session: unaffected
                bus.publish("kept.one", {}, again)

        await asyncio.to_thread(abandoned)
        await asyncio.to_thread(bus.publish, "marker", {})
        await until(lambda: "marker" in seen, message="marker")
        assert seen == ["kept.one", "marker"]
        await bus.stop()

    run(main)


def test_stream_replays_then_goes_live(db: Database) -> None:
    bus = EventBus(db)
    old = [bus.publish("s.old", {"i": i}) for i in range(3)]
    bus.publish("other.old", {})

    async def main() -> None:
        await bus.start()
        got: list[Event] = []

        async def consume() -> None:
            async for event in bus.stream("s.#", since_id=old[0]):
                got.append(event)
                if len(got) == 4:
                    return

        task = asyncio.create_task(consume())
        await until(lambda: len(got) == 2, message="the replay")
        first = await bus.apublish("s.live", {"i": 1})
        await bus.apublish("other.live", {})
        second = await bus.apublish("s.live", {"i": 2})
        await asyncio.wait_for(task, 10)
        assert [e.id for e in got] == [old[1], old[2], first, second]
        assert got[3].payload == {"i": 2}
        assert bus.stats()["streams"] == 0  # leaving the loop unsubscribed it
        await bus.stop()

    run(main)


def test_an_open_stream_is_subscribed_at_once_and_skips_replayed_duplicates(db: Database) -> None:
    bus = EventBus(db)
    start = bus.publish("s.start", {})

    async def main() -> None:
        await bus.start()
        stream = bus.open_stream("s.#", since_id=start)
        # Published after subscribing but before the replay reads the table: both in the
        # replay and in the live queue, yet each arrives once.
        a = bus.publish("s.a", {})
        b = bus.publish("s.b", {})
        got: list[int] = []
        async with stream:
            async for event in stream:
                got.append(event.id)
                if len(got) == 2:
                    break
            c = await bus.apublish("s.c", {})
            async for event in stream:
                got.append(event.id)
                break
        assert got == [a, b, c]
        assert bus.stats()["streams"] == 0
        await bus.stop()

    run(main)


def test_a_slow_stream_drops_its_oldest_events_and_counts_them(db: Database) -> None:
    bus = EventBus(db)

    async def main() -> None:
        await bus.start()
        stream = bus.open_stream("slow.#", maxsize=2)
        ids = [bus.publish("slow.e", {"i": i}) for i in range(5)]
        await until(lambda: stream.dropped == 3, message="three drops")
        got: list[int] = []
        async with stream:
            async for event in stream:
                got.append(event.id)
                if len(got) == 2:
                    break
        assert got == ids[3:]
        assert bus.stats()["dropped"] == 3
        await bus.stop()

    run(main)


def test_stop_ends_open_streams(db: Database) -> None:
    bus = EventBus(db)

    async def main() -> None:
        await bus.start()
        got: list[Event] = []

        async def consume() -> None:
            async for event in bus.stream("#"):
                got.append(event)

        task = asyncio.create_task(consume())
        await until(lambda: bus.stats()["streams"] == 1, message="the stream to subscribe")
        await bus.stop()
        await asyncio.wait_for(task, 10)
        assert task.done() and got == []

    run(main)


def test_prune_deletes_only_older_events(db: Database) -> None:
    bus = EventBus(db)
    old_ids = [bus.publish("p.old", {}) for _ in range(3)]
    new_id = bus.publish("p.new", {})
    with db.session() as session:
        session.execute(
            update(EventRecord).where(EventRecord.id.in_(old_ids)).values(ts=utcnow() - dt.timedelta(days=40))
        )
    assert bus.prune(utcnow() - dt.timedelta(days=30)) == 3
    with db.session() as session:
        assert [e.id for e in recent(session)] == [new_id]
    # ids keep growing after the newest rows are pruned, so resume cursors stay valid
    assert bus.prune(utcnow() + dt.timedelta(seconds=1)) == 1
    assert bus.publish("p.next", {}) > new_id


def test_retention_job_prunes_in_chunks(db: Database) -> None:
    bus = EventBus(db)
    old = utcnow() - dt.timedelta(days=10)
    with db.session() as session:  # more rows than one prune chunk
        session.add_all(EventRecord(topic="r.old", ts=old, payload={"i": i}) for i in range(5_100))
    kept = bus.publish("r.new", {})
    scheduler = Scheduler(db)
    bus.register_jobs(scheduler, retention_days=7)

    async def main() -> None:
        info = await scheduler.run_now("events.retention")
        assert info.last_error is None and info.runs == 1

    run(main)
    with db.session() as session:
        assert session.scalars(select(EventRecord.id)).all() == [kept]


# -- REST and Server-Sent Events against a real server -------------------------------------


def _read_sse(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    """Parse SSE messages (skipping pings/comments) until `count` have arrived."""
    messages: list[dict[str, Any]] = []
    current: dict[str, str] = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in current:
                messages.append({**current, "data": json.loads(current["data"])})
                if len(messages) == count:
                    return messages
            current = {}
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            current[key] = value[1:] if value.startswith(" ") else value
    raise AssertionError(f"stream ended after {len(messages)} of {count} messages")


def test_events_rest_and_sse_stream_with_resume(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {server.token}"}
    api = server.url + "/api/v1"
    with httpx.Client(headers=headers, timeout=10) as http:
        before = http.post(f"{api}/events", json={"topic": "test.before", "payload": {"n": 1}})
        assert before.status_code == 201, before.text
        before_id = before.json()["id"]
        assert http.post(f"{api}/events", json={"topic": "unrelated.x", "payload": {}}).status_code == 201

        bad = http.post(f"{api}/events", json={"topic": "test.*", "payload": {}})
        assert bad.status_code == 422 and "topic" in bad.json()["detail"]
        bad = http.get(f"{api}/events", params={"topic": "a.#.b"})
        assert bad.status_code == 422 and "topic" in bad.json()["detail"]

        listed = http.get(f"{api}/events", params={"topic": "test.#"}).json()
        assert [(e["id"], e["topic"], e["payload"]) for e in listed] == [(before_id, "test.before", {"n": 1})]

        # Replay from Last-Event-ID 0, then a live event published after the headers arrived.
        url = f"{api}/events/stream?topics=test.%23"
        with http.stream("GET", url, headers={"Last-Event-ID": "0"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            after = http.post(f"{api}/events", json={"topic": "test.after", "payload": {"n": 2}})
            after_id = after.json()["id"]
            messages = _read_sse(resp, 2)
        assert [(m["id"], m["event"]) for m in messages] == [
            (str(before_id), "test.before"),
            (str(after_id), "test.after"),
        ]
        assert messages[1]["data"]["payload"] == {"n": 2}
        assert messages[1]["data"]["topic"] == "test.after" and messages[1]["data"]["id"] == after_id

        # Resume after the first: only the second is replayed.
        with http.stream("GET", f"{api}/events/stream", params={"topics": "test.#"},
                         headers={"Last-Event-ID": str(before_id)}) as resp:
            assert [m["id"] for m in _read_sse(resp, 1)] == [str(after_id)]

        bad = http.get(f"{api}/events/stream", params={"topics": "test.#"}, headers={"Last-Event-ID": "abc"})
        assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]

    unauthenticated = httpx.get(f"{api}/events/stream", timeout=10)
    assert unauthenticated.status_code == 401
