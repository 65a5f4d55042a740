"""Robot packages as zips: reproducible packing, and unpacking that refuses unsafe or oversized archives."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
MAX_FILES = 10_000
SKIP_DIRS = frozenset({".git", "__pycache__", ".venv", ".ctower", ".pytest_cache", ".mypy_cache"})
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class UnsafePackage(ValueError):
    """The archive was refused; the message says which entry and why."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


def _skip(rel: PurePosixPath, artifacts: str | None) -> bool:
    if any(part in SKIP_DIRS for part in rel.parts):
        return True
    return artifacts is not None and rel.parts[: len(PurePosixPath(artifacts).parts)] == PurePosixPath(artifacts).parts


def pack(root: Path, *, artifacts: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Zip a robot folder, sorted and with fixed timestamps, so equal content gives an equal sha256.

    Skips caches, VCS folders and the artifacts folder (a run's output is not part of the robot).
    A symlink is refused when it points outside the folder, else packed as the file it names.
    """
    root = root.resolve()
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            here = Path(dirpath)
            for name in sorted(filenames):
                path = here / name
                rel = PurePosixPath(path.relative_to(root).as_posix())
                if _skip(rel, artifacts):
                    continue
                if path.is_symlink():
                    target = path.resolve()
                    if not target.is_relative_to(root):
                        raise UnsafePackage(f"{rel}: symlink points outside the package (to {target})")
                if not path.is_file():
                    continue
                data = path.read_bytes()
                total += len(data)
                if total > max_bytes:
                    raise UnsafePackage(f"package is larger than the limit of {max_bytes} bytes")
                info = zipfile.ZipInfo(str(rel), date_time=_FIXED_TIME)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
    return buf.getvalue()


def _check_name(name: str) -> PurePosixPath:
    if "\\" in name or "\x00" in name:
        raise UnsafePackage(f"{name!r}: entry name has a backslash or NUL")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafePackage(f"{name!r}: absolute path")
    if ".." in path.parts:
        raise UnsafePackage(f"{name!r}: path leaves the package ('..')")
    return path


def inspect_zip(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[FileEntry]:
    """Every file of a package zip with its size and sha256; UnsafePackage on anything unsafe.

    Refused: absolute or `..` paths, symlinks that leave the package, more than `max_bytes`
    uncompressed (counted while reading, so a lying header does not help), too many entries.
    """
    if len(data) > max_bytes:
        raise UnsafePackage(f"archive is larger than the limit of {max_bytes} bytes")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise UnsafePackage(f"not a zip archive: {exc}") from None
    entries: list[FileEntry] = []
    total = 0
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_FILES:
            raise UnsafePackage(f"archive has {len(infos)} entries; the limit is {MAX_FILES}")
        names = {i.filename.rstrip("/") for i in infos}
        for info in infos:
            path = _check_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                resolved = PurePosixPath(os.path.normpath(str(path.parent / target)))
                if target.startswith("/") or resolved.parts[:1] == ("..",) or str(resolved) == "..":
                    raise UnsafePackage(f"{info.filename!r}: symlink points outside the package (to {target!r})")
                if str(resolved) not in names:
                    raise UnsafePackage(f"{info.filename!r}: symlink to {target!r}, which is not in the package")
                raise UnsafePackage(f"{info.filename!r}: symlinks are not allowed in a package; pack the file itself")
            if info.is_dir():
                continue
            digest = hashlib.sha256()
            size = 0
            with zf.open(info) as fh:
                while chunk := fh.read(1024 * 1024):
                    size += len(chunk)
                    total += len(chunk)
                    if total > max_bytes:
                        raise UnsafePackage(f"unpacked size is past the limit of {max_bytes} bytes (at {path})")
                    digest.update(chunk)
            entries.append(FileEntry(path=str(path), size=size, sha256=digest.hexdigest()))
    return sorted(entries, key=lambda e: e.path)


def extract(data: bytes, dest: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> list[FileEntry]:
    """Check the zip with `inspect_zip`, then write its files under `dest` (regular files only)."""
    entries = inspect_zip(data, max_bytes=max_bytes)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for entry in entries:
            target = (root / entry.path).resolve()
            if not target.is_relative_to(root):  # belt and braces after inspect_zip
                raise UnsafePackage(f"{entry.path!r}: path leaves the package")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(entry.path) as src, open(target, "wb") as out:
                while chunk := src.read(1024 * 1024):
                    out.write(chunk)
    return entries


def read_member(data: bytes, path: str) -> bytes | None:
    """One file's bytes from a (checked) package zip, or None if absent."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        try:
            return zf.read(path)
        except KeyError:
            return None
