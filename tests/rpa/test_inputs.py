"""Input files and output data of runs: through a real server and its local agent, and with `ctower robot run`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from controltower.cli import app
from controltower.client import ApiError, Client
from controltower.rpa.archive import pack
from tests.rpa.invoice_robot import make_invoice_robot
from tests.support import RunningServer, start_server, wait_for

FINISHED = {"passed", "failed", "timed_out", "error", "lost", "cancelled"}
runner = CliRunner()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, env_cache_dir: Path) -> Iterator[RunningServer]:
    """A server with its local agent; small data limits so the refusals are cheap to provoke."""
    base = tmp_path_factory.mktemp("rpa-inputs")
    server = start_server(base / "data", args=[], env={
        "CT_RPA_ENV_CACHE_DIR": str(env_cache_dir), "CT_AGENT_HEARTBEAT_S": "1",
        "CT_RPA_DATA_MAX_BYTES": "4096", "CT_RPA_INPUT_FILE_MAX_BYTES": "100000",
    })
    with server.client() as client:
        wait_for(lambda: any("local" in a["labels"] for a in client.get("agents")), timeout=60,
                 message="the local agent to enrol")
    root = make_invoice_robot(base / "invoice-bot")
    response = httpx.post(f"{server.url}/api/v1/rpa/robots", content=pack(root, artifacts="output"), timeout=120,
                          headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    yield server
    server.stop()


def _upload(client: Client, data: bytes) -> dict:
    return client.request("POST", "rpa/files", content=data, headers={"Content-Type": "application/octet-stream"})


def _finished(client: Client, run_id: int) -> dict:
    return wait_for(lambda: (r := client.get(f"rpa/runs/{run_id}"))["status"] in FINISHED and r,
                    timeout=240, interval=0.3, message=f"run {run_id} to finish")


def test_a_run_on_the_agent_reads_its_input_and_file_and_returns_output(srv: RunningServer) -> None:
    with srv.client() as client:
        ref = _upload(client, b"INV-7 total 21")
        assert ref == {"sha256": hashlib.sha256(b"INV-7 total 21").hexdigest(), "size": 14}
        run = client.post("rpa/runs", {
            "robot": "invoice-bot", "task": "Book invoice", "labels": ["local"],
            "input": {"id": 7, "amount": 21}, "files": [{"name": "invoice.txt", "sha256": ref["sha256"]}],
        })
        assert run["input_files"] == [{"name": "invoice.txt", "sha256": ref["sha256"], "size": 14}]
        run = _finished(client, run["id"])
        assert run["status"] == "passed", run
        assert run["output"] == {"id": 7, "booked": 42, "files": ["invoice.txt"], "text": "INV-7 total 21"}
        fetched = client.http.get(f"/api/v1/rpa/runs/{run['id']}/inputs/invoice.txt")
        assert fetched.status_code == 200 and fetched.content == b"INV-7 total 21"

        rf = client.post("rpa/runs", {
            "robot": "invoice-bot", "task": "Book invoice in Robot Framework", "labels": ["local"],
            "input": {"id": 8}, "files": [{"name": "invoice.txt", "sha256": ref["sha256"]}],
        })
        rf = _finished(client, rf["id"])
        assert rf["status"] == "passed", rf
        assert rf["output"] == {"rf": True, "text": "INV-7 total 21"}


def test_robot_start_uploads_files_and_prints_the_output(srv: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "item.json").write_text('{"id": 9, "amount": 5}')
    (tmp_path / "invoice.txt").write_text("INV-9")
    result = runner.invoke(app, ["robot", "start", "invoice-bot", "--task", "Book invoice", "--on", "local",
                                 "--input", str(tmp_path / "item.json"), "--file", str(tmp_path / "invoice.txt"),
                                 "--wait", "--server", srv.url, "--token", srv.token])
    assert result.exit_code == 0, result.output
    expected = {"id": 9, "booked": 10, "files": ["invoice.txt"], "text": "INV-9"}
    assert f"output: {json.dumps(expected)}" in result.output
    with srv.client() as client:
        run = client.get("rpa/runs", robot="invoice-bot", limit=1)[0]
    assert run["output"] == expected and run["input"] == {"id": 9, "amount": 5}


def test_robot_run_locally_uses_the_same_dirs_and_variables(tmp_path: Path, env_cache_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_RPA_ENV_CACHE_DIR", str(env_cache_dir))
    root = make_invoice_robot(tmp_path / "invoice-bot")
    (tmp_path / "item.json").write_text('{"id": 3, "amount": 4}')
    (tmp_path / "invoice.txt").write_text("INV-3")
    out = tmp_path / "run"
    result = runner.invoke(app, ["robot", "run", str(root), "--task", "Book invoice", "--input",
                                 str(tmp_path / "item.json"), "--file", str(tmp_path / "invoice.txt"),
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "passed"
    assert summary["output"] == {"id": 3, "booked": 8, "files": ["invoice.txt"], "text": "INV-3"}
    assert (out / "input" / "invoice.txt").read_text() == "INV-3"
    assert json.loads((out / "input.json").read_text()) == {"id": 3, "amount": 4}
    assert json.loads((out / "output.json").read_text()) == summary["output"]


def test_bad_output_json_fails_the_run_locally(tmp_path: Path, env_cache_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_RPA_ENV_CACHE_DIR", str(env_cache_dir))
    root = make_invoice_robot(tmp_path / "invoice-bot")
    bad = "import os\n\ndef main():\n    open(os.environ['CT_OUTPUT_FILE'], 'w').write('{oops')\n"
    (root / "bot.py").write_text(bad)
    result = runner.invoke(app, ["robot", "run", str(root), "--task", "Book invoice", "--json"])
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed" and summary["output"] is None
    assert summary["message"].startswith("output.json: not valid JSON")


def test_bad_inputs_are_refused_naming_the_field(srv: RunningServer) -> None:
    base = {"robot": "invoice-bot", "task": "Book invoice", "labels": ["local"]}
    with srv.client() as client:
        ref = _upload(client, b"x")
        cases = [
            ({"files": [{"name": "a.txt", "sha256": "0" * 64}]}, "files[0].sha256: no uploaded file has sha256"),
            ({"files": [{"name": "../a.txt", "sha256": ref["sha256"]}]}, "files[0].name: '../a.txt' must be a plain"),
            ({"files": [{"name": "a.txt", "sha256": ref["sha256"]}, {"name": "a.txt", "sha256": ref["sha256"]}]},
             "files[1].name: 'a.txt' is given twice"),
            ({"input": {"blob": "x" * 5000}}, "input: 5011 bytes of JSON is larger than the limit of 4096 bytes"),
        ]
        for extra, reason in cases:
            with pytest.raises(ApiError) as err:
                client.post("rpa/runs", {**base, **extra})
            assert err.value.status == 422
            assert str(err.value.detail).startswith(reason), err.value.detail
        with pytest.raises(ApiError) as err:
            _upload(client, b"x" * 100_001)
        assert err.value.status == 413 and err.value.detail.startswith("file: larger than the limit of 100000 bytes")
        viewer = client.post("tokens", {"name": "look", "role": "viewer"})["token"]
    with Client(srv.url, viewer) as client, pytest.raises(ApiError) as err:
        _upload(client, b"x")
    assert err.value.status == 403
