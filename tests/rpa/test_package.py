"""robot.yaml: the issue's example parses; every mistake is reported with its file and line."""

from __future__ import annotations

import pytest

from controltower.rpa.package import PackageError, env_hash, parse_duration, parse_robot_yaml

EXAMPLE = """\
name: invoice-bot
description: Reads invoices and files them
tasks:
  Process invoices:
    robot: tasks.robot          # a Robot Framework suite; runs the task of the same name
  Cleanup:
    python: bot.cleanup:main    # module:function
environment:
  python: ">=3.11"
  requirements: ["requests>=2.31"]
artifacts: output               # uploaded after every run
timeout: 10m
"""


def test_the_issue_example_parses() -> None:
    spec = parse_robot_yaml(EXAMPLE)
    assert spec.name == "invoice-bot"
    assert spec.tasks["Process invoices"].kind == "robot"
    assert spec.tasks["Process invoices"].robot == "tasks.robot"
    assert spec.tasks["Cleanup"].python == "bot.cleanup:main"
    assert spec.timeout == 600.0
    assert spec.artifacts == "output"
    # A robot: task needs Robot Framework in the environment, added when the robot does not name it.
    assert spec.env_requirements() == ["requests>=2.31", "robotframework>=7"]
    assert spec.task(None)[0] == "Process invoices"
    with pytest.raises(KeyError, match="no task 'Nope'; tasks: Process invoices, Cleanup"):
        spec.task("Nope")


def test_a_task_with_both_kinds_is_reported_at_its_line() -> None:
    text = EXAMPLE.replace("    python: bot.cleanup:main    # module:function\n",
                           "    python: bot.cleanup:main\n    robot: other.robot\n")
    with pytest.raises(PackageError) as err:
        parse_robot_yaml(text)
    [problem] = err.value.problems
    assert problem.file == "robot.yaml"
    assert problem.line == 6  # the line of "Cleanup:"
    assert "exactly one of robot:" in problem.message


def test_bad_values_name_field_and_line() -> None:
    text = EXAMPLE.replace("timeout: 10m", "timeout: soon").replace("name: invoice-bot", "name: Invoice Bot")
    with pytest.raises(PackageError) as err:
        parse_robot_yaml(text)
    by_line = {p.line: p.message for p in err.value.problems}
    assert "name" in by_line[1] and "lowercase" in by_line[1]
    assert "timeout" in by_line[12] and "'soon' is not a duration" in by_line[12]


def test_bad_requirement_and_python_task() -> None:
    text = EXAMPLE.replace('["requests>=2.31"]', '["--index-url=http://evil"]').replace("bot.cleanup:main", "bot")
    with pytest.raises(PackageError) as err:
        parse_robot_yaml(text)
    messages = " | ".join(str(p) for p in err.value.problems)
    assert "robot.yaml:7: error: tasks.Cleanup.python" in messages
    assert "must be module:function" in messages
    assert "robot.yaml:10: error: environment.requirements" in messages
    assert "pip options" in messages


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(PackageError) as err:
        parse_robot_yaml("name: x\ntasks:\n  A:\n    robot: [unclosed\n")
    [problem] = err.value.problems
    assert problem.line is not None and problem.line >= 4
    assert problem.message.startswith("not valid YAML")


def test_durations() -> None:
    assert parse_duration("90s") == 90.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration(30) == 30.0
    with pytest.raises(ValueError):
        parse_duration("0s")


def test_env_hash_ignores_requirement_order() -> None:
    a = parse_robot_yaml(EXAMPLE.replace('["requests>=2.31"]', '["requests>=2.31", "six"]'))
    b = parse_robot_yaml(EXAMPLE.replace('["requests>=2.31"]', '["six", "requests>=2.31"]'))
    c = parse_robot_yaml(EXAMPLE)
    assert env_hash(a.env_spec()) == env_hash(b.env_spec())
    assert env_hash(a.env_spec()) != env_hash(c.env_spec())
