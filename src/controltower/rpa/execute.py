"""Run one task of a robot package the same way locally and on agents: own working dir, env, timeout, outputs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controltower.rpa.envs import EnvBuildError, EnvCache
from controltower.rpa.masking import Masker
from controltower.rpa.package import RobotSpec
from controltower.rpa.run_secrets import (
    mask_artifacts,
    mask_json,
    mask_rf_outputs,
    robot_options,
    secret_env,
    write_variable_file,
)

RF_FILES = ("output.xml", "log.html", "report.html")
INPUT_JSON = "input.json"
INPUT_DIR = "input"
OUTPUT_JSON = "output.json"
OUTPUT_MAX_BYTES = 1024 * 1024
KILL_GRACE_S = 5.0
STATS_TIMEOUT_S = 120.0
MAX_MESSAGE = 4000

# Runs inside the robot's environment (which has Robot Framework), so the agent never imports it.
_STATS_SCRIPT = """
import json, sys
from robot.api import ExecutionResult
result = ExecutionResult(sys.argv[1])
total = result.statistics.total
failures = [{"task": t.name, "message": t.message} for t in result.suite.all_tests if t.status == "FAIL"]
errors = [m.message.split(chr(10))[0] for m in result.errors.messages if m.level == "ERROR"]
print(json.dumps({"passed": total.passed, "failed": total.failed, "skipped": total.skipped,
                  "total": total.total, "failures": failures, "errors": errors}))
"""

_PYTHON_TASK_SCRIPT = """
import importlib, sys
sys.path.insert(0, ".")
module, function = sys.argv[1].split(":")
result = getattr(importlib.import_module(module), function)()
sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else (1 if result is False else 0))
"""


class Status:
    passed = "passed"
    failed = "failed"
    timed_out = "timed_out"
    error = "error"
    cancelled = "cancelled"


@dataclass
class RunOutcome:
    """What a run produced: its status, Robot Framework's statistics, timings and where its files are."""

    status: str
    task: str
    message: str | None
    exit_code: int | None
    duration_s: float
    env_hash: str | None = None
    env_built: bool = False
    env_build_s: float = 0.0
    stats: dict[str, Any] | None = None
    workdir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    output_tail: list[str] = field(default_factory=list)
    output: Any = None

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "task": self.task,
            "message": self.message,
            "exit_code": self.exit_code,
            "duration_s": round(self.duration_s, 3),
            "env_hash": self.env_hash,
            "env_built": self.env_built,
            "env_build_s": round(self.env_build_s, 3),
            "stats": self.stats,
            "files": sorted(self.files),
            "artifacts": sorted(self.artifacts),
            "output": self.output,
        }


