"""Work-item queues through a real server and its real local agent, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from controltower.cli import app
from controltower.client import ApiError, Client
from controltower.rpa.archive import pack
from tests.conftest import POSTGRES_URL, _postgres_available, reset_postgres, skip_or_fail
from tests.rpa.invoice_robot import make_invoice_robot
from tests.support import RunningServer, start_server, wait_for

runner = CliRunner()
TASK = "Book invoice"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        env_cache_dir: Path) -> Iterator[RunningServer]:
    """A server with its local agent and the invoice robot pushed; payloads limited to 4 KiB."""
    env = {"CT_RPA_ENV_CACHE_DIR": str(env_cache_dir), "CT_AGENT_HEARTBEAT_S": "1", "CT_RPA_DATA_MAX_BYTES": "4096"}
    if request.param == "postgres":
        if reason := _postgres_available():
            skip_or_fail(reason)
        reset_postgres()
        env["CT_DATABASE_URL"] = POSTGRES_URL
    base = tmp_path_factory.mktemp(f"rpa-queues-{request.param}")
    server = start_server(base / "data", args=[], env=env)
    with server.client() as client:
        wait_for(lambda: any("local" in a["labels"] for a in client.get("agents")), timeout=60,
                 message="the local agent to enrol")
    root = make_invoice_robot(base / "invoice-bot")
    response = httpx.post(f"{server.url}/api/v1/rpa/robots", content=pack(root, artifacts="output"), timeout=120,
                          headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    yield server
    server.stop()


def _cli(srv: RunningServer, *args: str) -> str:
    result = runner.invoke(app, [*args, "--server", srv.url, "--token", srv.token])
    assert result.exit_code == 0, result.output
    return result.stdout


def _settled(client: Client, queue: str, expected: dict[str, int]) -> dict:
    """Wait until the queue's counts include `expected` and nothing is pending, failed or in progress."""
    def check() -> dict | None:
        page = client.get(f"rpa/queues/{queue}/items", limit=1000)
        counts = page["counts"]
        busy = counts["pending"] + counts["in_progress"] + counts["failed"]
        return page if busy == 0 and all(counts[k] == v for k, v in expected.items()) else None
    return wait_for(check, timeout=240, interval=0.3, message=f"queue {queue} to settle as {expected}")


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def test_good_items_are_done_with_output_and_bad_ones_retried_then_dead(srv: RunningServer, tmp_path: Path) -> None:
    with srv.client() as client:
        queue = client.post("rpa/queues", {"name": "invoices", "robot": "invoice-bot", "task": TASK,
                                           "labels": ["local"], "max_attempts": 2, "retry_backoff_s": 1})
        assert queue["counts"] == {"pending": 0, "in_progress": 0, "done": 0, "failed": 0, "dead": 0}
        ref = client.request("POST", "rpa/files", content=b"INV-4", headers={"Content-Type": "text/plain"})
        pushed = client.post("rpa/queues/invoices/items", {"items": [
            {"payload": {"id": 1, "amount": 10}},
            {"payload": {"id": 2, "amount": 20, "bad": True}},
            {"payload": {"id": 3, "amount": 30}},
            {"payload": {"id": 4, "amount": 40}, "files": [{"name": "invoice.txt", "sha256": ref["sha256"]}]},
        ]})
        assert [p["payload"]["id"] for p in pushed] == [1, 2, 3, 4]
        page = _settled(client, "invoices", {"done": 3, "dead": 1})
        by_id = {item["payload"]["id"]: item for item in page["items"]}
        assert by_id[1]["output"] == {"id": 1, "booked": 20, "files": [], "text": ""}
        assert by_id[4]["output"] == {"id": 4, "booked": 80, "files": ["invoice.txt"], "text": "INV-4"}
        assert [by_id[i]["status"] for i in (1, 3, 4)] == ["done"] * 3
        dead = by_id[2]
        assert dead["status"] == "dead" and dead["attempts"] == 2 and len(dead["run_ids"]) == 2
        assert dead["last_error"].startswith(f"run {dead['run_ids'][-1]} failed: ")
        assert "invoice 2 is malformed" in dead["last_error"]
        first, second = (client.get(f"rpa/runs/{run_id}") for run_id in dead["run_ids"])
        assert _ts(second["created_at"]) - _ts(first["finished_at"]) >= dt.timedelta(seconds=1)  # the backoff
        done = by_id[3]
        run = client.get(f"rpa/runs/{done['run_id']}")
        assert run["input"] == {"id": 3, "amount": 30} and run["output"] == done["output"]
        assert _ts(done["enqueued_at"]) <= _ts(done["dispatched_at"]) <= _ts(run["started_at"])

        done_events = client.get("events", topic="rpa.item.done", limit=100)
        assert {e["payload"]["item_id"] for e in done_events} >= {by_id[i]["id"] for i in (1, 3, 4)}
        dead_events = [e["payload"] for e in client.get("events", topic="rpa.item.dead")]
        assert [(e["item_id"], e["attempts"]) for e in dead_events] == [(dead["id"], 2)]

    listed = json.loads(_cli(srv, "queue", "items", "invoices", "--status", "dead", "--json"))
    assert [item["id"] for item in listed] == [dead["id"]]
    (tmp_path / "fixed.json").write_text('{"id": 2, "amount": 21}')
    out = _cli(srv, "queue", "retry", "invoices", str(dead["id"]), "--payload", str(tmp_path / "fixed.json"))
    assert out.strip() == f"item {dead['id']}: in_progress"  # dispatched at once
    with srv.client() as client:
        page = _settled(client, "invoices", {"done": 4, "dead": 0})
        fixed = next(item for item in page["items"] if item["id"] == dead["id"])
        assert fixed["output"] == {"id": 2, "booked": 42, "files": [], "text": ""} and fixed["attempts"] == 1
        assert fixed["last_error"] is None and len(fixed["run_ids"]) == 3
    queues = json.loads(_cli(srv, "queue", "list", "--json"))
    assert next(q for q in queues if q["name"] == "invoices")["counts"]["done"] == 4


