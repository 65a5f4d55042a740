"""What the robot and queue commands share for input data: read a JSON file, check and upload input files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from controltower.console import call, err_console


def _fail(message: str) -> typer.Exit:
    err_console.print(f"[red]{message}[/red]")
    return typer.Exit(2)


def read_json(path: Path, option: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(f"{option}: cannot read JSON from {path}: {exc}") from None


def input_paths(paths: list[Path] | None, option: str) -> dict[str, Path]:
    """Input files by the name the task sees (the file's own name); each must exist, names must differ."""
    result: dict[str, Path] = {}
    for path in paths or []:
        if not path.is_file():
            raise _fail(f"{option}: {path} is not a file")
        if path.name in result:
            raise _fail(f"{option}: two files are named {path.name!r}")
        result[path.name] = path
    return result


def upload_files(client: Any, paths: dict[str, Path]) -> list[dict[str, Any]]:
    """Upload each file (POST /rpa/files); the references a run or work item names them by."""
    refs = []
    for name, path in paths.items():
        with path.open("rb") as fh:
            ref = call(client.request, "POST", "rpa/files", content=fh,
                       headers={"Content-Type": "application/octet-stream"}, timeout=300)
        refs.append({"name": name, "sha256": ref["sha256"]})
    return refs
