"""Hosts: metrics ingestion with the host label forced, liveness from heartbeats, and the hosts API."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import httpx
import pytest

from controltower.client import ApiError
from controltower.core.agents import register_agent
from controltower.core.db import Database
from controltower.core.events import recent
from controltower.monitor import hosts
from controltower.monitor.models import Host
from controltower.monitor.schemas import METRICS_PUSH, MetricsPush
from tests.monitor.check_targets import enrol_agent, make_ctx
from tests.support import start_server, wait_for


def _samples(ts: float) -> dict:
    return {
        "ts": ts,
        "samples": [
            {"name": "host.cpu.percent", "labels": {"host": "spoofed"}, "value": 12.5},
            {"name": "host.memory.percent", "labels": {}, "value": 40.0},
            {"name": "host.disk.percent", "labels": {"mount": "/"}, "value": 70.0},
            {"name": "host.disk.percent", "labels": {"mount": "/data"}, "value": 91.0},
        ],
        "dropped": 3,
    }


def test_ingest_forces_the_host_label_and_counts(db, tmp_path):
    ctx = make_ctx(db, tmp_path)
    with db.session() as session:
        agent = register_agent(session, name="web1", facts={}, labels=[], capacity=1, version=None)
    push = METRICS_PUSH.validate_python(_samples(time.time()))
    for _ in range(2):
        with db.session() as session:
            host, stored = hosts.ingest_metrics(ctx, session, agent.id, push)
            assert stored == 4
    with db.session() as session:
        host, _ = hosts.read_host(session, "web1")
        assert (host.samples_received, host.samples_dropped_by_agent, host.status) == (8, 6, "unknown")
        assert host.last_metrics_at is not None
    latest = ctx.series.latest(name_prefix="host.")
    assert {s.labels["host"] for s in latest} == {"web1"}
    assert {(s.name, s.labels.get("mount")) for s in latest} == {
        ("host.cpu.percent", None),
        ("host.memory.percent", None),
        ("host.disk.percent", "/"),
        ("host.disk.percent", "/data"),
    }
    with db.session() as session, pytest.raises(hosts.AgentGone):
        hosts.ingest_metrics(ctx, session, agent.id + 100, push)


def test_agent_names_are_remembered_per_database(tmp_path):
    """The same agent id in two databases is two agents: each push is counted on its own database's host."""
    names = {}
    contexts = []
    for n in ("a", "b"):
        db = Database(f"sqlite:///{tmp_path / n}.db")
        db.migrate()
        ctx = make_ctx(db, tmp_path / n)
        with db.session() as session:
            agent = register_agent(session, name=f"host-{n}", facts={}, labels=[], capacity=1, version=None)
        names[n], _ = asyncio.run(hosts.receive_metrics(ctx, agent.id, METRICS_PUSH.validate_python(
            _samples(time.time()))))
        contexts.append((n, ctx, agent.id))
    assert names == {"a": "host-a", "b": "host-b"}
    for n, ctx, agent_id in contexts:  # again, now that both names are known
        name, stored = asyncio.run(hosts.receive_metrics(ctx, agent_id, METRICS_PUSH.validate_python(
            _samples(time.time() + 1))))
        assert (name, stored) == (f"host-{n}", 4)
        with ctx.db.session() as session:
            assert [h.name for h, _ in hosts.read_hosts(session)] == [f"host-{n}"]
        ctx.db.dispose()


def test_liveness_marks_down_and_up_and_publishes(db, tmp_path):
    ctx = make_ctx(db, tmp_path)
    now = dt.datetime(2031, 1, 1, 12, 0, tzinfo=dt.UTC)
    with db.session() as session:
        agent = register_agent(session, name="web1", facts={}, labels=[], capacity=1, version=None)
        agent.heartbeat_interval_s = 10.0
        agent.last_seen = now - dt.timedelta(seconds=29)
    with db.session() as session:
        hosts.ingest_metrics(ctx, session, agent.id, MetricsPush(ts=now.timestamp(), samples=[], dropped=0))
    assert hosts.evaluate_liveness(ctx, now) == {"web1": "up"}  # 29 s < 3 missed heartbeats of 10 s
    assert hosts.evaluate_liveness(ctx, now + dt.timedelta(seconds=2)) == {"web1": "down"}
    assert ctx.series.latest(name="host.up")[0].value == 0.0
    with db.session() as session:
        agent = session.get(type(agent), agent.id)
        agent.last_seen = now + dt.timedelta(seconds=5)
    assert hosts.evaluate_liveness(ctx, now + dt.timedelta(seconds=6)) == {"web1": "up"}
    assert ctx.series.latest(name="host.up")[0].value == 1.0
    with db.session() as session:
        topics = [(e.topic, e.payload["host"], e.payload["from"]) for e in recent(session, "monitor.host.*")]
        host, _ = hosts.read_host(session, "web1")
        assert [(c["from"], c["to"]) for c in host.history] == [
            ("unknown", "up"),
            ("up", "down"),
            ("down", "up"),
        ]
    assert topics == [
        ("monitor.host.up", "web1", "unknown"),
        ("monitor.host.down", "web1", "up"),
        ("monitor.host.up", "web1", "down"),
    ]


