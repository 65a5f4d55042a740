"""Webhook notifications: queue one row per webhook on an alert transition, deliver with backoff retries."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from controltower import __version__
from controltower.config import Settings
from controltower.core.db import Database, utcnow
from controltower.monitor.models import Alert, AlertRule, Notification, Webhook
from controltower.monitor.rules import severity_rank

log = logging.getLogger("controltower.monitor.notify")

BASE_DELAY_S = 2.0
MAX_DELAY_S = 600.0
TIMEOUT_S = 10.0
BATCH = 100
_ERROR_MAX = 500


class _RedactUrls(logging.Filter):
    """httpx logs every request's full URL at INFO; for webhook URLs in flight, show only the host."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: Counter[str] = Counter()  # URL -> requests in flight
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.urls and isinstance(record.args, tuple):
            with self.lock:
                urls = {u for u, n in self.urls.items() if n > 0}
            record.args = tuple(
                redact_url(str(a)) if isinstance(a, str | httpx.URL) and str(a) in urls else a
                for a in record.args
            )
        return True


_redact = _RedactUrls()
logging.getLogger("httpx").addFilter(_redact)


def url_host(url: str) -> str:
    """`host[:port]` of a URL: what logs and errors may show (the path and query may hold secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "?"


def redact_url(url: str) -> str:
    """`scheme://host[:port]/…`: enough to recognise a webhook without showing tokens in its path or query."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "?"
    hidden = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{url_host(url)}{hidden}"


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def build_payload(alert: Alert, rule: AlertRule, kind: str, server_name: str) -> dict[str, Any]:
    """The JSON a webhook receives for one alert transition (`kind` is firing, resolved or test)."""
    return {
        "kind": kind,
        "alert_id": alert.id,
        "rule": rule.name,
        "severity": rule.severity,
        "description": rule.description,
        "metric": rule.metric,
        "labels": dict(alert.labels),
        "state": alert.state,
        "value": alert.value,
        "summary": alert.summary,
        "pending_since": _iso(alert.pending_since),
        "fired_at": _iso(alert.fired_at),
        "resolved_at": _iso(alert.resolved_at),
        "server": server_name,
    }


def enqueue(
    session: Session,
    alert: Alert,
    rule: AlertRule,
    kind: str,
    server_name: str,
    now: dt.datetime | None = None,
) -> int:
    """Queue the transition for every enabled webhook whose minimum severity the rule reaches; in the
    caller's transaction, so a notification exists exactly when the transition does. Returns how many."""
    now = now or utcnow()
    count = 0
    payload = build_payload(alert, rule, kind, server_name)
    for hook in session.scalars(select(Webhook).where(Webhook.enabled.is_(True)).order_by(Webhook.id)):
        if severity_rank(rule.severity) < severity_rank(hook.min_severity):
            continue
        session.add(
            Notification(
                webhook_id=hook.id,
                alert_id=alert.id,
                kind=kind,
                payload=payload,
                next_attempt_at=now,
                created_at=now,
            )
        )
        count += 1
    return count


