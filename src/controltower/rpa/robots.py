"""Robot file management: vet and store immutable numbered versions, list, download, diff, promote, roll back."""

from __future__ import annotations

import difflib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from controltower.core.blobs import BlobStore
from controltower.rpa.archive import FileEntry, extract, inspect_zip, read_member
from controltower.rpa.check import check_package, errors
from controltower.rpa.models import Robot, RobotAudit, RobotVersion
from controltower.rpa.package import Problem, RobotSpec
from controltower.rpa.schemas import AuditPublic, FilePublic, RobotPublic, RobotVersionPublic, VersionDiff

MAX_DIFF_CHARS = 1_000_000
VersionRef = int | Literal["production", "latest"] | None


class RobotNotFound(LookupError):
    """No robot or no such version."""


class PackageRefused(ValueError):
    """The package failed `check`; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("package refused: " + "; ".join(str(p) for p in problems))


class DuplicateVersion(ValueError):
    """The pushed package is identical to the robot's latest version."""


class RollbackImpossible(ValueError):
    """There is no earlier production version to go back to."""


@dataclass(frozen=True)
class VettedPackage:
    spec: RobotSpec
    files: list[FileEntry]
    warnings: list[Problem]


def vet_package(data: bytes, max_bytes: int) -> VettedPackage:
    """Check a pushed zip: safe to unpack (UnsafePackage), robot.yaml valid and the dry run clean (PackageRefused).

    Slow (it runs Robot Framework's dry run in a subprocess): call it from a worker thread.
    """
    files = inspect_zip(data, max_bytes=max_bytes)
    with tempfile.TemporaryDirectory(prefix="ctower-push-") as tmp:
        extract(data, Path(tmp), max_bytes=max_bytes)
        spec, problems = check_package(Path(tmp))
    if spec is None or errors(problems):
        raise PackageRefused(errors(problems) or problems)
    return VettedPackage(spec=spec, files=files, warnings=problems)


def get_robot(session: Session, name: str) -> Robot:
    robot = session.scalar(select(Robot).where(Robot.name == name))
    if robot is None:
        raise RobotNotFound(f"no robot named {name!r}")
    return robot


def _latest_number(session: Session, robot_id: int) -> int | None:
    return session.scalar(select(func.max(RobotVersion.number)).where(RobotVersion.robot_id == robot_id))


def store_version(
    session: Session, blobs: BlobStore, data: bytes, vetted: VettedPackage, actor: str, note: str = ""
) -> RobotVersion:
    """Add the next numbered version of the robot named in robot.yaml (the robot is created on first push)."""
    spec = vetted.spec
    robot = session.scalar(select(Robot).where(Robot.name == spec.name))
    if robot is None:
        robot = Robot(name=spec.name, description=spec.description)
        session.add(robot)
        session.flush()
    robot.description = spec.description
    latest = _latest_number(session, robot.id)
    ref = blobs.put_bytes(data)
    if latest is not None:
        previous = get_version(session, robot, latest)
        if previous.sha256 == ref.sha256:
            raise DuplicateVersion(f"package is identical to {robot.name} version {latest}")
    version = RobotVersion(
        robot_id=robot.id,
        number=(latest or 0) + 1,
        sha256=ref.sha256,
        size=ref.size,
        spec=spec.model_dump(mode="json"),
        files=[{"path": f.path, "size": f.size, "sha256": f.sha256} for f in vetted.files],
        warnings=[str(w) for w in vetted.warnings],
        note=note,
        pushed_by=actor,
    )
    session.add(version)
    session.add(RobotAudit(robot_id=robot.id, action="push", version=version.number, actor=actor))
    session.flush()
    return version


def get_version(session: Session, robot: Robot, ref: VersionRef = None) -> RobotVersion:
    """A version by number, or `production`, or `latest`; None means production if set, else latest."""
    if ref is None:
        ref = robot.production_version or "latest"
    if ref == "production":
        if robot.production_version is None:
            raise RobotNotFound(f"robot {robot.name!r} has no production version; promote one first")
        ref = robot.production_version
    if ref == "latest":
        number = _latest_number(session, robot.id)
        if number is None:
            raise RobotNotFound(f"robot {robot.name!r} has no versions")
        ref = number
    version = session.scalar(
        select(RobotVersion).where(RobotVersion.robot_id == robot.id, RobotVersion.number == int(ref))
    )
    if version is None:
        raise RobotNotFound(f"robot {robot.name!r} has no version {ref}")
    return version


