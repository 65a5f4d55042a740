"""Environment cache: keyed by spec hash, reused, built once under concurrency, LRU-bounded, pip fallback."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import pytest

from controltower.rpa.envs import EnvBuildError, EnvCache, find_uv
from controltower.rpa.package import env_hash


def _spec(python: str) -> dict:
    """A spec with no requirements: a bare venv, quick to build."""
    return {"python": python, "requirements": []}


def test_second_use_builds_nothing(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    with cache.use(_spec(">=3.8")) as first:
        assert first.built and first.build_s > 0
        assert first.hash == env_hash(_spec(">=3.8"))
        out = subprocess.run([first.python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
        assert Path(out.stdout.strip()) == first.path  # an isolated venv of its own
    with EnvCache(tmp_path).use(_spec(">=3.8")) as second:
        assert not second.built and second.build_s == 0.0
        assert second.path == first.path
    assert cache.builds == 1


def test_concurrent_builds_of_one_spec_happen_once(tmp_path: Path) -> None:
    caches = [EnvCache(tmp_path) for _ in range(4)]
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(caches))

    def use(cache: EnvCache) -> None:
        try:
            start.wait()
            with cache.use(_spec(">=3.7")) as env:
                results.append(env.built)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(results) == [False, False, False, True]
    assert sum(c.builds for c in caches) == 1


def test_least_recently_used_env_is_evicted(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_envs=2)
    specs = [_spec(">=3.5"), _spec(">=3.6"), _spec(">=3.4")]
    for spec in specs[:2]:
        with cache.use(spec):
            pass
    with cache.use(specs[0]) as env:  # touch the first: the second is now least recently used
        assert not env.built
    with cache.use(specs[2]) as env:
        assert env.built
    kept = {key for key, _ in cache.entries()}
    assert kept == {env_hash(specs[0]), env_hash(specs[2])}
    assert not (tmp_path / env_hash(specs[1])).exists()


def test_an_env_in_use_is_not_evicted(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_envs=1)
    with cache.use(_spec(">=3.3")) as held, cache.use(_spec(">=3.2")):
        assert held.path.exists()  # the second build could not evict the first while it is used
    assert len(cache.entries()) == 2
    assert cache.evict() and len(cache.entries()) == 1


def test_python_version_mismatch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EnvBuildError, match=re.escape("environment.python: '<3' wants another Python")), \
            EnvCache(tmp_path).use(_spec("<3")):
        pass
    assert EnvCache(tmp_path).entries() == []


def test_pip_fallback_builds_a_venv(tmp_path: Path) -> None:
    lines: list[str] = []
    with EnvCache(tmp_path, installer="pip").use(_spec(">=3.1"), on_line=lines.append) as env:
        assert env.built
        assert (env.path / "bin" / "pip").exists()  # made by `python -m venv`, not uv
    assert "with venv + pip" in lines[0]


def test_failed_install_leaves_nothing_half_built(tmp_path: Path) -> None:
    spec = {"python": None, "requirements": ["ctower-no-such-package-xyz==0.0.1"]}
    with pytest.raises(EnvBuildError, match="install failed"), EnvCache(tmp_path).use(spec):
        pass
    assert not (tmp_path / env_hash(spec)).exists()


@pytest.mark.skipif(find_uv() is None, reason="uv is not installed")
def test_uv_is_used_when_present(tmp_path: Path) -> None:
    lines: list[str] = []
    with EnvCache(tmp_path).use(_spec(">=3.0"), on_line=lines.append):
        pass
    assert "with uv" in lines[0]