def test_concurrency_limit_and_a_timed_out_run_counts_as_a_failed_attempt(srv: RunningServer) -> None:
    with srv.client() as client:
        client.post("rpa/queues", {"name": "slow", "robot": "invoice-bot", "task": TASK, "labels": ["local"],
                                   "max_attempts": 1, "concurrency": 1, "timeout_s": 1})
        pushed = client.post("rpa/queues/slow/items", {"items": [{"payload": {"id": 1, "sleep": 60}},
                                                                 {"payload": {"id": 2}}]})
        assert [p["status"] for p in pushed] == ["in_progress", "pending"]
        page = _settled(client, "slow", {"done": 1, "dead": 1})
        first, second = page["items"]
        assert first["status"] == "dead" and first["last_error"].startswith(f"run {first['run_id']} timed_out")
        assert second["status"] == "done" and second["output"]["id"] == 2
        assert _ts(second["dispatched_at"]) >= _ts(first["finished_at"])


def test_concurrent_pushes_respect_the_concurrency_limit(srv: RunningServer) -> None:
    with srv.client() as client:
        client.post("rpa/queues", {"name": "crowded", "robot": "invoice-bot", "task": TASK,
                                   "labels": ["nobody-has-this"], "concurrency": 2})

    def push(n: int) -> int:
        with srv.client() as own:
            return len(own.post("rpa/queues/crowded/items", {"items": [{"payload": {"id": n, "k": k}}
                                                                       for k in range(5)]}))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(push, range(8))) == [5] * 8
    with srv.client() as client:
        counts = client.get("rpa/queues/crowded")["counts"]
        assert counts == {"pending": 38, "in_progress": 2, "done": 0, "failed": 0, "dead": 0}
        for item in client.get("rpa/queues/crowded/items", status="in_progress")["items"]:
            client.post(f"rpa/runs/{item['run_id']}/cancel")
        client.delete("rpa/queues/crowded")


def _start_agent(srv: RunningServer, client: Client, state_dir: Path, label: str,
                 env_cache_dir: Path) -> subprocess.Popen[bytes]:
    enrolment = client.post("agents/enrollments", {"ttl_s": 600, "labels": [label]})["token"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CT_")},
           "CT_AGENT_TOKEN": enrolment, "CT_RPA_ENV_CACHE_DIR": str(env_cache_dir)}
    cmd = [sys.executable, "-m", "controltower", "agent", "--server", srv.url, "--name", state_dir.name,
           "--state-dir", str(state_dir), "--labels", label]
    state_dir.mkdir(parents=True)
    with open(state_dir / "agent.log", "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_a_lost_agent_and_a_cancelled_run_are_failed_attempts(srv: RunningServer, tmp_path: Path,
                                                               env_cache_dir: Path) -> None:
    with srv.client() as client:
        client.post("rpa/queues", {"name": "doomed", "robot": "invoice-bot", "task": TASK, "labels": ["doomed"],
                                   "max_attempts": 2, "retry_backoff_s": 0, "lease_s": 3})
        item = client.post("rpa/queues/doomed/items", {"payload": {"id": 1, "sleep": 60}})[0]
        first_run = item["run_id"]
        agent = _start_agent(srv, client, tmp_path / "doomed-agent", "doomed", env_cache_dir)
        try:
            wait_for(lambda: client.get(f"rpa/runs/{first_run}")["status"] == "running", timeout=120,
                     message="the run to start on the doomed agent")
            agent.send_signal(signal.SIGKILL)  # dies mid-run: no chance to report
            agent.wait(10)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait(10)
        again = wait_for(lambda: (i := client.get(f"rpa/queues/doomed/items/{item['id']}"))["attempts"] == 2 and i,
                         timeout=60, message="the item to be dispatched again after the agent was lost")
        assert again["status"] == "in_progress" and again["run_ids"] == [first_run, again["run_id"]]
        assert again["last_error"].startswith(f"run {first_run} lost: agent ")
        client.post(f"rpa/runs/{again['run_id']}/cancel")
        dead = wait_for(lambda: (i := client.get(f"rpa/queues/doomed/items/{item['id']}"))["status"] == "dead" and i,
                        timeout=60, message="the item to be dead after its second run was cancelled")
        assert dead["last_error"] == f"run {again['run_id']} cancelled"


