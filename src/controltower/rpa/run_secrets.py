"""How a run's vault secrets reach its task (environment, Robot Framework variables) and leave its outputs masked.

Values travel only in the task's environment, never on a command line or in a file: Robot Framework reads them
through a variable file that names environment variables. Robot Framework is run without log and report, its
output.xml is masked, and `rebot` then writes log.html and report.html from the masked output.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from controltower.rpa.masking import Masker

ENV_PREFIX = "CT_SECRET_"
VARIABLE_FILE = "_ctower_secrets.py"  # Robot Framework refuses dots in a variable file's module name
REBOT_TIMEOUT_S = 300.0

_VARIABLE_FILE_TEXT = '''\
"""Robot Framework variable file written by Control Tower: the run's secrets, read from the environment."""
import os

NAMES = {names!r}


def get_variables():
    return {{name: os.environ["{prefix}" + name.upper()] for name in NAMES}}
'''


def env_name(name: str) -> str:
    """`erp_password` → `CT_SECRET_ERP_PASSWORD`."""
    return ENV_PREFIX + name.upper()


def secret_env(secrets: dict[str, str]) -> dict[str, str]:
    return {env_name(name): value for name, value in secrets.items()}


def write_variable_file(workdir: Path, names: list[str]) -> Path:
    """A variable file that holds no value, only the names to read from the environment."""
    path = workdir / VARIABLE_FILE
    path.write_text(_VARIABLE_FILE_TEXT.format(names=sorted(names), prefix=ENV_PREFIX))
    return path


def robot_options(variable_file: Path) -> list[str]:
    """Options for `robot`: the secrets' variable file, and no log or report until output.xml is masked."""
    return ["--variablefile", str(variable_file), "--log", "NONE", "--report", "NONE"]


def mask_rf_outputs(python: str, out_dir: Path, masker: Masker) -> str | None:
    """Mask output.xml, then write log.html and report.html from it with rebot; a problem's description or None."""
    output = out_dir / "output.xml"
    if not output.is_file():
        return None
    masker.mask_output_xml(output)
    cmd = [python, "-m", "robot.rebot", "--outputdir", str(out_dir), "--output", "NONE", "--log", "log.html",
           "--report", "report.html", "--consolecolors", "off", str(output)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=REBOT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"rebot took longer than {REBOT_TIMEOUT_S:g}s; no log.html"
    if not (out_dir / "log.html").is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return "rebot could not write log.html: " + masker.mask(detail[-1] if detail else f"exit {proc.returncode}")
    return None


def mask_artifacts(masker: Masker, artifacts: dict[str, Path]) -> list[str]:
    """Mask the text artifacts in place; the names of those that held a secret."""
    return [name for name, path in artifacts.items() if masker.mask_file(path)]


def mask_json(masker: Masker, value: Any) -> Any:
    """The value with every string (and key) masked; numbers and the structure stay as they are."""
    if isinstance(value, str):
        return masker.mask(value)
    if isinstance(value, list):
        return [mask_json(masker, item) for item in value]
    if isinstance(value, dict):
        return {masker.mask(str(k)): mask_json(masker, v) for k, v in value.items()}
    return value