def backoff_s(attempts: int, base_s: float = BASE_DELAY_S, max_s: float = MAX_DELAY_S) -> float:
    """Delay before the next try after `attempts` failed ones: base, 2*base, 4*base, … capped at max."""
    return min(max_s, base_s * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class _Claimed:
    id: int
    url: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status: int | None
    error: str | None


@dataclass
class DeliveryReport:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


async def post_json(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> DeliveryResult:
    """POST once; any 2xx is success. Errors name the host only, never the full URL."""
    with _redact.lock:
        _redact.urls[url] += 1
    try:
        response = await client.post(url, json=payload)
    except httpx.HTTPError as exc:
        text = str(exc).replace(url, url_host(url)) or exc.__class__.__name__
        return DeliveryResult(False, None, f"{exc.__class__.__name__}: {text}"[:_ERROR_MAX])
    finally:
        with _redact.lock:
            _redact.urls[url] -= 1
            if _redact.urls[url] <= 0:
                del _redact.urls[url]
    if 200 <= response.status_code < 300:
        return DeliveryResult(True, response.status_code, None)
    body = response.text[:200].replace(url, url_host(url))
    return DeliveryResult(False, response.status_code, f"HTTP {response.status_code}: {body}"[:_ERROR_MAX])


def http_client(timeout_s: float = TIMEOUT_S) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout_s, follow_redirects=False, headers={"User-Agent": f"controltower/{__version__}"}
    )


class Notifier:
    """Delivers queued notifications. A slow or dead webhook delays only its own rows; each failure
    pushes the row's next attempt out exponentially until `settings.webhook_retries` retries are spent."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        base_delay_s: float = BASE_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        timeout_s: float = TIMEOUT_S,
        batch: int = BATCH,
    ) -> None:
        self.db = db
        self.settings = settings
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.batch = batch

    def _claim(self, now: dt.datetime) -> list[_Claimed]:
        """Due rows, each leased past the request timeout so an overlapping run cannot send it twice."""
        lease = now + dt.timedelta(seconds=self.timeout_s * 2 + 5)
        claimed: list[_Claimed] = []
        with self.db.session() as session:
            rows = session.execute(
                select(Notification, Webhook)
                .join(Webhook, Webhook.id == Notification.webhook_id)
                .where(Notification.status == "pending", Notification.next_attempt_at <= now)
                .order_by(Notification.next_attempt_at, Notification.id)
                .limit(self.batch)
            ).all()
            for notification, hook in rows:
                if not hook.enabled:
                    notification.status = "failed"
                    notification.last_error = "webhook disabled before delivery"
                    continue
                notification.next_attempt_at = lease
                claimed.append(
                    _Claimed(notification.id, hook.url, dict(notification.payload), notification.attempts)
                )
        return claimed

    def _record(self, results: list[tuple[_Claimed, DeliveryResult]], now: dt.datetime) -> DeliveryReport:
        report = DeliveryReport()
        with self.db.session() as session:
            for item, result in results:
                row = session.get(Notification, item.id)
                if row is None:  # its webhook or alert was deleted meanwhile
                    continue
                row.attempts = item.attempts + 1
                if result.ok:
                    row.status = "sent"
                    row.sent_at = now
                    row.last_error = None
                    report.sent += 1
                    continue
                row.last_error = result.error
                if row.attempts > self.settings.webhook_retries:
                    row.status = "failed"
                    report.failed += 1
                    log.warning(
                        "webhook to %s: notification %s failed after %s attempts: %s",
                        url_host(item.url),
                        item.id,
                        row.attempts,
                        result.error,
                    )
                else:
                    delay = backoff_s(row.attempts, self.base_delay_s, self.max_delay_s)
                    row.next_attempt_at = now + dt.timedelta(seconds=delay)
                    report.retrying += 1
                    log.info(
                        "webhook to %s: attempt %s of notification %s failed (%s); retry in %.0fs",
                        url_host(item.url),
                        row.attempts,
                        item.id,
                        result.error,
                        delay,
                    )
        return report

    async def deliver_due(self, now: dt.datetime | None = None) -> DeliveryReport:
        """Send every notification due at `now` (default: the current time), concurrently."""
        claimed = await asyncio.to_thread(self._claim, now or utcnow())
        if not claimed:
            return DeliveryReport()
        async with http_client(self.timeout_s) as client:
            outcomes = await asyncio.gather(*(post_json(client, c.url, c.payload) for c in claimed))
        finished = now or utcnow()  # backoff counts from when the attempt ended
        return await asyncio.to_thread(self._record, list(zip(claimed, outcomes, strict=True)), finished)


async def send_test(
    url: str, server_name: str, webhook_name: str, timeout_s: float = TIMEOUT_S
) -> DeliveryResult:
    """POST a sample payload to a webhook at once (no queue, no retry) and say how it went."""
    now = utcnow().isoformat()
    payload = {
        "kind": "test",
        "alert_id": None,
        "rule": "test",
        "severity": "info",
        "description": "",
        "metric": "",
        "labels": {"webhook": webhook_name},
        "state": "test",
        "value": None,
        "summary": f"test notification from {server_name}",
        "pending_since": now,
        "fired_at": now,
        "resolved_at": None,
        "server": server_name,
    }
    async with http_client(timeout_s) as client:
        return await post_json(client, url, payload)
