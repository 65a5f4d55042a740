"""Settings: every default is a `CT_*` environment variable or a key in `ctower.toml`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _toml_path() -> Path:
    return Path(os.environ.get("CT_CONFIG_FILE", "ctower.toml"))


WAL_AUTOCHECKPOINT_PAGES = 100_000  # pages of 4 KiB: a SQLite checkpoint once the WAL holds about 400 MB


class Settings(BaseSettings):
    """Server-side settings. Agents and the CLI read the few they need from the same place."""

    model_config = SettingsConfigDict(env_prefix="CT_", extra="ignore")

    name: str = Field("Control Tower", description="Name shown in the dashboard and the API")
    data_dir: Path = Field(Path("./ctower-data"), description="Where the database, blobs and tokens live")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite in WAL mode at <data-dir>/ctower.db"
    )
    sqlite_wal_autocheckpoint: int = Field(
        WAL_AUTOCHECKPOINT_PAGES,
        ge=1,
        description="SQLite: checkpoint the write-ahead log once it holds this many 4 KiB pages",
    )
    host: str = Field("127.0.0.1", description="HTTP listen address")
    port: int = Field(8080, ge=0, le=65535, description="HTTP listen port")
    mqtt_port: int = Field(1883, ge=0, le=65535, description="Embedded MQTT broker port; 0 disables it")
    mqtt_url: str | None = Field(None, description="External MQTT broker URL instead of the embedded one")
    mqtt_host: str = Field("127.0.0.1", description="Embedded MQTT broker listen address")
    iot_message_max_bytes: int = Field(256 * 1024, gt=0, description="Largest device telemetry message, bytes")
    iot_queue_max: int = Field(
        100_000, gt=0, description="Device messages received and waiting to be stored; past it, brokers hold the rest"
    )
    iot_file_max_bytes: int = Field(100 * 1024 * 1024, gt=0, description="Largest file a device may upload, bytes")
    iot_upload_idle_s: float = Field(
        300, gt=0, description="A file sent in chunks over MQTT is dropped after this many seconds without a chunk"
    )
    iot_http_offline_after_s: float = Field(
        300, gt=0, description="An HTTP-only device is offline after this many seconds without a request"
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error")

    agent_interval_s: float = Field(10.0, gt=0, description="Agent resource-sample interval, seconds")
    agent_heartbeat_s: float = Field(10.0, gt=0, description="Agent heartbeat interval, seconds")
    agent_capacity: int = Field(1, ge=1, le=64, description="Robot runs an agent takes at once")
    agent_outbox_max: int = Field(100_000, gt=0, description="Agent outbox bound; past it the oldest drop")
    host_down_after: int = Field(3, ge=1, description="Missed heartbeats before a host is DOWN")

    raw_retention_days: float = Field(7, gt=0, description="Keep raw samples this many days")
    minute_retention_days: float = Field(30, gt=0, description="Keep 1-minute rollups this many days")
    hour_retention_days: float = Field(400, gt=0, description="Keep 1-hour rollups this many days")

    work_lease_s: float = Field(60, gt=0, description="Default work-item lease, seconds")
    event_retention_days: float = Field(30, gt=0, description="Keep persisted events this many days")
    blob_max_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest blob accepted, bytes")
    webhook_retries: int = Field(5, ge=0, description="Webhook delivery attempts after the first")

    rpa_package_max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="Largest robot package (unpacked), bytes")
    rpa_env_cache_dir: Path | None = Field(
        None, description="Where agents keep robot environments; default ~/.cache/controltower/rpa-envs"
    )
    rpa_env_cache_max: int = Field(10, ge=1, description="Robot environments kept per agent (least recently used go)")
    vault_key: SecretStr | None = Field(
        None, description="Fernet key(s) for the robot vault, comma-separated, newest first; "
        "default: <data-dir>/vault.key, made on first use"
    )
    rpa_data_max_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest JSON input, output.json or work-item payload of a run, bytes"
    )
    rpa_input_file_max_bytes: int = Field(
        100 * 1024 * 1024, gt=0, description="Largest input file uploaded for a run or work item, bytes"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_path())
        return (init_settings, env_settings, toml)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ctower.db').resolve()}"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin-token"

    def prepare(self) -> Settings:
        """Create the data dir; return self for chaining."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self


def settings_reference() -> list[dict[str, Any]]:
    """Every setting with its env name, default and description (for docs and `ctower config`)."""
    rows = []
    for name, field in Settings.model_fields.items():
        rows.append(
            {
                "env": f"CT_{name.upper()}",
                "default": field.default,
                "description": field.description or "",
            }
        )
    return rows


@lru_cache
def get_settings() -> Settings:
    return Settings()
