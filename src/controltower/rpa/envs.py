"""Isolated virtual environments for robots, keyed by the sha256 of their spec, cached, LRU-bounded, built once.

Layout of the cache dir: `<hash>/` (a venv, ready once `.ctower-env.json` is written, last), `<hash>.lock`
(flock: exclusive while building or evicting, shared while a run uses it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controltower.rpa.package import env_hash

log = logging.getLogger("controltower.rpa.envs")

MARKER = ".ctower-env.json"
BUILD_TIMEOUT_S = 1800.0
DEFAULT_MAX_ENVS = 10


class EnvBuildError(RuntimeError):
    """The environment could not be built; the message carries the installer's last words."""


@dataclass(frozen=True)
class Env:
    """A ready environment: where it is, its hash, whether this call built it and how long that took."""

    path: Path
    hash: str
    built: bool
    build_s: float

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "controltower" / "rpa-envs"


def find_uv() -> str | None:
    """uv on PATH or beside this interpreter (a venv's bin)."""
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("uv")


def _python_ok(spec: str | None, python: str) -> None:
    if not spec:
        return
    from packaging.specifiers import SpecifierSet

    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    if version not in SpecifierSet(spec):
        raise EnvBuildError(f"environment.python: {spec!r} wants another Python; this agent has {version}")


def _run(cmd: list[str], what: str, on_line: Callable[[str], None] | None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    output = (proc.stdout + proc.stderr).strip()
    if on_line:
        for line in output.splitlines()[-50:]:
            on_line(line)
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-15:])
        raise EnvBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}")


class EnvCache:
    """Builds environments on demand and keeps at most `max_envs` of them (least recently used go first)."""

    def __init__(self, root: Path | None = None, max_envs: int = DEFAULT_MAX_ENVS, *, installer: str = "auto",
                 python: str | None = None) -> None:
        if installer not in ("auto", "uv", "pip"):
            raise ValueError(f"installer: must be auto, uv or pip, got {installer!r}")
        self.root = root or default_cache_dir()
        self.max_envs = max_envs
        self.installer = installer
        self.python = python or sys.executable
        self.builds = 0

    def _uv(self) -> str | None:
        if self.installer == "pip":
            return None
        uv = find_uv()
        if uv is None and self.installer == "uv":
            raise EnvBuildError("installer uv asked for, but no uv found on PATH")
        return uv

    @contextlib.contextmanager
    def _lock(self, key: str, mode: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def ready(self, key: str) -> bool:
        return (self.root / key / MARKER).is_file()

    @contextlib.contextmanager
    def use(self, spec: dict[str, Any], on_line: Callable[[str], None] | None = None) -> Iterator[Env]:
        """The environment for `spec`, built if missing (once, however many processes ask), held while in use."""
        key = env_hash(spec)
        built, build_s = False, 0.0
        while True:
            if not self.ready(key):
                with self._lock(key, fcntl.LOCK_EX):
                    if not self.ready(key):  # someone else may have built it while we waited
                        started = time.monotonic()
                        self._build(key, spec, on_line)
                        built, build_s = True, time.monotonic() - started
            with self._lock(key, fcntl.LOCK_SH):
                if not self.ready(key):  # evicted between the build and now: build again
                    continue
                os.utime(self.root / key / MARKER)
                if built:
                    self.evict(keep=key)
                yield Env(path=self.root / key, hash=key, built=built, build_s=build_s)
                return

    def _build(self, key: str, spec: dict[str, Any], on_line: Callable[[str], None] | None) -> None:
        """Build in place under the exclusive lock; the marker, written last, makes it ready.

        (A venv records its own path in its scripts, so it is built where it will live, not moved there.)
        """
        _python_ok(spec.get("python"), self.python)
        target = self.root / key
        shutil.rmtree(target, ignore_errors=True)  # a build that died half-way
        requirements = list(spec.get("requirements") or [])
        uv = self._uv()
        if on_line:
            on_line(f"building environment {key[:12]} with {'uv' if uv else 'venv + pip'}: "
                    f"{', '.join(requirements) or 'no requirements'}")
        python = str(target / "bin" / "python")
        try:
            if uv:
                _run([uv, "venv", "--quiet", "--python", self.python, str(target)], "uv venv", on_line)
                if requirements:
                    _run([uv, "pip", "install", "--quiet", "--python", python, *requirements],
                         "uv pip install", on_line)
            else:
                _run([self.python, "-m", "venv", str(target)], "python -m venv", on_line)
                if requirements:
                    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
                         "pip install", on_line)
            (target / MARKER).write_text(json.dumps({"spec": spec, "built_at": time.time()}))
            self.builds += 1
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def entries(self) -> list[tuple[str, float]]:
        """Ready environments as (hash, last used), least recently used first."""
        if not self.root.exists():
            return []
        found = []
        for marker in self.root.glob(f"*/{MARKER}"):
            with contextlib.suppress(OSError):
                found.append((marker.parent.name, marker.stat().st_mtime))
        return sorted(found, key=lambda e: e[1])

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove the least recently used environments past `max_envs`, skipping any in use."""
        removed: list[str] = []
        entries = [e for e in self.entries() if e[0] != keep]
        excess = len(entries) + (1 if keep else 0) - self.max_envs
        for key, _ in entries:
            if excess <= 0:
                break
            fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                (self.root / key / MARKER).unlink(missing_ok=True)
                shutil.rmtree(self.root / key, ignore_errors=True)
                removed.append(key)
                excess -= 1
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        if removed:
            log.info("evicted %d environment(s): %s", len(removed), ", ".join(k[:12] for k in removed))
        return removed
