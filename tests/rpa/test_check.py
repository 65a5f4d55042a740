"""`check`: templates are clean; bad robot.yaml, missing keywords and Python syntax errors name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from controltower.rpa.check import check_package, errors
from controltower.rpa.templates import TEMPLATES, create


@pytest.mark.parametrize("template", TEMPLATES)
def test_templates_pass_the_check(tmp_path: Path, template: str) -> None:
    create(tmp_path / "bot", template, f"demo-{template}")
    spec, problems = check_package(tmp_path / "bot")
    assert spec is not None and spec.name == f"demo-{template}"
    assert problems == []


def test_dry_run_failure_names_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    create(root, "files", "bot")
    suite = root / "tasks.robot"
    lines = suite.read_text().splitlines()
    at = lines.index("    Create Directory    ${OUTPUT}")
    lines.insert(at + 1, "    Frobnicate The Invoices    now")
    suite.write_text("\n".join(lines) + "\n")
    spec, problems = check_package(root)
    assert spec is not None
    [problem] = errors(problems)
    assert problem.file == "tasks.robot"
    assert problem.line == at + 2  # 1-based line of the inserted step
    assert "No keyword with name 'Frobnicate The Invoices' found" in problem.message


def test_syntax_error_in_suite_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    create(root, "files", "bot")
    (root / "tasks.robot").write_text(
        "*** Settings ***\nLibrary    OperatingSystem\n\n*** Tasks ***\nProcess files\n"
        "    FOR    ${x}    IN    a    b\n        Log    ${x}\n"
    )
    _spec, problems = check_package(root)
    found = errors(problems)
    assert found, problems
    assert all(p.file == "tasks.robot" for p in found)
    assert any("FOR loop" in p.message and "END" in p.message for p in found)


def test_missing_library_is_a_warning_not_an_error(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    create(root, "files", "bot")
    suite = root / "tasks.robot"
    suite.write_text(suite.read_text().replace("Library           Collections", "Library           RPA.Excel.Files"))
    _spec, problems = check_package(root)
    assert errors(problems) == []
    [warning] = [p for p in problems if "Importing library 'RPA.Excel.Files' failed" in p.message]
    assert warning.severity == "warning"
    assert (warning.file, warning.line) == ("tasks.robot", 4)


def test_python_task_syntax_error_and_missing_function(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    create(root, "python", "bot")
    (root / "bot.py").write_text("def main():\n    return 1\n\ndef broken(:\n    pass\n")
    _spec, problems = check_package(root)
    [problem] = problems
    assert (problem.file, problem.line) == ("bot.py", 4)
    assert "syntax error" in problem.message
    (root / "bot.py").write_text("def other():\n    pass\n")
    _spec, problems = check_package(root)
    assert [str(p) for p in problems] == ["bot.py: error: tasks.Summarise.python: bot defines no function 'main'"]


def test_bad_robot_yaml_is_reported_before_anything_runs(tmp_path: Path) -> None:
    root = tmp_path / "bot"
    create(root, "files", "bot")
    (root / "robot.yaml").write_text("name: bot\ntasks:\n  Process files:\n    robot: missing.robot\n")
    spec, problems = check_package(root)
    assert spec is not None
    assert [str(p) for p in problems] == ["robot.yaml: error: tasks.Process files.robot: missing.robot does not exist"]
    (root / "robot.yaml").write_text("name: bot\ntasks: {}\n")
    spec, problems = check_package(root)
    assert spec is None
    assert problems[0].line == 2 and "tasks" in problems[0].message