def list_robots(session: Session) -> list[RobotPublic]:
    latest = dict(
        session.execute(select(RobotVersion.robot_id, func.max(RobotVersion.number)).group_by(RobotVersion.robot_id))
        .all()
    )
    return [
        RobotPublic(id=r.id, name=r.name, description=r.description, production_version=r.production_version,
                    latest_version=latest.get(r.id), created_at=r.created_at)
        for r in session.scalars(select(Robot).order_by(Robot.name))
    ]


def list_versions(session: Session, robot: Robot) -> list[RobotVersion]:
    """Newest first."""
    return list(
        session.scalars(select(RobotVersion).where(RobotVersion.robot_id == robot.id)
                        .order_by(RobotVersion.number.desc()))
    )


def version_public(robot: Robot, version: RobotVersion) -> RobotVersionPublic:
    return RobotVersionPublic(
        robot=robot.name,
        number=version.number,
        sha256=version.sha256,
        size=version.size,
        spec=version.spec,
        files=[FilePublic(**f) for f in version.files],
        warnings=version.warnings or [],
        note=version.note,
        pushed_by=version.pushed_by,
        pushed_at=version.pushed_at,
        production=robot.production_version == version.number,
    )


def history(session: Session, robot: Robot) -> list[AuditPublic]:
    """Oldest first."""
    rows = session.scalars(select(RobotAudit).where(RobotAudit.robot_id == robot.id).order_by(RobotAudit.id))
    return [AuditPublic(action=r.action, version=r.version, previous=r.previous, actor=r.actor, at=r.at) for r in rows]


def _production_stack(session: Session, robot: Robot) -> list[int]:
    stack: list[int] = []
    for row in session.scalars(
        select(RobotAudit).where(RobotAudit.robot_id == robot.id, RobotAudit.action.in_(("promote", "rollback")))
        .order_by(RobotAudit.id)
    ):
        if row.action == "promote" and row.version is not None:
            stack.append(row.version)
        elif stack:
            stack.pop()
    return stack


def promote(session: Session, robot: Robot, number: int, actor: str) -> RobotVersion:
    version = get_version(session, robot, number)
    session.add(RobotAudit(robot_id=robot.id, action="promote", version=number,
                           previous=robot.production_version, actor=actor))
    robot.production_version = number
    session.flush()
    return version


def rollback(session: Session, robot: Robot, actor: str) -> RobotVersion:
    """Production goes back to the version it had before the last promotion still in force."""
    stack = _production_stack(session, robot)
    if len(stack) < 2:
        raise RollbackImpossible(f"robot {robot.name!r} has no earlier production version to roll back to")
    target = stack[-2]
    session.add(RobotAudit(robot_id=robot.id, action="rollback", version=target,
                           previous=robot.production_version, actor=actor))
    robot.production_version = target
    session.flush()
    return get_version(session, robot, target)


def _text(data: bytes | None) -> list[str] | None:
    if data is None:
        return []
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def diff_versions(session: Session, blobs: BlobStore, robot: Robot, a: int, b: int) -> VersionDiff:
    """Which files were added, removed or changed from version `a` to `b`, and a unified diff of the text ones."""
    va, vb = get_version(session, robot, a), get_version(session, robot, b)
    fa = {f["path"]: f["sha256"] for f in va.files}
    fb = {f["path"]: f["sha256"] for f in vb.files}
    added = sorted(set(fb) - set(fa))
    removed = sorted(set(fa) - set(fb))
    changed = sorted(p for p in set(fa) & set(fb) if fa[p] != fb[p])
    with blobs.open(va.sha256) as fh:
        za = fh.read()
    with blobs.open(vb.sha256) as fh:
        zb = fh.read()
    chunks: list[str] = []
    for path in sorted({*added, *removed, *changed}):
        old = _text(read_member(za, path) if path in fa else None)
        new = _text(read_member(zb, path) if path in fb else None)
        if old is None or new is None:
            chunks.append(f"Binary files v{a}/{path} and v{b}/{path} differ\n")
            continue
        lines = difflib.unified_diff(old, new, fromfile=f"v{a}/{path}", tofile=f"v{b}/{path}")
        chunks.append("".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                              for line in lines))
    text = "".join(chunks)
    if len(text) > MAX_DIFF_CHARS:
        text = text[:MAX_DIFF_CHARS] + "\n... diff cut at 1,000,000 characters\n"
    return VersionDiff(robot=robot.name, a=a, b=b, added=added, removed=removed, changed=changed, diff=text)
