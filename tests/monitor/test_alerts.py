"""The alert state machine on a real SeriesStore and database: samples at controlled times, explicit `now`."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from controltower.config import Settings
from controltower.core.events import EventBus, recent
from controltower.core.series import Sample, SeriesStore
from controltower.monitor import alerts
from controltower.monitor.alerts import AlertEngine, Conflict, NotFound
from controltower.monitor.models import Alert, AlertRule, Notification
from controltower.monitor.rules import RuleError

T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def env(db, tmp_path):
    settings = Settings(data_dir=tmp_path)
    store = SeriesStore(db, settings)
    events = EventBus(db)
    engine = AlertEngine(db, store, events, server_name="test-tower")
    return SimpleNamespace(db=db, store=store, events=events, engine=engine)


def put(env, name: str, labels: dict[str, str], seconds: float, value: float) -> None:
    env.store.write([Sample(name, labels, at(seconds).timestamp(), value)])


def put_every(env, name: str, labels: dict[str, str], start: float, end: float, value: float, step=10.0):
    samples = []
    t = start
    while t <= end:
        samples.append(Sample(name, labels, at(t).timestamp(), value))
        t += step
    env.store.write(samples)


def add_rule(env, name: str, **fields) -> None:
    with env.db.session() as session:
        alerts.create_rule(session, name=name, **fields)


def add_webhook(env, name: str = "hook", min_severity: str = "info") -> None:
    with env.db.session() as session:
        alerts.create_webhook(session, name=name, url="http://127.0.0.1:9/hook", min_severity=min_severity)


def open_alerts(env, rule: str | None = None) -> list[Alert]:
    with env.db.session() as session:
        rows = alerts.list_alerts(session, alerts.OPEN_STATES, rule_name=rule)
        return [a for a, _r in rows]


def all_alerts(env) -> list[Alert]:
    with env.db.session() as session:
        return list(session.scalars(select(Alert).order_by(Alert.id)))


def notifications(env) -> list[Notification]:
    with env.db.session() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def topics(env) -> list[str]:
    with env.db.session() as session:
        return [e.topic for e in recent(session, "monitor.alert.#", limit=1000)]


def test_pending_becomes_firing_once_true_for_the_whole_duration(env):
    add_rule(env, "cpu", expr="host.cpu.percent > 90 for 30s")
    put(env, "host.cpu.percent", {"host": "a"}, 0, 95)
    put(env, "host.cpu.percent", {"host": "b"}, 0, 40)

    report = env.engine.evaluate(now=at(0))
    assert report.pending == 1 and report.firing == 0
    (alert,) = open_alerts(env)
    assert alert.state == "pending" and alert.labels == {"host": "a"} and alert.pending_since == at(0)

    put(env, "host.cpu.percent", {"host": "a"}, 10, 96)
    env.engine.evaluate(now=at(10))
    assert [a.state for a in open_alerts(env)] == ["pending"]

    put(env, "host.cpu.percent", {"host": "a"}, 30, 97)
    report = env.engine.evaluate(now=at(30))
    assert report.firing == 1
    (alert,) = open_alerts(env)
    assert (alert.state, alert.fired_at, alert.value) == ("firing", at(30), 97)
    assert "host.cpu.percent" in alert.summary and "97" in alert.summary
    assert topics(env) == ["monitor.alert.firing"]

    env.engine.evaluate(now=at(35))  # still true: no second instance, no second event
    assert len(all_alerts(env)) == 1
    assert topics(env) == ["monitor.alert.firing"]


def test_pending_resets_when_the_condition_clears(env):
    add_rule(env, "cpu", expr="host.cpu.percent > 90 for 30s")
    put(env, "host.cpu.percent", {"host": "a"}, 0, 95)
    env.engine.evaluate(now=at(0))
    put(env, "host.cpu.percent", {"host": "a"}, 20, 50)
    report = env.engine.evaluate(now=at(20))
    assert report.reset == 1
    assert all_alerts(env) == []

    put(env, "host.cpu.percent", {"host": "a"}, 40, 95)
    env.engine.evaluate(now=at(40))
    put(env, "host.cpu.percent", {"host": "a"}, 60, 95)
    env.engine.evaluate(now=at(60))  # 20 s since the restart: not yet
    (alert,) = open_alerts(env)
    assert alert.state == "pending" and alert.pending_since == at(40)
    put(env, "host.cpu.percent", {"host": "a"}, 70, 95)
    env.engine.evaluate(now=at(70))
    assert [a.state for a in open_alerts(env)] == ["firing"]
    assert topics(env) == ["monitor.alert.firing"]


def test_for_zero_fires_at_once_resolves_and_a_new_breach_is_a_new_instance(env):
    add_rule(env, "down", expr="host.up == 0", severity="critical")
    put(env, "host.up", {"host": "a"}, 0, 0)
    report = env.engine.evaluate(now=at(0))
    assert (report.pending, report.firing) == (1, 1)
    (first,) = open_alerts(env)
    assert first.state == "firing"

    put(env, "host.up", {"host": "a"}, 10, 1)
    assert env.engine.evaluate(now=at(10)).resolved == 1
    assert open_alerts(env) == []

    put(env, "host.up", {"host": "a"}, 20, 0)
    env.engine.evaluate(now=at(20))
    (second,) = open_alerts(env)
    assert second.id != first.id and second.state == "firing"
    states = {a.id: (a.state, a.resolved_at) for a in all_alerts(env)}
    assert states[first.id] == ("resolved", at(10))
    assert topics(env) == ["monitor.alert.firing", "monitor.alert.resolved", "monitor.alert.firing"]


def test_hysteresis_keeps_firing_until_the_recovery_threshold(env):
    add_rule(env, "disk", expr="host.disk.percent > 90", recovery_threshold=80)
    labels = {"host": "a", "mount": "/"}
    put(env, "host.disk.percent", labels, 0, 95)
    env.engine.evaluate(now=at(0))
    put(env, "host.disk.percent", labels, 10, 85)
    env.engine.evaluate(now=at(10))
    (alert,) = open_alerts(env)
    assert alert.state == "firing" and alert.value == 85
    put(env, "host.disk.percent", labels, 20, 79)
    assert env.engine.evaluate(now=at(20)).resolved == 1
    assert open_alerts(env) == []


def test_one_alert_per_labelled_series_and_label_selectors(env):
    add_rule(env, "root-full", metric="host.disk.percent", labels={"mount": "/"}, op=">", threshold=90)
    for host in ("a", "b"):
        put(env, "host.disk.percent", {"host": host, "mount": "/"}, 0, 99)
        put(env, "host.disk.percent", {"host": host, "mount": "/data"}, 0, 99)
    env.engine.evaluate(now=at(0))
    env.engine.evaluate(now=at(1))
    got = sorted((a.labels["host"], a.labels["mount"]) for a in open_alerts(env))
    assert got == [("a", "/"), ("b", "/")]


def test_missing_data_never_resolves_a_firing_alert(env):
    add_rule(env, "cpu", expr="host.cpu.percent > 90", recovery_threshold=80)
    put_every(env, "host.cpu.percent", {"host": "a"}, -60, 0, 95)
    env.engine.evaluate(now=at(0))
    assert [a.state for a in open_alerts(env)] == ["firing"]

    # The agent goes quiet; its last sample said 95 and then nothing for 10 minutes.
    report = env.engine.evaluate(now=at(600))
    assert report.stale == 1 and report.resolved == 0
    (alert,) = open_alerts(env)
    assert alert.state == "firing" and alert.last_eval_at == at(600)

    put(env, "host.cpu.percent", {"host": "a"}, 610, 10)  # data again, and recovered
    assert env.engine.evaluate(now=at(610)).resolved == 1


def test_stale_data_neither_starts_nor_fires_an_alert(env):
    add_rule(env, "cpu", expr="host.cpu.percent > 90 for 30s")
    put_every(env, "host.cpu.percent", {"host": "old"}, -900, -600, 99)  # last seen 10 minutes ago
    put_every(env, "host.cpu.percent", {"host": "live"}, -20, 0, 99)
    env.engine.evaluate(now=at(0))
    assert [a.labels["host"] for a in open_alerts(env)] == ["live"]

    # The live one goes quiet while pending: it may not fire on old data, nor reset.
    report = env.engine.evaluate(now=at(300))
    assert report.firing == 0
    assert [(a.labels["host"], a.state) for a in open_alerts(env)] == [("live", "pending")]


def test_an_open_alert_is_unique_per_fingerprint_in_the_database(env):
    add_rule(env, "down", expr="host.up == 0")
    put(env, "host.up", {"host": "a"}, 0, 0)
    env.engine.evaluate(now=at(0))
    (alert,) = open_alerts(env)
    with pytest.raises(IntegrityError), env.db.session() as session:
        session.add(
            Alert(
                rule_id=alert.rule_id,
                fingerprint=alert.fingerprint,
                labels=alert.labels,
                state="pending",
                pending_since=at(1),
            )
        )
        session.flush()


def test_transitions_queue_one_notification_per_webhook_with_the_payload(env):
    add_webhook(env, "all")
    add_webhook(env, "critical-only", min_severity="critical")
    add_rule(env, "cpu", expr="host.cpu.percent > 90", severity="warning")
    put(env, "host.cpu.percent", {"host": "a"}, 0, 95)
    assert env.engine.evaluate(now=at(0)).notifications == 1
    (note,) = notifications(env)
    assert note.kind == "firing" and note.status == "pending"
    payload = note.payload
    assert payload["rule"] == "cpu" and payload["labels"] == {"host": "a"} and payload["state"] == "firing"
    assert payload["value"] == 95 and payload["server"] == "test-tower" and payload["severity"] == "warning"
    assert payload["alert_id"] == note.alert_id and payload["fired_at"] == at(0).isoformat()

    put(env, "host.cpu.percent", {"host": "a"}, 10, 20)
    env.engine.evaluate(now=at(10))
    kinds = [(n.kind, n.payload["state"]) for n in notifications(env)]
    assert kinds == [("firing", "firing"), ("resolved", "resolved")]
    assert notifications(env)[1].payload["resolved_at"] == at(10).isoformat()


def test_a_silence_suppresses_notifications_but_not_state_changes(env):
    add_webhook(env)
    add_rule(env, "down", expr="host.up == 0")
    with env.db.session() as session:
        silence = alerts.create_silence(
            session, rule_name="down", labels={"host": "a"}, ends_at=at(100), reason="maintenance", now=at(-1)
        )
        silence_id = silence.id
    put(env, "host.up", {"host": "a"}, 0, 0)
    put(env, "host.up", {"host": "b"}, 0, 0)
    env.engine.evaluate(now=at(0))

    by_host = {a.labels["host"]: a for a in open_alerts(env)}
    assert by_host["a"].state == by_host["b"].state == "firing"
    assert by_host["a"].silenced and not by_host["b"].silenced
    assert [n.payload["labels"]["host"] for n in notifications(env)] == ["b"]
    assert topics(env).count("monitor.alert.firing") == 2  # events are state, not notifications

    with env.db.session() as session:
        alerts.expire_silence(session, silence_id, now=at(5))
    put(env, "host.up", {"host": "a"}, 10, 1)
    env.engine.evaluate(now=at(10))
    assert [(n.kind, n.payload["labels"]["host"]) for n in notifications(env)] == [
        ("firing", "b"),
        ("resolved", "a"),
    ]


def test_an_expired_silence_stops_applying(env):
    add_webhook(env)
    add_rule(env, "down", expr="host.up == 0")
    with env.db.session() as session:
        alerts.create_silence(session, labels={"host": "a"}, ends_at=at(60), now=at(0))
        assert [s.id for s in alerts.list_silences(session, now=at(30))]
        assert alerts.list_silences(session, now=at(61)) == []
    put(env, "host.up", {"host": "a"}, 120, 0)
    env.engine.evaluate(now=at(120))
    (alert,) = open_alerts(env)
    assert not alert.silenced
    assert len(notifications(env)) == 1


def test_silence_needs_a_matcher_and_a_known_rule(env):
    with env.db.session() as session:
        with pytest.raises(RuleError) as info:
            alerts.create_silence(session, ends_at=at(60), now=at(0))
        assert info.value.field == "rule_name"
        with pytest.raises(RuleError) as info:
            alerts.create_silence(session, rule_name="nope", ends_at=at(60), now=at(0))
        assert "no alert rule" in str(info.value)
        with pytest.raises(RuleError) as info:
            alerts.create_silence(session, labels={"host": "a"}, ends_at=at(-1), now=at(0))
        assert info.value.field == "ends_at"
        with pytest.raises(NotFound):
            alerts.expire_silence(session, 12345)


def test_acknowledge(env):
    add_rule(env, "down", expr="host.up == 0")
    put(env, "host.up", {"host": "a"}, 0, 0)
    env.engine.evaluate(now=at(0))
    (alert,) = open_alerts(env)
    with env.db.session() as session:
        acked, rule = alerts.ack_alert(session, env.events, alert.id, "alice", now=at(5))
        assert (acked.acked_by, acked.acked_at, rule.name) == ("alice", at(5), "down")
    with env.db.session() as session:
        again, _ = alerts.ack_alert(session, env.events, alert.id, "bob", now=at(6))
        assert (again.acked_by, again.acked_at) == ("alice", at(5))  # the first ack stands
    assert topics(env).count("monitor.alert.acked") == 1

    env.engine.evaluate(now=at(10))  # still firing: acked, and no new notification or instance
    (alert,) = open_alerts(env)
    assert alert.acked_by == "alice" and alert.state == "firing"

    put(env, "host.up", {"host": "a"}, 20, 1)
    env.engine.evaluate(now=at(20))
    with env.db.session() as session:
        with pytest.raises(Conflict):
            alerts.ack_alert(session, env.events, alert.id, "alice")
        with pytest.raises(NotFound):
            alerts.ack_alert(session, env.events, 99999, "alice")


def test_rule_validation_names_the_field(env):
    cases = [
        ({"expr": "host.cpu.percent > 90", "metric": "x"}, "expr"),
        ({"metric": "host.cpu.percent", "op": ">"}, "threshold"),
        ({"metric": "host.cpu.percent", "op": "~", "threshold": 1}, "op"),
        ({"expr": "host.cpu.percent > 90 for 5m", "for_s": 60}, "for_s"),
        ({"expr": "host.cpu.percent > 90", "recovery_threshold": 95}, "recovery_threshold"),
        ({"expr": "host.cpu.percent >"}, "expr"),
        ({"expr": "host.cpu.percent > 90", "severity": "panic"}, "severity"),
        ({"expr": "host.cpu.percent > 90", "name": "bad name!"}, "name"),
    ]
    with env.db.session() as session:
        for fields, field in cases:
            fields = {"name": "r", **fields}
            with pytest.raises(RuleError) as info:
                alerts.create_rule(session, **fields)
            assert info.value.field == field, fields
        rule = alerts.create_rule(
            session,
            name="r",
            metric="m",
            labels={"k": "v"},
            op="<",
            threshold=5,
            for_s="1m",
            recovery_threshold=10,
        )
        assert (rule.metric, rule.labels, rule.op, rule.threshold, rule.for_s, rule.recovery_threshold) == (
            "m",
            {"k": "v"},
            "<",
            5,
            60,
            10,
        )
        with pytest.raises(Conflict):
            alerts.create_rule(session, name="r", expr="m > 1")


def test_disabling_or_retargeting_a_rule_closes_its_open_alerts(env):
    add_webhook(env)
    add_rule(env, "down", expr="host.up == 0")
    add_rule(env, "cpu", expr="host.cpu.percent > 90 for 1m")
    put(env, "host.up", {"host": "a"}, 0, 0)
    put(env, "host.cpu.percent", {"host": "a"}, 0, 99)
    env.engine.evaluate(now=at(0))
    assert sorted(a.state for a in open_alerts(env)) == ["firing", "pending"]

    with env.db.session() as session:
        alerts.update_rule(session, env.events, "down", {"enabled": False}, now=at(5))
        alerts.update_rule(session, env.events, "cpu", {"expr": "host.cpu.percent{host=b} > 90"}, now=at(5))
    assert open_alerts(env) == []
    assert [n.kind for n in notifications(env)] == ["firing", "resolved"]
    env.engine.evaluate(now=at(10))  # the disabled rule no longer evaluates
    assert open_alerts(env) == []

    with env.db.session() as session:
        rule = alerts.update_rule(session, env.events, "cpu", {"threshold": 95, "recovery_threshold": 90})
        assert (rule.metric, rule.labels, rule.threshold, rule.for_s, rule.recovery_threshold) == (
            "host.cpu.percent",
            {"host": "b"},
            95,
            0,
            90,
        )
        rule = alerts.update_rule(session, env.events, "cpu", {"recovery_threshold": None})
        assert rule.recovery_threshold is None


def test_default_rules_are_created_once_and_cannot_be_deleted(env):
    with env.db.session() as session:
        created = alerts.ensure_default_rules(session)
    assert created == ["host-cpu-high", "host-memory-high", "host-disk-full", "host-down"]
    with env.db.session() as session:
        assert alerts.ensure_default_rules(session) == []
        rules = {r.name: r for r in alerts.list_rules(session)}
        assert all(r.builtin for r in rules.values()) and len(rules) == 4
        cpu = rules["host-cpu-high"]
        assert (cpu.metric, cpu.op, cpu.threshold, cpu.for_s) == ("host.cpu.percent", ">", 90, 300)
        down = rules["host-down"]
        assert (down.metric, down.op, down.threshold, down.severity) == ("host.up", "==", 0, "critical")
        with pytest.raises(Conflict):
            alerts.delete_rule(session, "host-down")

    put(env, "host.up", {"host": "web"}, 0, 0)
    env.engine.evaluate(now=at(0))
    (alert,) = open_alerts(env)
    with env.db.session() as session:
        assert session.get(AlertRule, alert.rule_id).name == "host-down"


def test_a_sparse_series_is_judged_by_its_own_interval(env):
    add_rule(env, "nightly", expr="job.ok == 0")
    put_every(env, "job.ok", {"job": "backup"}, -17400, -3000, 0, step=7200)  # every 2 h, last 50 min ago
    env.engine.evaluate(now=at(0))
    assert [a.state for a in open_alerts(env)] == ["firing"]


def test_prune_removes_old_resolved_alerts_their_notifications_and_ended_silences(env):
    add_webhook(env)
    add_rule(env, "down", expr="host.up == 0")
    with env.db.session() as session:
        alerts.create_silence(session, labels={"host": "z"}, ends_at=at(60), now=at(0))
    put(env, "host.up", {"host": "a"}, 0, 0)
    put(env, "host.up", {"host": "b"}, 0, 0)
    env.engine.evaluate(now=at(0))
    put(env, "host.up", {"host": "a"}, 10, 1)
    env.engine.evaluate(now=at(10))
    assert len(notifications(env)) == 3

    with env.db.session() as session:
        assert alerts.prune(session, at(5)) == {"alerts": 0, "silences": 0}
    with env.db.session() as session:
        assert alerts.prune(session, at(3600)) == {"alerts": 1, "silences": 1}
    assert [(a.labels["host"], a.state) for a in all_alerts(env)] == [("b", "firing")]
    assert [n.payload["labels"]["host"] for n in notifications(env)] == ["b"]
