"""Local runs as an agent does them: real Robot Framework, statistics from output.xml, failures, timeouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controltower.rpa.envs import EnvCache
from controltower.rpa.execute import run_task
from controltower.rpa.package import load_robot
from controltower.rpa.templates import TEMPLATES, create

FAILING_SUITE = """\
*** Tasks ***
Process files
    Log    starting
    Should Be Equal    ${{1 + 1}}    3    msg=invoice total does not add up
"""

SLOW_SUITE = """\
*** Tasks ***
Process files
    Log To Console    before the long sleep
    Sleep    120s
"""


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_runs_and_passes(tmp_path: Path, envs: EnvCache, template: str) -> None:
    root = tmp_path / "bot"
    create(root, template, f"demo-{template}")
    lines: list[str] = []
    outcome = run_task(load_robot(root), root, tmp_path / "run", envs, on_line=lines.append,
                       variables={"WHO": "tests"}, input_data={"invoice": 7})
    assert outcome.status == "passed", lines
    assert outcome.exit_code == 0
    assert outcome.env_hash and outcome.duration_s > 0
    if template == "python":
        assert outcome.stats is None
        summary = json.loads(outcome.artifacts["summary.json"].read_text())
        assert summary == {"input_keys": ["invoice"], "variables": {"WHO": "tests"}}
    else:
        assert outcome.stats is not None
        assert (outcome.stats["passed"], outcome.stats["failed"]) == (1, 0)
        assert set(outcome.files) == {"output.xml", "log.html", "report.html"}
        assert outcome.artifacts  # report.txt / page.html
        assert any("1 task, 1 passed, 0 failed" in line for line in lines)
    assert not (root / "output").exists()  # the run worked in its own copy


def test_failing_suite_carries_robot_frameworks_message(tmp_path: Path, envs: EnvCache) -> None:
    root = tmp_path / "bot"
    create(root, "files", "bot")
    (root / "tasks.robot").write_text(FAILING_SUITE)
    outcome = run_task(load_robot(root), root, tmp_path / "run", envs)
    assert outcome.status == "failed"
    assert outcome.stats is not None and (outcome.stats["passed"], outcome.stats["failed"]) == (0, 1)
    assert outcome.message == "Process files: invoice total does not add up: 2 != 3"
    assert "log.html" in outcome.files


def test_python_task_that_raises_fails_with_the_exception(tmp_path: Path, envs: EnvCache) -> None:
    root = tmp_path / "bot"
    create(root, "python", "bot")
    (root / "bot.py").write_text("def main():\n    raise RuntimeError('portal is down')\n")
    outcome = run_task(load_robot(root), root, tmp_path / "run", envs)
    assert outcome.status == "failed"
    assert outcome.exit_code == 1
    assert outcome.message is not None and "RuntimeError: portal is down" in outcome.message


def test_timeout_kills_the_robot_and_keeps_partial_logs(tmp_path: Path, envs: EnvCache) -> None:
    root = tmp_path / "bot"
    create(root, "files", "bot")
    (root / "tasks.robot").write_text(SLOW_SUITE)
    lines: list[str] = []
    outcome = run_task(load_robot(root), root, tmp_path / "run", envs, timeout_s=3, on_line=lines.append)
    assert outcome.status == "timed_out"
    assert outcome.message == "killed after the timeout of 3s"
    assert any("before the long sleep" in line for line in lines)
    assert outcome.duration_s < 60  # killed, not waited for


def test_unknown_task_is_refused(tmp_path: Path, envs: EnvCache) -> None:
    create(tmp_path / "bot", "files", "bot")
    with pytest.raises(KeyError, match="no task 'Nope'"):
        run_task(load_robot(tmp_path / "bot"), tmp_path / "bot", tmp_path / "run", envs, task="Nope")
