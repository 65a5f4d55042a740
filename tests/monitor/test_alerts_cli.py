"""End to end on a real server: samples in, a rule fires, a webhook hears it, the CLI acks and lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from controltower.client import ApiError
from tests.monitor.webhook_receiver import Receiver
from tests.support import RunningServer, wait_for

BUILTIN = {"host-cpu-high", "host-memory-high", "host-disk-full", "host-down"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def ctower(server: RunningServer, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "controltower", *args, "--server", server.url, "--token", server.token]
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps tables to 80 columns when not on a terminal
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    if ok:
        assert proc.returncode == 0, f"{args} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def ctower_json(server: RunningServer, *args: str):
    return json.loads(ctower(server, *args, "--json").stdout)


def write(server: RunningServer, value: float, host: str = "x") -> None:
    with server.client() as client:
        client.post(
            "series",
            {"samples": [{"name": "e2e.load", "labels": {"host": host}, "ts": time.time(), "value": value}]},
        )


def test_rule_fires_webhook_receives_cli_acks_and_silences(server, receiver):
    with server.client() as client:
        rules = wait_for(
            lambda: (
                {r["name"] for r in client.get("monitor/rules")} >= BUILTIN and client.get("monitor/rules")
            ),
            message="builtin rules",
        )
        assert all(r["builtin"] for r in rules if r["name"] in BUILTIN)

    ctower(server, "webhooks", "add", "ops", receiver.url + "/hook/s3cret-token", "--min-severity", "warning")
    ctower(
        server,
        "rules",
        "add",
        "e2e-load",
        "--expr",
        "e2e.load{host=x} > 5 for 0s",
        "--recover-below",
        "3",
        "--severity",
        "critical",
        "--description",
        "load too high",
    )
    hooks = ctower_json(server, "webhooks", "list")
    assert [(h["name"], h["min_severity"]) for h in hooks] == [("ops", "warning")]
    assert "s3cret" not in json.dumps(hooks)

    write(server, 9)
    with server.client() as client:
        firing = wait_for(
            lambda: client.get("monitor/alerts", state="firing"), timeout=30, message="firing alert"
        )
    (alert,) = firing
    assert alert["rule"] == "e2e-load" and alert["labels"] == {"host": "x"} and alert["value"] == 9
    assert alert["severity"] == "critical" and alert["acked_at"] is None

    bodies = wait_for(receiver.received, timeout=30, message="webhook delivery")
    assert bodies[0]["alert_id"] == alert["id"] and bodies[0]["state"] == "firing"
    assert (
        bodies[0]["rule"] == "e2e-load" and bodies[0]["labels"] == {"host": "x"} and bodies[0]["value"] == 9
    )
    assert bodies[0]["server"] and bodies[0]["fired_at"]
    assert receiver.paths[0] == "/hook/s3cret-token"

    ack = ctower(server, "alerts", "ack", str(alert["id"]))
    assert f"alert {alert['id']}" in ack.stdout and "acknowledged" in ack.stdout
    listed = ctower_json(server, "alerts")
    assert [(a["id"], a["state"], a["acked_by"]) for a in listed] == [(alert["id"], "firing", "admin")]
    table = ctower(server, "alerts").stdout
    assert "e2e-load" in table and "admin" in table

    # A value between the thresholds keeps it firing (hysteresis); a silence then mutes the resolution.
    silence = ctower_json(
        server,
        "alerts",
        "silence",
        "--rule",
        "e2e-load",
        "--label",
        "host=x",
        "--for",
        "2h",
        "--reason",
        "maintenance",
    )
    assert silence["active"] and silence["rule_name"] == "e2e-load" and silence["labels"] == {"host": "x"}
    assert [s["id"] for s in ctower_json(server, "alerts", "silences")] == [silence["id"]]
    write(server, 1)
    with server.client() as client:
        resolved = wait_for(
            lambda: client.get("monitor/alerts", state="resolved"), timeout=30, message="resolved"
        )
        assert resolved[0]["id"] == alert["id"] and resolved[0]["silenced"] is True
        (hook,) = client.get("monitor/webhooks")
        assert (hook["sent"], hook["pending"]) == (1, 0)  # the silenced resolution queued nothing
    assert ctower_json(server, "alerts") == []
    assert [a["state"] for a in ctower_json(server, "alerts", "--all")] == ["resolved"]
    assert [a["id"] for a in ctower_json(server, "alerts", "--state", "resolved")] == [alert["id"]]

    unsilenced = ctower(server, "alerts", "unsilence", str(silence["id"]))
    assert "expired" in unsilenced.stdout
    assert ctower_json(server, "alerts", "silences") == []

    rules = {r["name"]: r for r in ctower_json(server, "rules")}
    assert (
        rules["e2e-load"]["expr"] == 'e2e.load{host="x"} > 5' and rules["e2e-load"]["recovery_threshold"] == 3
    )
    assert {r["name"] for r in ctower_json(server, "rules", "list")} == BUILTIN | {"e2e-load"}
    ctower(server, "rules", "disable", "host-down")
    assert not {r["name"]: r for r in ctower_json(server, "rules")}["host-down"]["enabled"]
    refused = ctower(server, "rules", "rm", "host-down", ok=False)
    assert refused.returncode == 1 and "builtin" in refused.stderr
    ctower(server, "rules", "rm", "e2e-load")
    ctower(server, "webhooks", "rm", "ops")
    assert ctower_json(server, "webhooks") == []
    assert "s3cret" not in server.logs()


def test_api_errors_name_the_field(server):
    with server.client() as client:
        cases = [
            ({"name": "r", "expr": "e2e.load >> 5"}, "expr"),
            ({"name": "r", "metric": "e2e.load", "op": ">"}, "threshold"),
            ({"name": "r", "expr": "e2e.load > 5", "recovery_threshold": 9}, "recovery_threshold"),
            ({"name": "r", "expr": "e2e.load > 5", "severity": "loud"}, "severity"),
        ]
        for body, field in cases:
            with pytest.raises(ApiError) as info:
                client.post("monitor/rules", body)
            assert info.value.status == 422 and str(info.value.detail).startswith(field), info.value.detail
        client.post(
            "monitor/rules", {"name": "r", "metric": "e2e.load", "op": ">", "threshold": 5, "for_s": "1m"}
        )
        with pytest.raises(ApiError) as info:
            client.post("monitor/rules", {"name": "r", "expr": "e2e.load > 1"})
        assert info.value.status == 409
        patched = client.patch(
            "monitor/rules/r", {"expr": "e2e.load{host=y} < 2 for 30s", "severity": "info"}
        )
        assert (patched["expr"], patched["severity"]) == ('e2e.load{host="y"} < 2 for 30s', "info")
        for method, path in (
            ("GET", "monitor/rules/nope"),
            ("GET", "monitor/alerts/999"),
            ("POST", "monitor/alerts/999/ack"),
            ("DELETE", "monitor/silences/999"),
            ("DELETE", "monitor/webhooks/nope"),
        ):
            with pytest.raises(ApiError) as info:
                client.request(method, path)
            assert info.value.status == 404, path
        with pytest.raises(ApiError) as info:
            client.post("monitor/silences", {"labels": {"host": "x"}})
        assert info.value.status == 422 and "duration" in str(info.value.detail)
        with pytest.raises(ApiError) as info:
            client.post("monitor/webhooks", {"name": "w", "url": "ftp://example.com/"})
        assert info.value.status == 422 and "url" in str(info.value.detail)
        with pytest.raises(ApiError) as info:
            client.get("monitor/alerts", state="burning")
        assert info.value.status == 422 and "state" in str(info.value.detail)


def test_webhook_test_endpoint_reports_the_outcome(server, receiver):
    with server.client() as client:
        client.post("monitor/webhooks", {"name": "good", "url": receiver.url + "/t"})
        assert client.post("monitor/webhooks/good/test") == {"ok": True, "status": 200, "error": None}
        assert receiver.received()[0]["state"] == "test"
    out = ctower(server, "webhooks", "test", "good")
    assert "delivered" in out.stdout
    with server.client() as client:
        client.post("monitor/webhooks", {"name": "bad", "url": "http://127.0.0.1:9/unreachable-secret"})
        result = client.post("monitor/webhooks/bad/test")
        assert result["ok"] is False and result["error"] and "unreachable-secret" not in result["error"]
    failed = ctower(server, "webhooks", "test", "bad", ok=False)
    assert failed.returncode == 1
    assert "unreachable-secret" not in server.logs()