def _child_env(variables: dict[str, str], input_file: Path | None, workdir: Path,
               data_vars: dict[str, str] | None = None) -> dict[str, str]:
    """The robot's environment: ours without Control Tower's own settings and tokens, plus its variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CT_", "VIRTUAL_ENV", "PYTHONHOME"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["CT_RUN_DIR"] = str(workdir)
    for key, value in variables.items():
        env[f"CT_VAR_{key}"] = value
    if input_file is not None:
        env["CT_INPUT_FILE"] = str(input_file)
    for key, value in (data_vars or {}).items():
        env[f"CT_{key}"] = value
    return env


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End the task's whole process group: SIGTERM, then SIGKILL after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _pump(stream: Any, on_line: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        on_line(raw.decode("utf-8", "replace").rstrip("\r\n"))
    stream.close()


def _stats(python: str, output_xml: Path) -> dict[str, Any] | None:
    try:
        proc = subprocess.run([python, "-c", _STATS_SCRIPT, str(output_xml)], capture_output=True, text=True,
                              timeout=STATS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _failure_message(stats: dict[str, Any] | None, tail: list[str], exit_code: int | None) -> str:
    if stats and stats.get("failures"):
        return "; ".join(f"{f['task']}: {f['message']}" for f in stats["failures"])[:MAX_MESSAGE]
    if stats and stats.get("errors"):
        return "; ".join(stats["errors"])[:MAX_MESSAGE]
    last = [line for line in tail if line.strip()]
    reason = last[-1] if last else ""
    return f"exit code {exit_code}" + (f": {reason}" if reason else "")


def prepare_workdir(package_dir: Path, workdir: Path) -> None:
    """A fresh copy of the package: the task may write anywhere in it without touching the original."""
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"working dir {workdir} is not empty")
    shutil.copytree(package_dir, workdir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".git", "__pycache__", ".venv"))


def run_task(
    spec: RobotSpec,
    package_dir: Path,
    workdir: Path,
    envs: EnvCache,
    *,
    task: str | None = None,
    variables: dict[str, str] | None = None,
    input_data: Any = None,
    input_files: dict[str, Path] | None = None,
    output_max_bytes: int = OUTPUT_MAX_BYTES,
    timeout_s: float | None = None,
    on_line: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    secrets: dict[str, str] | None = None,
) -> RunOutcome:
    """Copy the package to `workdir`, get its environment, run the task in a subprocess, collect the outputs.

    Never raises for what the robot does: a failing, crashing or overlong task is an outcome with a status.
    `secrets` reach the task only through its environment, and their values are masked in all its outputs.
    """
    task_name, task_spec = spec.task(task)
    variables = {str(k): str(v) for k, v in (variables or {}).items()}
    secrets = secrets or {}
    masker = Masker(secrets.values())
    raw_emit = on_line or (lambda _line: None)

    def emit(line: str) -> None:
        raw_emit(masker.mask(line))

    timeout_s = timeout_s or spec.timeout_for(task_name)
    prepare_workdir(package_dir, workdir)
    out_dir = workdir / (spec.artifacts or "output")
    out_dir.mkdir(parents=True, exist_ok=True)
    input_file = None
    if input_data is not None:
        input_file = workdir / INPUT_JSON
        input_file.write_text(json.dumps(input_data))
    data_vars = _place_inputs(workdir, input_files or {})
    outcome = RunOutcome(status=Status.error, task=task_name, message=None, exit_code=None, duration_s=0.0,
                         workdir=workdir)
    try:
        with envs.use(spec.env_spec(), on_line=emit) as env:
            outcome.env_hash, outcome.env_built, outcome.env_build_s = env.hash, env.built, env.build_s
            if not env.built:
                emit(f"reusing environment {env.hash[:12]}")
            if task_spec.robot is not None:
                cmd = [env.python, "-m", "robot", "--task", task_name, "--outputdir", str(out_dir),
                       "--consolecolors", "off", "--consolemarkers", "off", "--consolewidth", "100"]
                for key, value in variables.items():
                    cmd += ["--variable", f"{key}:{value}"]
                if input_file is not None:
                    cmd += ["--variable", f"INPUT_FILE:{input_file}"]
                cmd += [arg for key, value in data_vars.items() for arg in ("--variable", f"{key}:{value}")]
                if secrets:
                    cmd += robot_options(write_variable_file(workdir, list(secrets)))
                cmd.append(task_spec.robot)
            else:
                cmd = [env.python, "-c", _PYTHON_TASK_SCRIPT, str(task_spec.python)]
            child_env = {**_child_env(variables, input_file, workdir, data_vars), **secret_env(secrets)}
            _execute(cmd, workdir, child_env, timeout_s, emit, cancel, outcome)
            if secrets and task_spec.robot is not None and (problem := mask_rf_outputs(env.python, out_dir, masker)):
                emit(problem)
            if task_spec.robot is not None and (out_dir / "output.xml").is_file():
                outcome.stats = _stats(env.python, out_dir / "output.xml")
    except EnvBuildError as exc:
        outcome.status, outcome.message = Status.error, f"environment build failed: {exc}"[:MAX_MESSAGE]
        emit(outcome.message)
    _collect(outcome, out_dir)
    _read_output(outcome, workdir / OUTPUT_JSON, output_max_bytes, emit)
    if masker:
        mask_artifacts(masker, outcome.artifacts)
        outcome.message = masker.mask_optional(outcome.message)
        outcome.output = mask_json(masker, outcome.output)
    return outcome


def _place_inputs(workdir: Path, input_files: dict[str, Path]) -> dict[str, str]:
    """Copy the input files into `input/`; the variables naming the input dir and the output file."""
    input_dir = workdir / INPUT_DIR
    input_dir.mkdir(exist_ok=True)
    for name, source in input_files.items():
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"input file name {name!r} must be a plain file name")
        shutil.copyfile(source, input_dir / name)
    return {"INPUT_DIR": str(input_dir), "OUTPUT_FILE": str(workdir / OUTPUT_JSON)}


def _read_output(outcome: RunOutcome, path: Path, max_bytes: int, emit: Callable[[str], None]) -> None:
    """The task's output.json becomes the run's output; one that is too large or not JSON fails the run."""
    if not path.is_file() or path.is_symlink():
        return
    problem = None
    if path.stat().st_size > max_bytes:
        problem = f"{OUTPUT_JSON}: larger than the limit of {max_bytes} bytes"
    else:
        try:
            outcome.output = json.loads(path.read_bytes())
        except ValueError as exc:
            problem = f"{OUTPUT_JSON}: not valid JSON: {exc}"
    if problem is not None:
        emit(problem)
        if outcome.status == Status.passed:
            outcome.status, outcome.message = Status.failed, problem


def _execute(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float, emit: Callable[[str], None],
             cancel: threading.Event | None, outcome: RunOutcome) -> None:
    tail = outcome.output_tail

    def line(text: str) -> None:
        tail.append(text)
        del tail[:-20]
        emit(text)

    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    reader = threading.Thread(target=_pump, args=(proc.stdout, line), daemon=True)
    reader.start()
    deadline = started + timeout_s
    stopped_by = None
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            stopped_by = Status.timed_out
        elif cancel is not None and cancel.is_set():
            stopped_by = Status.cancelled
        if stopped_by:
            _kill(proc)
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.2)
    reader.join(10)
    outcome.duration_s = time.monotonic() - started
    outcome.exit_code = proc.returncode
    if stopped_by == Status.timed_out:
        outcome.status = Status.timed_out
        outcome.message = f"killed after the timeout of {timeout_s:g}s"
        emit(outcome.message)
    elif stopped_by == Status.cancelled:
        outcome.status, outcome.message = Status.cancelled, "cancelled"
    elif proc.returncode == 0:
        outcome.status = Status.passed
    else:
        outcome.status = Status.failed
        outcome.message = None  # filled from the statistics once they are read


def _collect(outcome: RunOutcome, out_dir: Path) -> None:
    if outcome.status == Status.failed and outcome.message is None:
        outcome.message = _failure_message(outcome.stats, outcome.output_tail, outcome.exit_code)
    if not out_dir.is_dir():
        return
    for name in RF_FILES:
        if (out_dir / name).is_file():
            outcome.files[name] = out_dir / name
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir).as_posix()
        if path.is_file() and not path.is_symlink() and rel not in RF_FILES:
            outcome.artifacts[rel] = path
