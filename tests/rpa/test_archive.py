"""Package zips: reproducible packing; absolute, `..`, symlinked and oversized archives refused with the reason."""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from pathlib import Path

import pytest

from controltower.rpa.archive import UnsafePackage, extract, inspect_zip, pack
from controltower.rpa.templates import create


def _zip(entries: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def test_pack_is_reproducible_and_round_trips(tmp_path: Path) -> None:
    create(tmp_path / "bot", "files", "bot")
    (tmp_path / "bot" / "output").mkdir()
    (tmp_path / "bot" / "output" / "old-run.txt").write_text("not part of the robot")
    (tmp_path / "bot" / "__pycache__").mkdir()
    (tmp_path / "bot" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    first = pack(tmp_path / "bot", artifacts="output")
    os.utime(tmp_path / "bot" / "tasks.robot", (1, 1))
    assert pack(tmp_path / "bot", artifacts="output") == first  # timestamps do not matter
    entries = extract(first, tmp_path / "copy")
    assert [e.path for e in entries] == ["inbox/invoice-001.txt", "inbox/invoice-002.txt", "robot.yaml", "tasks.robot"]
    assert (tmp_path / "copy" / "tasks.robot").read_text() == (tmp_path / "bot" / "tasks.robot").read_text()


def test_absolute_path_is_refused(tmp_path: Path) -> None:
    data = _zip([("robot.yaml", b"x"), ("/etc/cron.d/evil", b"x")])
    with pytest.raises(UnsafePackage, match=re.escape("'/etc/cron.d/evil': absolute path")):
        extract(data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dotdot_path_is_refused(tmp_path: Path) -> None:
    data = _zip([("robot.yaml", b"x"), ("lib/../../escape.txt", b"x")])
    with pytest.raises(UnsafePackage, match=r"path leaves the package \('..'\)"):
        extract(data, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_symlink_leaving_the_package_is_refused(tmp_path: Path) -> None:
    data = _zip([("robot.yaml", b"x")], symlinks={"secrets": "../../etc/passwd"})
    with pytest.raises(UnsafePackage, match="symlink points outside the package"):
        inspect_zip(data)
    absolute = _zip([("robot.yaml", b"x")], symlinks={"secrets": "/etc/passwd"})
    with pytest.raises(UnsafePackage, match="symlink points outside the package"):
        inspect_zip(absolute)


def test_pack_refuses_a_symlink_leaving_the_folder(tmp_path: Path) -> None:
    create(tmp_path / "bot", "python", "bot")
    (tmp_path / "outside.txt").write_text("secret")
    (tmp_path / "bot" / "link.txt").symlink_to(tmp_path / "outside.txt")
    with pytest.raises(UnsafePackage, match=re.escape("link.txt: symlink points outside the package")):
        pack(tmp_path / "bot")


def test_size_limits_are_enforced_on_the_unpacked_bytes() -> None:
    bomb = _zip([("robot.yaml", b"x"), ("big.txt", b"\0" * 2_000_000)])
    assert len(bomb) < 100_000  # small on the wire, large unpacked
    with pytest.raises(UnsafePackage, match="unpacked size is past the limit of 1000000 bytes"):
        inspect_zip(bomb, max_bytes=1_000_000)
    with pytest.raises(UnsafePackage, match="archive is larger than the limit of 10 bytes"):
        inspect_zip(bomb, max_bytes=10)


def test_not_a_zip_is_refused() -> None:
    with pytest.raises(UnsafePackage, match="not a zip archive"):
        inspect_zip(b"hello")
