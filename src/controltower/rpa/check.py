"""`ctower robot check`: validate robot.yaml, the task files, and Robot Framework's dry run, by file and line."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from controltower.rpa.package import PackageError, Problem, RobotSpec, load_robot

DRY_RUN_TIMEOUT_S = 120.0
_ERROR_IN_FILE = re.compile(r"^Error in file '(?P<file>.+?)'(?: on line (?P<line>\d+))?: (?P<msg>.*)", re.S)


def _rel(root: Path, file: str) -> str:
    try:
        return Path(file).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return file


def _python_task_problems(root: Path, task: str, target: str) -> list[Problem]:
    module, _, function = target.partition(":")
    base = root.joinpath(*module.split("."))
    candidates = [base.with_suffix(".py"), base / "__init__.py"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        return [Problem(file="robot.yaml", message=f"tasks.{task}.python: no module {module!r} "
                        f"({candidates[0].relative_to(root)} or {candidates[1].relative_to(root)})")]
    rel = path.relative_to(root).as_posix()
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(source, filename=rel)
    except SyntaxError as exc:
        return [Problem(file=rel, line=exc.lineno, message=f"syntax error: {exc.msg}")]
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    if function not in names:
        return [Problem(file=rel, message=f"tasks.{task}.python: {module} defines no function {function!r}")]
    return []


def _test_lines(suite_path: Path) -> dict[str, tuple[int, list[int]]]:
    """Each test's line and its top-level steps' lines, from the suite as Robot Framework parses it."""
    from robot.running import TestSuite

    suite = TestSuite.from_file_system(str(suite_path))
    return {
        t.name: (t.lineno, [getattr(step, "lineno", t.lineno) for step in t.body])
        for t in suite.all_tests
    }


def dry_run(root: Path, task: str, suite: str, python: str | None = None) -> list[Problem]:
    """Run `robot --dryrun` for one task in a subprocess and turn what it reports into problems.

    A library that cannot be imported here is a warning (the robot's own environment may have it),
    and so is a missing keyword once some library failed to import.
    """
    from robot.api import ExecutionResult

    suite_path = root / suite
    if not suite_path.exists():
        return [Problem(file="robot.yaml", message=f"tasks.{task}.robot: {suite} does not exist")]
    with tempfile.TemporaryDirectory(prefix="ctower-dryrun-") as out:
        cmd = [python or sys.executable, "-m", "robot", "--dryrun", "--outputdir", out, "--output", "output.xml",
               "--log", "NONE", "--report", "NONE", "--console", "none", "--task", task, suite]
        try:
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            return [Problem(file=suite, message=f"dry run of task {task!r} took longer than {DRY_RUN_TIMEOUT_S}s")]
        output = Path(out) / "output.xml"
        if not output.exists():
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            reason = detail[-1] if detail else f"exit code {proc.returncode}"
            return [Problem(file=suite, message=f"dry run of task {task!r} failed: {reason}")]
        result = ExecutionResult(str(output))
    problems: list[Problem] = []
    import_failed = False
    for msg in result.errors.messages:
        if msg.level not in ("ERROR", "WARN"):
            continue
        text = msg.message.split("\nTraceback", 1)[0].strip()
        match = _ERROR_IN_FILE.match(text)
        file, line = (_rel(root, match["file"]), int(match["line"]) if match["line"] else None) if match else (suite,
                                                                                                              None)
        reason = match["msg"].split("\n", 1)[0] if match else text.split("\n", 1)[0]
        is_import = "Importing library" in reason or "Importing variable" in reason or "Importing resource" in reason
        import_failed = import_failed or is_import
        severity = "warning" if is_import or msg.level == "WARN" else "error"
        problems.append(Problem(file=file, line=line, message=reason, severity=severity))
    lines = _test_lines(suite_path)
    for test in result.suite.all_tests:
        if test.status != "FAIL":
            continue
        test_line, step_lines = lines.get(test.name, (None, []))
        line = test_line
        for i, step in enumerate(test.body):
            if getattr(step, "status", None) == "FAIL" and i < len(step_lines):
                line = step_lines[i]
                break
        file = _rel(root, test.source) if test.source else suite
        severity = "warning" if import_failed and "No keyword with name" in test.message else "error"
        problems.append(Problem(file=file, line=line, message=f"task {test.name!r}: {test.message}", severity=severity))
    return problems


def check_package(root: Path, python: str | None = None) -> tuple[RobotSpec | None, list[Problem]]:
    """Every problem of the robot at `root`: robot.yaml, task files, Python syntax, Robot Framework's dry run."""
    try:
        spec = load_robot(root)
    except PackageError as exc:
        return None, exc.problems
    problems: list[Problem] = []
    for name, task in spec.tasks.items():
        if task.python is not None:
            problems.extend(_python_task_problems(root, name, task.python))
        elif task.robot is not None:
            problems.extend(dry_run(root, name, task.robot, python))
    return spec, problems


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