def test_facts_summary_looks_into_plugin_sections():
    facts = {"monitor": {"os_release": "Debian 12", "cpu_cores": 8, "python": "3.11"}, "arch": "x86_64"}
    assert hosts.facts_summary(facts) == {"os_release": "Debian 12", "arch": "x86_64", "cpu_cores": 8}
    assert hosts.facts_summary({"color": "blue"}) == {"color": "blue"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b["samples"][1].update(labels=[["core", "0"]]), "samples.1.labels"),
        (lambda b: b["samples"][2].pop("value"), "samples.2.value"),
        (lambda b: b["samples"][0].update(unit="%"), "samples.0.unit"),
        (lambda b: b["samples"].__setitem__(3, "cpu=5"), "samples.3"),
        (lambda b: b.update(ts=-5), "ts"),
        (lambda b: b.update(ts="now"), "ts"),
        (lambda b: b.update(samples={"cpu": 5}), "samples"),
        (lambda b: b.update(extra=1), "extra"),
        (lambda b: b["samples"][0].update(name=7), "samples.0.name"),
        (lambda b: b["samples"][0].update(labels={"core": 1}), "samples.0.labels.core"),
    ],
)
def test_a_malformed_push_is_a_422_naming_the_field(server, change, field: str) -> None:
    agent = enrol_agent(server.client(), f"bad-{field.replace('.', '-')}")
    body = _samples(time.time())
    change(body)
    with pytest.raises(ApiError) as info:
        agent.post("monitor/hosts/metrics", body)
    assert info.value.status == 422
    assert field in str(info.value.detail), info.value.detail


def test_metrics_api_hosts_list_detail_and_delete(server):
    admin = server.client()
    agent = enrol_agent(admin, "web1", facts={"os_release": "Debian 12", "cpu_cores": 4, "extra": "x"})
    accepted = agent.post("monitor/hosts/metrics", _samples(time.time()))
    assert accepted == {"host": "web1", "accepted": 4}

    bad = _samples(time.time())
    bad["samples"][3]["value"] = "lots"
    with pytest.raises(ApiError) as info:
        agent.post("monitor/hosts/metrics", bad)
    assert info.value.status == 422 and "samples.3.value" in info.value.detail
    with pytest.raises(ApiError) as info:
        agent.post("monitor/hosts/metrics", {**_samples(time.time()), "dropped": -1})
    assert info.value.status == 422 and info.value.detail.startswith("dropped:")
    with pytest.raises(ApiError) as info:
        admin.post("monitor/hosts/metrics", _samples(time.time()))
    assert info.value.status == 403

    [row] = admin.get("monitor/hosts")
    assert row["name"] == "web1" and row["samples_received"] == 4 and row["samples_dropped_by_agent"] == 3
    assert (row["cpu_percent"], row["memory_percent"], row["disk_percent"]) == (12.5, 40.0, 91.0)
    assert row["facts"] == {"os_release": "Debian 12", "cpu_cores": 4}
    detail = admin.get("monitor/hosts/web1")
    assert detail["all_facts"]["extra"] == "x"
    metrics = {(m["name"], m["labels"].get("mount")): m["value"] for m in detail["metrics"]}
    assert metrics[("host.disk.percent", "/data")] == 91.0 and metrics[("host.cpu.percent", None)] == 12.5
    assert all(m["labels"]["host"] == "web1" for m in detail["metrics"])

    with pytest.raises(ApiError) as info:
        agent.delete("monitor/hosts/web1")
    assert info.value.status == 403
    admin.delete("monitor/hosts/web1")
    with pytest.raises(ApiError) as info:
        admin.get("monitor/hosts/web1")
    assert info.value.status == 404
    assert admin.get("monitor/hosts") == []
    assert httpx.get(server.url + "/api/v1/monitor/hosts").status_code == 401


def test_host_goes_down_when_heartbeats_stop_and_up_when_they_resume(tmp_path: Path):
    srv = start_server(tmp_path / "data", env={"CT_AGENT_HEARTBEAT_S": "2"})
    try:
        admin = srv.client()
        agent = enrol_agent(admin, "edge1")
        agent.post("agents/heartbeat", {"interval_s": 0.5})
        agent.post("monitor/hosts/metrics", _samples(time.time()))
        wait_for(lambda: admin.get("monitor/hosts/edge1")["status"] == "up", message="host UP")
        # No heartbeat for 3 x 0.5 s: DOWN.
        detail = wait_for(
            lambda: (d := admin.get("monitor/hosts/edge1"))["status"] == "down" and d, message="host DOWN"
        )
        assert [(h["from_status"], h["to_status"]) for h in detail["history"]] == [
            ("up", "down"),
            ("unknown", "up"),
        ]
        downs = admin.get("events", topic="monitor.host.down")
        assert downs[-1]["payload"]["host"] == "edge1"
        agent.post("agents/heartbeat", {"interval_s": 0.5})
        wait_for(lambda: admin.get("monitor/hosts/edge1")["status"] == "up", message="host UP again")
        assert admin.get("events", topic="monitor.host.up")[-1]["payload"]["from"] == "down"
    finally:
        srv.stop()