def test_cli_adds_a_queue_and_pushes_an_item_with_a_file(srv: RunningServer, tmp_path: Path) -> None:
    out = _cli(srv, "queue", "add", "cli-invoices", "--robot", "invoice-bot", "--task", TASK, "--on", "local",
               "--max-attempts", "3")
    assert "queue cli-invoices feeds invoice-bot" in out
    (tmp_path / "item.json").write_text('{"id": 5, "amount": 1}')
    (tmp_path / "invoice.txt").write_text("INV-5")
    out = _cli(srv, "queue", "push", "cli-invoices", str(tmp_path / "item.json"), "--file",
               str(tmp_path / "invoice.txt"))
    assert out.startswith("pushed 1 item(s) to cli-invoices")
    with srv.client() as client:
        page = _settled(client, "cli-invoices", {"done": 1})
    assert page["items"][0]["output"] == {"id": 5, "booked": 2, "files": ["invoice.txt"], "text": "INV-5"}
    table = _cli(srv, "queue", "items", "cli-invoices")
    assert "pending: 0 in_progress: 0 done: 1 failed: 0 dead: 0" in table and '"booked": 2' in table
    item_id = str(page["items"][0]["id"])
    assert _cli(srv, "queue", "remove", "cli-invoices", item_id).strip() == f"item {item_id} deleted"
    result = runner.invoke(app, ["queue", "add", "cli-invoices", "--robot", "invoice-bot",
                                 "--server", srv.url, "--token", srv.token])
    assert result.exit_code == 1 and "a queue named 'cli-invoices' already exists" in result.output
    assert _cli(srv, "queue", "delete", "cli-invoices").strip() == "queue cli-invoices deleted"
    with srv.client() as client:
        assert all(q["name"] != "cli-invoices" for q in client.get("rpa/queues"))


def test_bad_input_is_refused_naming_the_field(srv: RunningServer) -> None:
    base = {"robot": "invoice-bot", "task": TASK, "labels": ["local"]}
    with srv.client() as client:
        with pytest.raises(ApiError) as err:
            client.post("rpa/queues", {"name": "q", **base, "max_attempts": 0})
        assert err.value.status == 422
        assert err.value.detail == "max_attempts: Input should be greater than or equal to 1"
        refusals = [
            ({"name": "q", **base, "robot": "nobody"}, "robot: no robot named 'nobody'"),
            ({"name": "q", **base, "task": "Nope"}, "task: "),
            ({"name": "q", **base, "agent_id": 9999}, "agent_id: no agent with id 9999"),
        ]
        for body, reason in refusals:
            with pytest.raises(ApiError) as err:
                client.post("rpa/queues", body)
            assert err.value.status == 422 and str(err.value.detail).startswith(reason), err.value.detail
        with pytest.raises(ApiError) as err:
            client.post("rpa/queues/nope/items", {"payload": {}})
        assert err.value.status == 404 and err.value.detail == "no queue named 'nope'"

        client.post("rpa/queues", {"name": "limits", **base, "concurrency": 1})
        with pytest.raises(ApiError) as err:
            client.post("rpa/queues/limits/items", {"payload": {"blob": "x" * 5000}})
        assert err.value.status == 422 and err.value.detail.startswith("payload: 5011 bytes of JSON is larger than")
        with pytest.raises(ApiError) as err:
            client.post("rpa/queues/limits/items", {"items": [{"payload": 1}, {"payload": "x" * 5000}]})
        assert err.value.status == 422 and err.value.detail.startswith("items[1].payload: ")
        with pytest.raises(ApiError) as err:
            client.post("rpa/queues/limits/items", {"payload": 1, "files": [{"name": "a", "sha256": "0" * 64}]})
        assert err.value.status == 422 and err.value.detail.startswith("files[0].sha256: no uploaded file")
        with pytest.raises(ApiError) as err:
            client.post("rpa/queues/limits/items", {"files": []})
        assert err.value.status == 422 and "payload is required (or items, a list of items)" in err.value.detail
        assert client.get("rpa/queues/limits")["counts"]["pending"] == 0  # nothing half-written

        item = client.post("rpa/queues/limits/items", {"payload": {"id": 6}})[0]
        done = _settled(client, "limits", {"done": 1})["items"][0]
        assert done["id"] == item["id"]
        with pytest.raises(ApiError) as err:
            client.post(f"rpa/queues/limits/items/{item['id']}/retry", {})
        assert err.value.status == 409 and "is done; cannot retry it" in err.value.detail
        viewer = client.post("tokens", {"name": "look", "role": "viewer"})["token"]
        client.delete(f"rpa/queues/limits/items/{item['id']}")
        assert client.get("rpa/queues/limits")["counts"]["done"] == 0
    with Client(srv.url, viewer) as client, pytest.raises(ApiError) as err:
        client.post("rpa/queues/limits/items", {"payload": {}})
    assert err.value.status == 403
