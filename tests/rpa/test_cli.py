"""`ctower robot`: new, check and run locally; push, pull, versions and diff against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from controltower.cli import app
from tests.support import RunningServer

runner = CliRunner()


@pytest.fixture
def cache_env(env_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_RPA_ENV_CACHE_DIR", str(env_cache_dir))


def test_new_check_and_run_locally(tmp_path: Path, cache_env: None) -> None:
    bot = tmp_path / "bot"
    result = runner.invoke(app, ["robot", "new", "my-bot", "--template", "web", "--dir", str(bot)])
    assert result.exit_code == 0, result.output
    assert (bot / "robot.yaml").read_text().startswith("name: my-bot\n")
    result = runner.invoke(app, ["robot", "check", str(bot)])
    assert result.exit_code == 0, result.output
    assert "my-bot: OK" in result.output
    (tmp_path / "item.json").write_text('{"invoice": 1}')
    out = tmp_path / "run"
    result = runner.invoke(app, ["robot", "run", str(bot), "--task", "Check web page", "--var", "OUTPUT=out",
                                 "--input", str(tmp_path / "item.json"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "passed" and summary["stats"]["passed"] == 1
    assert summary["workdir"] == str(out)
    assert (out / "out" / "page.html").exists()  # --var reached Robot Framework
    assert json.loads((out / "input.json").read_text()) == {"invoice": 1}


def test_check_reports_file_and_line_and_fails(tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    assert runner.invoke(app, ["robot", "new", "bot", "--dir", str(bot)]).exit_code == 0
    (bot / "robot.yaml").write_text("name: bot\ntasks:\n  Process files:\n    robot: tasks.robot\ntimeout: later\n")
    result = runner.invoke(app, ["robot", "check", str(bot), "--json"])
    assert result.exit_code == 1
    [problem] = json.loads(result.stdout)
    assert problem["file"] == "robot.yaml" and problem["line"] == 5 and "timeout" in problem["message"]


def test_bad_options_are_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["robot", "new", "bot", "--template", "excel", "--dir", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--template: 'excel' is not one of files, web, python" in result.output
    runner.invoke(app, ["robot", "new", "bot", "--dir", str(tmp_path / "b")])
    result = runner.invoke(app, ["robot", "run", str(tmp_path / "b"), "--task", "Nope"])
    assert result.exit_code == 2 and "no task 'Nope'" in result.output


def test_push_pull_versions_and_diff(server: RunningServer, tmp_path: Path) -> None:
    bot = tmp_path / "bot"
    assert runner.invoke(app, ["robot", "new", "cli-bot", "--template", "python", "--dir", str(bot)]).exit_code == 0
    opts = ["--server", server.url, "--token", server.token]
    result = runner.invoke(app, ["robot", "push", str(bot), "--note", "first", *opts])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("pushed cli-bot version 1 (")
    (bot / "bot.py").write_text((bot / "bot.py").read_text() + "\n# second\n")
    assert runner.invoke(app, ["robot", "push", str(bot), *opts]).exit_code == 0
    result = runner.invoke(app, ["robot", "push", str(bot), *opts])
    assert result.exit_code == 1 and "409" in result.output and "identical to cli-bot version 2" in result.output

    result = runner.invoke(app, ["robot", "versions", "cli-bot", "--json", *opts])
    assert [(v["number"], v["note"]) for v in json.loads(result.stdout)] == [(2, ""), (1, "first")]
    result = runner.invoke(app, ["robot", "diff", "cli-bot", "1", "2", *opts])
    assert "~ bot.py" in result.output and "+# second" in result.output

    result = runner.invoke(app, ["robot", "pull", "cli-bot@1", "--dir", str(tmp_path / "v1"), *opts])
    assert result.exit_code == 0, result.output
    assert "# second" not in (tmp_path / "v1" / "bot.py").read_text()
    result = runner.invoke(app, ["robot", "pull", "cli-bot", "--dir", str(tmp_path / "latest"), *opts])
    assert result.exit_code == 0 and "version 2" in result.output
    assert (tmp_path / "latest" / "bot.py").read_text() == (bot / "bot.py").read_text()
