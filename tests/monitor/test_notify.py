"""Webhook delivery to a real local HTTP server: backoff retries, giving up, isolation, secrets kept out."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from controltower.config import Settings
from controltower.core.db import Database
from controltower.monitor import alerts
from controltower.monitor.models import Alert, Notification
from controltower.monitor.notify import Notifier, backoff_s, enqueue, redact_url, url_host
from tests.monitor.webhook_receiver import Receiver
from tests.support import free_port

T0 = dt.datetime(2031, 3, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def receiver_factory() -> Iterator:
    made: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def fire_alert(db: Database, webhooks: dict[str, str]) -> int:
    """A firing alert with one queued notification per webhook; returns the alert id."""
    with db.session() as session:
        for name, url in webhooks.items():
            alerts.create_webhook(session, name=name, url=url)
        rule = alerts.create_rule(session, name="cpu", expr="host.cpu.percent > 90", severity="critical")
        alert = Alert(
            rule_id=rule.id,
            fingerprint="x",
            labels={"host": "a"},
            state="firing",
            value=97.5,
            pending_since=at(-30),
            fired_at=at(0),
            summary="host.cpu.percent{host=a} = 97.5 (> 90)",
        )
        session.add(alert)
        session.flush()
        assert enqueue(session, alert, rule, "firing", "test-tower", now=at(0)) == len(webhooks)
        return alert.id


def rows(db: Database) -> list[Notification]:
    with db.session() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def deliver(notifier: Notifier, now: dt.datetime):
    return asyncio.run(notifier.deliver_due(now=now))


def test_failed_deliveries_are_retried_with_exponential_backoff(db, tmp_path, receiver_factory):
    receiver = receiver_factory(fail_first=3)
    alert_id = fire_alert(db, {"ops": receiver.url + "/hook"})
    notifier = Notifier(db, Settings(data_dir=tmp_path, webhook_retries=5), base_delay_s=1.0)

    now = at(0)
    delays = []
    for _ in range(3):
        report = deliver(notifier, now)
        assert (report.sent, report.retrying) == (0, 1)
        (row,) = rows(db)
        delays.append((row.next_attempt_at - now).total_seconds())
        assert "HTTP 500" in row.last_error
        assert deliver(notifier, row.next_attempt_at - dt.timedelta(milliseconds=1)).sent == 0  # not due yet
        now = row.next_attempt_at
    assert delays == [1.0, 2.0, 4.0]

    assert deliver(notifier, now).sent == 1
    (row,) = rows(db)
    assert (row.status, row.attempts, row.sent_at, row.last_error) == ("sent", 4, now, None)
    assert len(receiver.bodies) == 4 and receiver.paths == ["/hook"] * 4
    body = receiver.bodies[-1]
    assert body["alert_id"] == alert_id and body["rule"] == "cpu" and body["state"] == "firing"
    assert body["labels"] == {"host": "a"} and body["value"] == 97.5 and body["severity"] == "critical"
    assert body["server"] == "test-tower" and body["fired_at"] == at(0).isoformat()
    assert body["pending_since"] == at(-30).isoformat() and body["resolved_at"] is None
    assert "97.5" in body["summary"]
    assert deliver(notifier, now + dt.timedelta(hours=1)).sent == 0  # sent once, never again


def test_delivery_gives_up_after_the_configured_retries(db, tmp_path, receiver_factory):
    receiver = receiver_factory(fail_first=1000)
    fire_alert(db, {"ops": receiver.url})
    notifier = Notifier(db, Settings(data_dir=tmp_path, webhook_retries=2), base_delay_s=1.0)
    now = at(0)
    for _ in range(3):
        deliver(notifier, now)
        now += dt.timedelta(hours=1)
    (row,) = rows(db)
    assert (row.status, row.attempts) == ("failed", 3)
    assert len(receiver.bodies) == 3
    deliver(notifier, now + dt.timedelta(days=1))
    assert len(receiver.bodies) == 3


def test_a_dead_webhook_does_not_hold_up_a_live_one(db, tmp_path, receiver_factory):
    receiver = receiver_factory()
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    fire_alert(db, {"dead": dead, "live": receiver.url})
    notifier = Notifier(db, Settings(data_dir=tmp_path, webhook_retries=3), base_delay_s=1.0, timeout_s=2.0)
    report = deliver(notifier, at(0))
    assert (report.sent, report.retrying) == (1, 1)
    by_status = {r.status: r for r in rows(db)}
    assert set(by_status) == {"sent", "pending"}
    assert by_status["pending"].attempts == 1 and by_status["pending"].last_error
    assert len(receiver.bodies) == 1


def test_webhook_secrets_stay_out_of_logs_errors_and_listings(db, tmp_path, receiver_factory, caplog):
    receiver = receiver_factory(fail_first=1000)
    secret_url = receiver.url + "/hooks/T0KEN-SECRET?key=ALSO-SECRET"
    fire_alert(db, {"ops": secret_url})
    notifier = Notifier(db, Settings(data_dir=tmp_path, webhook_retries=1), base_delay_s=1.0)
    with caplog.at_level(logging.DEBUG):
        deliver(notifier, at(0))
        deliver(notifier, at(3600))
    (row,) = rows(db)
    assert row.status == "failed"
    assert receiver.paths[0] == "/hooks/T0KEN-SECRET?key=ALSO-SECRET"  # the real URL was used
    logged = caplog.text + (row.last_error or "")
    assert "SECRET" not in logged
    assert url_host(secret_url) in caplog.text
    assert "SECRET" not in redact_url(secret_url) and redact_url(secret_url).endswith("/…")


def test_backoff_doubles_and_is_capped():
    assert [backoff_s(n, 2, 30) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
