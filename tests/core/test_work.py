"""The work queue on SQLite and PostgreSQL: claiming, selectors, races, leases, ownership, long-poll, HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from controltower.config import Settings
from controltower.core.db import Database, utcnow
from controltower.core.events import EventBus
from controltower.core.scheduler import Scheduler
from controltower.core.work import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    NotLeaseOwner,
    WorkItem,
    WorkItemNotFound,
    WorkQueue,
    WorkStatus,
)
from tests.support import RunningServer


@pytest.fixture
def bus(db: Database) -> EventBus:
    return EventBus(db)


@pytest.fixture
def queue(db: Database, bus: EventBus, tmp_path: Path) -> WorkQueue:
    return WorkQueue(db, bus, Settings(data_dir=tmp_path, work_lease_s=60))


def enqueue(queue: WorkQueue, kind: str = "rpa.run", payload: dict | None = None, **kwargs) -> WorkItem:
    with queue.db.session() as s:
        return queue.enqueue(s, kind, payload or {}, **kwargs)


def topics(queue: WorkQueue, bus: EventBus) -> list[tuple[str, dict]]:
    with queue.db.session() as s:
        return [(e.topic, e.payload) for e in bus.recent(s, "work.#")]


def test_enqueue_claim_complete_publishes_completion(queue: WorkQueue, bus: EventBus):
    item = enqueue(queue, payload={"robot": "invoices"})
    assert item.status == WorkStatus.queued and item.attempts == 0

    [claimed] = queue.claim(agent_id=1, agent_labels=[], kinds=["rpa.run"])
    assert claimed.id == item.id
    assert claimed.status == WorkStatus.leased
    assert claimed.lease_owner == 1 and claimed.attempts == 1
    assert claimed.payload == {"robot": "invoices"}
    assert claimed.lease_expires_at is not None and claimed.lease_expires_at > utcnow()
    assert queue.claim(2, [], ["rpa.run"]) == []

    done = queue.complete(item.id, 1, {"rows": 42})
    assert done.status == WorkStatus.completed and done.finished_at is not None
    assert queue.get(item.id).result == {"rows": 42}
    assert ("work.item.completed", {
        "id": item.id, "kind": "rpa.run", "status": "completed", "attempts": 1, "max_attempts": 3,
        "agent_id": 1, "result": {"rows": 42},
    }) in topics(queue, bus)


def test_claim_only_wanted_kinds_in_order_up_to_limit(queue: WorkQueue):
    ids = [enqueue(queue, "rpa.run").id for _ in range(3)]
    enqueue(queue, "monitor.check")
    got = queue.claim(1, [], ["rpa.run"], limit=2)
    assert [i.id for i in got] == ids[:2]
    assert queue.claim(1, [], []) == []
    rest = queue.claim(1, [], ["monitor.check", "rpa.run"], limit=10)
    assert [i.kind for i in rest] == ["rpa.run", "monitor.check"]


def test_label_selector_needs_every_label(queue: WorkQueue):
    plain = enqueue(queue, labels=[])
    linux = enqueue(queue, labels=["linux"])
    gpu = enqueue(queue, labels=["linux", "gpu"])

    assert {i.id for i in queue.claim(1, ["linux", "windows"], ["rpa.run"], limit=10)} == {plain.id, linux.id}
    assert queue.claim(2, ["gpu"], ["rpa.run"], limit=10) == []
    assert [i.id for i in queue.claim(3, ["gpu", "linux", "big"], ["rpa.run"], limit=10)] == [gpu.id]


def test_labels_with_quotes_and_unicode_match_exactly(queue: WorkQueue):
    odd = enqueue(queue, labels=["it's", "zone=é"])
    assert queue.claim(1, ["it", "zone=e"], ["rpa.run"]) == []
    assert [i.id for i in queue.claim(1, ["zone=é", "it's"], ["rpa.run"])] == [odd.id]


def test_targeted_item_goes_only_to_its_agent(queue: WorkQueue):
    targeted = enqueue(queue, agent_id=7)
    assert queue.claim(1, [], ["rpa.run"]) == []
    [got] = queue.claim(7, [], ["rpa.run"])
    assert got.id == targeted.id and got.lease_owner == 7


@pytest.mark.timeout(120)
def test_racing_agents_claim_every_item_exactly_once(queue: WorkQueue):
    with queue.db.session() as s:
        for n in range(200):
            queue.enqueue(s, "race", {"n": n})
    claims: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def agent(agent_id: int) -> None:
        try:
            start.wait()
            while True:
                items = queue.claim(agent_id, [], ["race"], limit=3)
                if not items:
                    return
                with lock:
                    claims.extend((i.id, agent_id) for i in items)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    ids = [item_id for item_id, _ in claims]
    assert len(ids) == 200 and len(set(ids)) == 200
    with queue.db.session() as s:
        query = select(WorkItem.id, WorkItem.lease_owner, WorkItem.attempts).where(WorkItem.kind == "race")
        rows = s.execute(query)
        stored = {row.id: (row.lease_owner, row.attempts) for row in rows}
    assert stored == {item_id: (agent_id, 1) for item_id, agent_id in claims}
    assert len({agent_id for _, agent_id in claims}) > 1  # the work really was shared


def test_expired_lease_is_retried_then_failed(queue: WorkQueue, bus: EventBus):
    item = enqueue(queue, max_attempts=2, lease_s=30)
    queue.claim(1, [], ["rpa.run"])
    assert queue.expire_leases() == 0  # not yet due

    later = utcnow() + dt.timedelta(seconds=31)
    assert queue.expire_leases(now=later) == 1
    again = queue.get(item.id)
    assert (again.status, again.error, again.lease_expires_at) == (WorkStatus.queued, "lease expired", None)

    [second] = queue.claim(2, [], ["rpa.run"])
    assert second.attempts == 2 and second.lease_owner == 2
    assert queue.expire_leases(now=utcnow() + dt.timedelta(seconds=31)) == 1
    final = queue.get(item.id)
    assert (final.status, final.error) == (WorkStatus.failed, "lease expired")
    assert final.finished_at is not None

    seen = [(t, p["status"]) for t, p in topics(queue, bus)]
    assert seen == [
        ("work.item.expired", "queued"),
        ("work.item.expired", "failed"),
        ("work.item.failed", "failed"),
    ]


def test_expiry_policy_fail_fails_at_once(queue: WorkQueue):
    item = enqueue(queue, max_attempts=5, on_expiry="fail", lease_s=10)
    queue.claim(1, [], ["rpa.run"])
    assert queue.expire_leases(now=utcnow() + dt.timedelta(seconds=11)) == 1
    assert queue.get(item.id).status == WorkStatus.failed


def test_renew_pushes_the_lease_forward(queue: WorkQueue):
    item = enqueue(queue, lease_s=10)
    [claimed] = queue.claim(1, [], ["rpa.run"])
    renewed = queue.renew(item.id, 1, lease_s=600)
    assert renewed.lease_expires_at > claimed.lease_expires_at + dt.timedelta(seconds=500)
    assert queue.expire_leases(now=utcnow() + dt.timedelta(seconds=60)) == 0
    assert queue.get(item.id).status == WorkStatus.leased


def test_only_the_lease_owner_may_renew_complete_or_fail(queue: WorkQueue):
    item = enqueue(queue)
    queue.claim(1, [], ["rpa.run"])
    for attempt in (
        lambda: queue.renew(item.id, 2),
        lambda: queue.complete(item.id, 2, {}),
        lambda: queue.fail(item.id, 2, "boom"),
    ):
        with pytest.raises(NotLeaseOwner, match="leased to agent 1, not agent 2"):
            attempt()
    assert queue.get(item.id).status == WorkStatus.leased

    queue.cancel(item.id)
    with pytest.raises(IllegalTransition, match="is cancelled; cannot renew"):
        queue.renew(item.id, 1)
    with pytest.raises(IllegalTransition, match="cannot cancel"):
        queue.cancel(item.id)
    with pytest.raises(WorkItemNotFound):
        queue.complete(999_999, 1, {})


def test_fail_retries_after_backoff_until_attempts_run_out(queue: WorkQueue, bus: EventBus):
    item = enqueue(queue, max_attempts=2)
    queue.claim(1, [], ["rpa.run"])
    retried = queue.fail(item.id, 1, "robot crashed")
    assert retried.status == WorkStatus.queued and retried.error == "robot crashed"
    assert retried.not_before is not None and retried.not_before > utcnow()
    assert queue.claim(1, [], ["rpa.run"]) == []  # backing off

    [second] = queue.claim(1, [], ["rpa.run"], now=retried.not_before + dt.timedelta(seconds=1))
    assert second.attempts == 2
    final = queue.fail(item.id, 1, "crashed again")
    assert final.status == WorkStatus.failed and final.finished_at is not None
    assert [t for t, _ in topics(queue, bus)] == ["work.item.failed"]


def test_fail_without_retry_is_final(queue: WorkQueue):
    item = enqueue(queue, max_attempts=5)
    queue.claim(1, [], ["rpa.run"])
    assert queue.fail(item.id, 1, "bad input", retry=False).status == WorkStatus.failed
    assert queue.claim(1, [], ["rpa.run"]) == []


def test_enqueue_rejects_bad_input_naming_the_field(queue: WorkQueue):
    with queue.db.session() as s:
        for kwargs, field in (
            ({"on_expiry": "later"}, "on_expiry"),
            ({"max_attempts": 0}, "max_attempts"),
            ({"lease_s": -1}, "lease_s"),
            ({"labels": "linux"}, "labels"),
        ):
            with pytest.raises(ValueError, match=field):
                queue.enqueue(s, "rpa.run", {}, **kwargs)
        with pytest.raises(ValueError, match="kind"):
            queue.enqueue(s, "", {})


def test_list_filters_by_status_and_kind(queue: WorkQueue):
    a = enqueue(queue, "rpa.run")
    b = enqueue(queue, "monitor.check")
    queue.claim(1, [], ["monitor.check"])
    assert [i.id for i in queue.list()] == [b.id, a.id]
    assert [i.id for i in queue.list(status="leased")] == [b.id]
    assert [i.id for i in queue.list(kind="rpa.run")] == [a.id]


def test_lifecycle_rules_are_declared():
    by_name = {t.NAME: t for t in TRANSITIONS}
    assert set(by_name["claim"].FROM_STATES) == {WorkStatus.queued}
    assert by_name["complete"].OWNER_ONLY
    assert not any(TERMINAL & t.FROM_STATES for t in TRANSITIONS)


def test_long_poll_returns_when_an_item_is_enqueued(db: Database, bus: EventBus, tmp_path: Path):
    # Polling is set far beyond the wait, so only the in-process wake-up can deliver the item in time.
    queue = WorkQueue(db, bus, Settings(data_dir=tmp_path), poll_s=600)

    async def scenario() -> tuple[list[WorkItem], int]:
        waiting = asyncio.create_task(queue.fetch(5, [], ["rpa.run"], limit=1, wait_s=120))
        deadline = asyncio.get_running_loop().time() + 30
        while not queue._waiters:  # the fetcher has registered and is waiting
            assert asyncio.get_running_loop().time() < deadline, "fetch never started waiting"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        item = await asyncio.to_thread(enqueue, queue)
        return await asyncio.wait_for(waiting, timeout=60), item.id

    items, item_id = asyncio.run(scenario())
    assert [i.id for i in items] == [item_id]
    assert items[0].lease_owner == 5


def test_long_poll_gives_up_empty_after_wait(queue: WorkQueue):
    assert asyncio.run(queue.fetch(1, [], ["rpa.run"], wait_s=0.2)) == []
    item = enqueue(queue)
    assert [i.id for i in asyncio.run(queue.fetch(1, [], ["rpa.run"], wait_s=0))] == [item.id]


def test_register_jobs_schedules_lease_expiry(queue: WorkQueue, db: Database):
    scheduler = Scheduler(db)
    queue.register_jobs(scheduler)
    [job] = scheduler.jobs()
    assert (job.name, job.kind, job.spec) == ("work.expire_leases", "interval", "every 5s")

    item = enqueue(queue, lease_s=0.05)
    queue.claim(1, [], ["rpa.run"])
    deadline = utcnow() + dt.timedelta(seconds=30)
    while queue.get(item.id).status == WorkStatus.leased:
        assert utcnow() < deadline, "lease never expired"
        asyncio.run(scheduler.run_now("work.expire_leases"))
    assert queue.get(item.id).status == WorkStatus.queued


def test_work_over_http(server: RunningServer):
    admin = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=server.url + "/api/v1", timeout=90) as http:
        r = http.post("/agents/enrollments", json={"labels": ["linux"]}, headers=admin)
        assert r.status_code == 201, r.text
        r = http.post("/agents/enroll", json={"enrolment_token": r.json()["token"], "name": "worker-1"})
        assert r.status_code == 201, r.text
        agent = {"Authorization": f"Bearer {r.json()['token']}"}
        agent_id = r.json()["agent_id"]

        body = {"kind": "rpa.run", "payload": {"n": 1}, "labels": ["linux"]}
        r = http.post("/work", json=body, headers=admin)
        assert r.status_code == 201, r.text
        item_id = r.json()["id"]
        r = http.post("/work", json={"kind": "rpa.run", "on_expiry": "never"}, headers=admin)
        assert r.status_code == 422 and "on_expiry" in r.json()["detail"]
        r = http.post("/work", json={"kind": "rpa.run"}, headers=agent)
        assert r.status_code == 403

        r = http.post("/work/fetch", json={"kinds": ["rpa.run"], "limit": 5, "wait_s": 5}, headers=agent)
        assert r.status_code == 200, r.text
        [claimed] = r.json()
        assert (claimed["id"], claimed["lease_owner"], claimed["status"]) == (item_id, agent_id, "leased")
        r = http.post("/work/fetch", json={"kinds": ["rpa.run"], "wait_s": 61}, headers=agent)
        assert r.status_code == 422 and "wait_s" in r.json()["detail"]

        assert http.post(f"/work/{item_id}/renew", json={"lease_s": 120}, headers=agent).status_code == 200
        r = http.post(f"/work/{item_id}/complete", json={"result": {"ok": True}}, headers=agent)
        assert r.status_code == 200 and r.json()["status"] == "completed"
        r = http.post(f"/work/{item_id}/complete", json={"result": {}}, headers=agent)
        assert r.status_code == 409 and "is completed" in r.json()["detail"]
        assert http.post(f"/work/{item_id}/cancel", headers=admin).status_code == 409
        assert http.get("/work/999999", headers=admin).status_code == 404

        r = http.get(f"/work/{item_id}", headers=admin)
        assert r.json()["result"] == {"ok": True}
        r = http.get("/work", params={"status": "completed"}, headers=admin)
        assert [i["id"] for i in r.json()] == [item_id]

