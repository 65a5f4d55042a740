"""Robot versions on both databases: vetting, numbering, immutability, diff, promote and roll back, the audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from controltower.core.blobs import BlobStore
from controltower.core.db import Database
from controltower.rpa import robots
from controltower.rpa.archive import UnsafePackage, pack
from controltower.rpa.templates import create

MAX = 10 * 1024 * 1024


def _package(root: Path) -> bytes:
    return pack(root, artifacts="output")


@pytest.fixture
def bot(tmp_path: Path) -> Path:
    create(tmp_path / "bot", "files", "invoice-bot")
    return tmp_path / "bot"


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", MAX)


def _push(db: Database, blobs: BlobStore, data: bytes, actor: str = "alice") -> int:
    vetted = robots.vet_package(data, MAX)
    with db.session() as s:
        return robots.store_version(s, blobs, data, vetted, actor, note="n").number


def test_versions_are_numbered_and_immutable(db: Database, blobs: BlobStore, bot: Path) -> None:
    v1 = _package(bot)
    assert _push(db, blobs, v1) == 1
    with pytest.raises(robots.DuplicateVersion, match="identical to invoice-bot version 1"):
        _push(db, blobs, v1)
    (bot / "tasks.robot").write_text((bot / "tasks.robot").read_text().replace("characters", "chars"))
    (bot / "notes.txt").write_text("new file\n")
    (bot / "inbox" / "invoice-002.txt").unlink()
    v2 = _package(bot)
    assert _push(db, blobs, v2, actor="bob") == 2
    with db.read_session() as s:
        robot = robots.get_robot(s, "invoice-bot")
        versions = robots.list_versions(s, robot)
        assert [(v.number, v.pushed_by) for v in versions] == [(2, "bob"), (1, "alice")]
        assert robots.get_version(s, robot, "latest").number == 2
        assert robots.get_version(s, robot, None).number == 2  # no production yet: latest
        with blobs.open(robots.get_version(s, robot, 1).sha256) as fh:
            assert fh.read() == v1  # version 1 is kept as pushed
        diff = robots.diff_versions(s, blobs, robot, 1, 2)
    assert diff.added == ["notes.txt"]
    assert diff.removed == ["inbox/invoice-002.txt"]
    assert diff.changed == ["tasks.robot"]
    assert "--- v1/tasks.robot\n+++ v2/tasks.robot\n" in diff.diff
    assert "+        Append To File    ${OUTPUT}/report.txt    ${file}: ${{len($text)}} chars\\n\n" in diff.diff
    assert "+++ v2/notes.txt\n@@ -0,0 +1 @@\n+new file\n" in diff.diff


def test_promote_and_roll_back(db: Database, blobs: BlobStore, bot: Path) -> None:
    for i in range(3):
        (bot / "version.txt").write_text(str(i))
        _push(db, blobs, _package(bot))
    with db.session() as s:
        robot = robots.get_robot(s, "invoice-bot")
        with pytest.raises(robots.RollbackImpossible):
            robots.rollback(s, robot, "carol")
        robots.promote(s, robot, 1, "carol")
        robots.promote(s, robot, 3, "carol")
        robots.promote(s, robot, 2, "dave")
        assert robots.rollback(s, robot, "carol").number == 3
        assert robots.rollback(s, robot, "carol").number == 1
        assert robot.production_version == 1
        with pytest.raises(robots.RollbackImpossible, match="no earlier production version"):
            robots.rollback(s, robot, "carol")
        with pytest.raises(robots.RobotNotFound, match="has no version 9"):
            robots.promote(s, robot, 9, "carol")
    with db.read_session() as s:
        robot = robots.get_robot(s, "invoice-bot")
        assert robots.get_version(s, robot, None).number == 1  # production wins over latest
        audit = [(a.action, a.version, a.previous, a.actor) for a in robots.history(s, robot)]
    assert audit == [
        ("push", 1, None, "alice"), ("push", 2, None, "alice"), ("push", 3, None, "alice"),
        ("promote", 1, None, "carol"), ("promote", 3, 1, "carol"), ("promote", 2, 3, "dave"),
        ("rollback", 3, 2, "carol"), ("rollback", 1, 3, "carol"),
    ]


def test_a_package_failing_check_is_refused_with_the_reason(bot: Path) -> None:
    suite = bot / "tasks.robot"
    suite.write_text(suite.read_text().replace("    Create Directory    ${OUTPUT}", "    Make Coffee"))
    with pytest.raises(robots.PackageRefused) as err:
        robots.vet_package(_package(bot), MAX)
    [problem] = err.value.problems
    assert (problem.file, problem.line) == ("tasks.robot", 12)
    assert "No keyword with name 'Make Coffee' found" in str(err.value)


def test_unsafe_or_oversized_package_is_refused(bot: Path) -> None:
    with pytest.raises(UnsafePackage, match="larger than the limit of 1000 bytes"):
        robots.vet_package(_package(bot), 1000)
