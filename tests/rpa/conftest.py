"""RPA test fixtures: one environment cache for the whole session, so each spec is built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from controltower.rpa.envs import EnvCache


@pytest.fixture(scope="session")
def env_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rpa-envs")


@pytest.fixture
def envs(env_cache_dir: Path) -> EnvCache:
    return EnvCache(env_cache_dir, max_envs=20)
