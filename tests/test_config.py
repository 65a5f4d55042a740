"""Settings come from CT_* variables and ctower.toml, and every one is documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from controltower.config import Settings, settings_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key in [k for k in __import__("os").environ if k.startswith("CT_")]:
        monkeypatch.delenv(key)
    settings = Settings()
    assert settings.data_dir == Path("./ctower-data")
    assert settings.port == 8080
    assert settings.db_url == f"sqlite:///{(tmp_path / 'ctower-data' / 'ctower.db').resolve()}"


def test_env_beats_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ctower.toml").write_text('port = 9100\nname = "Warehouse"\n')
    monkeypatch.delenv("CT_PORT", raising=False)
    monkeypatch.delenv("CT_NAME", raising=False)
    assert Settings().port == 9100
    assert Settings().name == "Warehouse"
    monkeypatch.setenv("CT_PORT", "9200")
    assert Settings().port == 9200


def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CT_PORT", "not-a-port")
    with pytest.raises(ValueError, match="port"):
        Settings()


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text()
    missing = [row["env"] for row in settings_reference() if f"`{row['env']}`" not in text]
    assert not missing, f"settings missing from README's configuration table: {missing}"
