"""The boundary rule of ARCHITECTURE.md, checked on every module's imports (no allow-list)."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "controltower"
# The six subsystems of ARCHITECTURE.md, whether or not their folder exists yet.
SUBSYSTEMS = {"monitor", "iot", "rpa", "bpm", "ai", "data"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by a file (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package_parts = ["controltower", *path.relative_to(PACKAGE).parts[:-1]]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _owner(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def _crossings() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        for lineno, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "controltower" or len(parts) < 2:
                continue
            target = parts[1]
            where = f"{path.relative_to(PACKAGE.parent)}:{lineno} imports {module}"
            if owner in SUBSYSTEMS and target in SUBSYSTEMS and target != owner:
                problems.append(f"{where}: subsystem {owner} reaches into subsystem {target}")
            if owner in SUBSYSTEMS and target in {"server", "cli", "runner"}:
                problems.append(f"{where}: subsystem {owner} imports the application shell")
            if owner in {"core", "agent", "web"} and (target in SUBSYSTEMS or target in {"server", "cli", "runner"}):
                problems.append(f"{where}: {owner} must not know subsystems or the shell")
    return problems


def test_subsystems_are_found() -> None:
    assert "monitor" in SUBSYSTEMS


def test_no_boundary_crossings() -> None:
    problems = _crossings()
    assert not problems, "boundary rule broken:\n" + "\n".join(problems)


def test_rule_detects_a_crossing(tmp_path: Path) -> None:
    """The checker itself must be able to fail."""
    fake = PACKAGE / "monitor" / "_fake_crossing_for_test.py"
    fake.write_text('"""fake"""\nfrom controltower.iot import service\n')
    try:
        assert any("_fake_crossing_for_test" in p for p in _crossings())
    finally:
        fake.unlink()


def _all_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts or path.name == "__main__.py":
            continue
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def _import_alone(module: str) -> str | None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    return None if result.returncode == 0 else f"{module}:\n{result.stderr[-2000:]}"


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    """Every module imports first, by itself: no import cycle is hidden by the order others load in."""
    modules = _all_modules()
    assert len(modules) > 20
    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [f for f in pool.map(_import_alone, modules) if f]
    assert not failures, "\n\n".join(failures)
