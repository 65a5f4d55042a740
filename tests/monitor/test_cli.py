"""`ctower hosts` and `ctower checks` run as real subprocesses against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.monitor.check_targets import HttpTarget, closed_port, enrol_agent
from tests.support import wait_for


def ctower(server, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "controltower", *args, "--server", server.url, "--token", server.token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_checks_commands(server):
    target = HttpTarget()
    try:
        added = ctower(
            server,
            "checks",
            "add",
            "web",
            "--type",
            "http",
            "--target",
            target.url("/redirect"),
            "--interval",
            "1s",
            "--keyword",
            "hello",
            "--expect-status",
            "200-299",
            "--json",
        )
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["params"] == {"keyword": "hello", "expect_status": "200-299"}
        nofollow = ctower(
            server,
            "checks",
            "add",
            "raw",
            "--type",
            "http",
            "--target",
            target.url("/redirect"),
            "--interval",
            "5m",
            "--no-redirects",
            "--expect-status",
            "302",
        )
        assert nofollow.returncode == 0 and "added check raw: http" in nofollow.stdout

        duplicate = ctower(server, "checks", "add", "web", "--type", "http", "--target", target.url())
        assert duplicate.returncode == 1 and "409" in duplicate.stderr and "already exists" in duplicate.stderr
        bad = ctower(server, "checks", "add", "x", "--type", "tcp", "--target", "nohost", "--keyword", "a")
        assert bad.returncode == 1 and "422" in bad.stderr

        def web_up() -> bool:
            rows = json.loads(ctower(server, "checks", "list", "--json").stdout)
            return any(r["name"] == "web" and r["state"] == "up" for r in rows)

        wait_for(web_up, timeout=30, message="web UP in `checks list`")
        table = ctower(server, "checks", "list")
        assert table.returncode == 0 and "web" in table.stdout and "raw" in table.stdout

        run = ctower(server, "checks", "run", "raw", "--json")
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["ok"] is True
        shown = json.loads(ctower(server, "checks", "show", "web", "--json").stdout)
        assert shown["state"] == "up" and shown["history"][0]["to_state"] == "up"
        assert "uptime_30d" in shown
        assert "State history" in ctower(server, "checks", "show", "web").stdout
        results = json.loads(ctower(server, "checks", "results", "web", "--limit", "2", "--json").stdout)
        assert len(results) == 2 and results[0]["ok"] is True

        dead = ctower(
            server,
            "checks",
            "add",
            "dead",
            "--type",
            "tcp",
            "--target",
            f"127.0.0.1:{closed_port()}",
            "--interval",
            "1h",
        )
        assert dead.returncode == 0
        failed = ctower(server, "checks", "run", "dead")
        assert failed.returncode == 1 and "FAILED" in failed.stdout and "refused" in failed.stdout

        assert ctower(server, "checks", "pause", "dead").returncode == 0
        assert json.loads(ctower(server, "checks", "show", "dead", "--json").stdout)["enabled"] is False
        removed = ctower(server, "checks", "rm", "dead")
        assert removed.returncode == 0 and "removed check dead" in removed.stdout
        missing = ctower(server, "checks", "show", "dead")
        assert missing.returncode == 1 and "404" in missing.stderr
    finally:
        target.stop()


def test_hosts_commands(server):
    admin = server.client()
    agent = enrol_agent(admin, "web1", facts={"os_release": "Debian 12"})
    agent.post(
        "monitor/hosts/metrics",
        {
            "ts": time.time(),
            "samples": [
                {"name": "host.cpu.percent", "labels": {}, "value": 5.0},
                {"name": "host.disk.percent", "labels": {"mount": "/"}, "value": 42.0},
            ],
        },
    )
    listed = ctower(server, "hosts", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["cpu_percent"], row["disk_percent"]) == ("web1", 5.0, 42.0)
    table = ctower(server, "hosts")
    assert table.returncode == 0 and "web1" in table.stdout and "Debian 12" in table.stdout
    shown = json.loads(ctower(server, "hosts", "show", "web1", "--json").stdout)
    assert {m["name"] for m in shown["metrics"]} == {"host.cpu.percent", "host.disk.percent"}
    pretty = ctower(server, "hosts", "show", "web1")
    assert pretty.returncode == 0 and "Latest metrics" in pretty.stdout and "mount=/" in pretty.stdout
    missing = ctower(server, "hosts", "show", "nope")
    assert missing.returncode == 1 and "404" in missing.stderr