def test_host_row_reappears_when_a_deleted_host_pushes_again(db, tmp_path):
    ctx = make_ctx(db, tmp_path)
    with db.session() as session:
        agent = register_agent(session, name="web1", facts={}, labels=[], capacity=1, version=None)
    push = METRICS_PUSH.validate_python(_samples(time.time()))
    with db.session() as session:
        hosts.ingest_metrics(ctx, session, agent.id, push)
    with db.session() as session:
        hosts.delete_host(session, "web1")
        with pytest.raises(hosts.HostNotFound):
            hosts.read_host(session, "web1")
    with db.session() as session:
        hosts.ingest_metrics(ctx, session, agent.id, push)
    with db.session() as session:
        assert session.get(Host, hosts.read_host(session, "web1")[0].id).samples_received == 4


def test_pushes_sharing_a_transaction_are_each_counted_and_a_deleted_host_comes_back(db, tmp_path):
    """receive_metrics, as the API calls it: on SQLite pushes share group-commit transactions and their counts
    are written together at commit (host_counts.count_at_commit), the same agent possibly twice in one."""
    ctx = make_ctx(db, tmp_path)
    with db.session() as session:
        web1 = register_agent(session, name="web1", facts={}, labels=[], capacity=1, version=None).id
        web2 = register_agent(session, name="web2", facts={}, labels=[], capacity=1, version=None).id
    start = time.time() - 1000

    async def push_rounds(first: int, rounds: int) -> None:
        await asyncio.gather(*(
            hosts.receive_metrics(ctx, agent_id, METRICS_PUSH.validate_python(_samples(start + n)))
            for n in range(first, first + rounds) for agent_id in (web1, web2)
        ))

    def counted() -> dict[str, tuple[int, int]]:
        with db.read_session() as session:
            return {h.name: (h.samples_received, h.samples_dropped_by_agent) for h in session.query(Host)}

    asyncio.run(push_rounds(0, 1))  # the first push of each creates its Host
    asyncio.run(push_rounds(1, 10))
    assert counted() == {"web1": (44, 33), "web2": (44, 33)}
    with db.session() as session:
        hosts.delete_host(session, "web1")
    asyncio.run(push_rounds(11, 5))
    assert counted() == {"web1": (20, 15), "web2": (64, 48)}  # web1 counted again from its next push


def test_repeated_pushes_of_the_same_series_are_stored_and_still_checked(server):
    """From its second push on, an agent's unchanged series skip per-sample validation (hosts._PushShape):
    values must still land, bad values still be refused by field, and a changed layout still be keyed."""
    admin = server.client()
    agent = enrol_agent(admin, "web1")
    start = time.time() - 100
    for n in range(4):  # the first creates the series, the second makes the shape, the rest use it
        body = _samples(start + n)
        body["samples"][0]["value"] = float(n)
        assert agent.post("monitor/hosts/metrics", body)["accepted"] == 4
    bad = _samples(start + 10)
    bad["samples"][2]["value"] = True
    with pytest.raises(ApiError) as info:
        agent.post("monitor/hosts/metrics", bad)
    assert info.value.status == 422 and "samples.2.value" in info.value.detail
    moved = _samples(start + 11)
    moved["samples"][2]["labels"] = {"mount": "/srv"}  # same count, another series
    agent.post("monitor/hosts/metrics", moved)

    metrics = {(m["name"], m["labels"].get("mount")): m for m in admin.get("monitor/hosts/web1")["metrics"]}
    assert metrics[("host.cpu.percent", None)]["value"] == 12.5  # the last push's
    assert metrics[("host.disk.percent", "/srv")]["value"] == 70.0
    cpu = admin.get("series/query", name="host.cpu.percent", start=start - 1, end=start + 20)["series"]
    assert [point[1] for point in cpu[0]["points"]] == [0.0, 1.0, 2.0, 3.0, 12.5]
    [row] = admin.get("monitor/hosts")
    assert row["samples_received"] == 4 * 5


def test_a_push_larger_than_the_inline_limit_is_validated_aside_and_stored(server):
    """Pushes of up to INLINE_SAMPLES are validated on the event loop, larger ones on a thread: same outcome."""
    agent = enrol_agent(server.client(), "big1")
    size = hosts.INLINE_SAMPLES + 1
    samples = [{"name": "host.cpu.core.percent", "labels": {"core": str(i)}, "value": float(i % 100)}
               for i in range(size)]
    assert agent.post("monitor/hosts/metrics", {"ts": time.time(), "samples": samples}) == {
        "host": "big1", "accepted": size}
    samples[size - 1] = {**samples[size - 1], "name": "9bad"}
    with pytest.raises(ApiError) as info:
        agent.post("monitor/hosts/metrics", {"ts": time.time() + 1, "samples": samples})
    assert info.value.status == 422 and info.value.detail.startswith(f"samples.{size - 1}.name")
    [row] = server.client().get("monitor/hosts")
    assert (row["name"], row["samples_received"]) == ("big1", size)  # the refused push stored nothing
