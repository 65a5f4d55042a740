"""The root CLI: agent enrolment tokens, agent listing, actions and the settings reference."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import wait_for


def ctower(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controltower", *args], capture_output=True, text=True, timeout=60,
                          check=check)


def test_agent_enroll_then_agent_runs_and_is_listed(server, tmp_path) -> None:
    enrolment = ctower("agent", "enroll", "--label", "finance", "--server", server.url, "--token", server.token)
    token = enrolment.stdout.strip()
    assert token.startswith("cte_")
    agent = subprocess.Popen(
        [sys.executable, "-m", "controltower", "agent", "--server", server.url, "--token", token,
         "--name", "desk-7", "--state-dir", str(tmp_path / "agent"), "--interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        def listed() -> list[dict]:
            out = ctower("agents", "--json", "--server", server.url, "--token", server.token).stdout
            return [a for a in json.loads(out) if a["name"] == "desk-7"]

        rows = wait_for(listed, timeout=30, message="desk-7 in `ctower agents --json`")
        assert rows[0]["labels"] == ["finance"]
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
    assert token not in (agent.stderr.read() if agent.stderr else "")


def test_action_call_and_list(server) -> None:
    listed = json.loads(ctower("action", "list", "--json", "--server", server.url, "--token", server.token).stdout)
    assert {"http.request", "notify.webhook", "monitor.run_check"} <= {a["name"] for a in listed}
    result = ctower("action", "call", "http.request", f"url={server.url}/healthz",
                    "--server", server.url, "--token", server.token)
    assert json.loads(result.stdout)["result"]["status"] == 200


def test_bad_token_is_a_clear_error(server) -> None:
    result = ctower("agents", "--server", server.url, "--token", "ct_wrong", check=False)
    assert result.returncode == 1
    assert "401" in result.stderr and "invalid" in result.stderr


def test_config_lists_every_setting() -> None:
    rows = json.loads(ctower("config", "--json").stdout)
    assert {"CT_DATA_DIR", "CT_DATABASE_URL", "CT_PORT"} <= {r["env"] for r in rows}
