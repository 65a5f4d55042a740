"""The session-signing secret: random per install, 0600, stable across restarts."""

from __future__ import annotations

import os

from controltower.web.secret import SECRET_FILE, storage_secret


def test_created_once_private_and_stable(tmp_path) -> None:
    first = storage_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(first) >= 32
    assert storage_secret(tmp_path) == first
    assert storage_secret(tmp_path / "other") != first  # per install


def test_loose_permissions_are_tightened(tmp_path) -> None:
    storage_secret(tmp_path)
    os.chmod(tmp_path / SECRET_FILE, 0o644)
    storage_secret(tmp_path)
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600
