"""The robot package format: `robot.yaml` parsed into a pydantic model, with errors that name file and line."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ROBOT_FILE = "robot.yaml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MODULE_FUNC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DEFAULT_TIMEOUT_S = 3600.0
ROBOT_REQUIREMENT = "robotframework>=7"


class PackageError(ValueError):
    """robot.yaml is missing or wrong; `problems` lists each as (file, line, message)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class Problem(BaseModel):
    """One thing wrong with a package, located as precisely as known."""

    file: str
    line: int | None = None
    message: str
    severity: str = Field("error", description="error (refuses the package) or warning")

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


def parse_duration(value: str | float | int) -> float:
    """Seconds from `90`, `90s`, `10m`, `1.5h` or `500ms`."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = DURATION_RE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration like 90s, 10m or 1h")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be positive")
    return seconds


class TaskSpec(BaseModel):
    """A task runs a Robot Framework suite's task of the same name (`robot:`) or a Python function (`python:`)."""

    model_config = ConfigDict(extra="forbid")

    robot: str | None = Field(None, description="Robot Framework suite file or folder, relative to the package")
    python: str | None = Field(None, description="module:function, importable from the package root")
    timeout: float | None = Field(None, description="Overrides the robot's timeout for this task")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is not None and not MODULE_FUNC_RE.match(value):
            raise ValueError(f"{value!r} must be module:function, e.g. bot.cleanup:main")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> TaskSpec:
        if (self.robot is None) == (self.python is None):
            raise ValueError("a task needs exactly one of robot: (a .robot suite) or python: (module:function)")
        if self.robot is not None and (self.robot.startswith("/") or ".." in Path(self.robot).parts):
            raise ValueError(f"robot: {self.robot!r} must be a relative path inside the package")
        return self

    @property
    def kind(self) -> str:
        return "robot" if self.robot is not None else "python"


class EnvironmentSpec(BaseModel):
    """What the robot's isolated virtual environment holds; robots with equal specs share one."""

    model_config = ConfigDict(extra="forbid")

    python: str | None = Field(None, description="Version specifier the interpreter must satisfy, e.g. '>=3.11'")
    requirements: list[str] = Field(default_factory=list, description="pip requirement strings")

    @field_validator("python")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"{value!r} is not a version specifier like '>=3.11'") from None
        return value

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, value: list[str]) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement

        for i, req in enumerate(value):
            if req.strip().startswith("-"):
                raise ValueError(f"requirement {i}: pip options like {req!r} are not allowed")
            try:
                Requirement(req)
            except InvalidRequirement as exc:
                raise ValueError(f"requirement {i}: {req!r} is not a requirement: {exc}") from None
        return value


class RobotSpec(BaseModel):
    """The whole of robot.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    artifacts: str | None = Field("output", description="Folder (relative) uploaded after every run")
    timeout: float = Field(DEFAULT_TIMEOUT_S, description="Kill a task after this long, e.g. 10m")
    secrets: list[str] = Field(default_factory=list, description="Vault secrets every run of this robot receives")

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if not SECRET_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a secret name (letters, digits, _; at most 64)")
        return sorted(set(value))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError("must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in Path(value).parts or not value.strip()):
            raise ValueError(f"{value!r} must be a relative folder inside the package")
        return value

    def task(self, name: str | None) -> tuple[str, TaskSpec]:
        """The named task, or the only/first one when `name` is None; KeyError names the choices."""
        if name is None:
            first = next(iter(self.tasks))
            return first, self.tasks[first]
        if name not in self.tasks:
            raise KeyError(f"robot {self.name!r} has no task {name!r}; tasks: {', '.join(self.tasks)}")
        return name, self.tasks[name]

    def timeout_for(self, task: str) -> float:
        return self.tasks[task].timeout or self.timeout

    def env_requirements(self) -> list[str]:
        """The requirements to install: the robot's own plus Robot Framework when a task needs it."""
        reqs = list(self.environment.requirements)
        needs_robot = any(t.kind == "robot" for t in self.tasks.values())
        if needs_robot and not any(_req_name(r) == "robotframework" for r in reqs):
            reqs.append(ROBOT_REQUIREMENT)
        return reqs

    def env_spec(self) -> dict[str, Any]:
        """The environment's identity: equal specs share one cached virtual environment."""
        return {"python": self.environment.python, "requirements": sorted(self.env_requirements())}


def env_hash(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _req_name(req: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


# -- loading with line numbers ---------------------------------------------------------------------


def _line_index(node: yaml.Node, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], int]:
    """Map each key path (as strings) to the 1-based line where its value starts."""
    index: dict[tuple[str, ...], int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            index[sub] = key.start_mark.line + 1
            for p, line in _line_index(value, sub).items():
                index.setdefault(p, line)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            index.update(_line_index(value, (*path, str(i))))
    return index


def _closest_line(index: dict[tuple[str, ...], int], loc: tuple[str, ...]) -> int | None:
    while loc:
        if loc in index:
            return index[loc]
        loc = loc[:-1]
    return index.get(())


def parse_robot_yaml(text: str, file: str = ROBOT_FILE) -> RobotSpec:
    """Parse robot.yaml text; PackageError names the file and the line of each problem."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise PackageError([Problem(file=file, line=line, message=f"not valid YAML: {reason}")]) from None
    if not isinstance(data, dict) or node is None:
        raise PackageError([Problem(file=file, line=1, message="must be a mapping with name: and tasks:")])
    try:
        return RobotSpec.model_validate(data)
    except ValidationError as exc:
        index = _line_index(node)
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            field = ".".join(loc) or "robot.yaml"
            problems.append(
                Problem(file=file, line=_closest_line(index, loc), message=f"{field}: {err['msg']}")
            )
        raise PackageError(problems) from None


def load_robot(root: Path) -> RobotSpec:
    """Read `<root>/robot.yaml`."""
    path = root / ROBOT_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PackageError([Problem(file=ROBOT_FILE, message=f"no {ROBOT_FILE} in {root}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PackageError([Problem(file=ROBOT_FILE, message=f"cannot read: {exc}")]) from None
    return parse_robot_yaml(text)
