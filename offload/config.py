"""One typed settings object, read once and passed down.

Sources, highest precedence first: CLI flags (passed as keyword arguments to `load_settings`),
`OFFLOAD_*` environment variables, `$OFFLOAD_HOME/config.toml`, the defaults below.
Nothing else in offload reads `os.environ` for its own settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_PORT = 11434


def default_home() -> Path:
    return Path.home() / ".offload"


class Settings(BaseSettings):
    """Every knob offload has. The descriptions are what `offload serve --help` and docs/CONFIG.md show."""

    model_config = SettingsConfigDict(env_prefix="OFFLOAD_", extra="ignore", validate_default=True)

    host: str = Field(
        f"127.0.0.1:{DEFAULT_PORT}",
        description="Address to bind (server) or reach (CLI): host[:port] or http://host:port.",
    )
    home: Path = Field(
        default_factory=default_home, description="Directory holding the model store and config.toml."
    )
    keep_alive: str = Field(
        "5m", description="How long a model stays loaded after its last request (Ollama duration syntax)."
    )
    num_ctx: int = Field(
        4096, ge=256, le=1 << 20, description="Context length when a request does not ask for one."
    )
    num_threads: int = Field(
        0, ge=0, le=1024, description="CPU threads per runner for decoding; 0 means one per physical core."
    )
    num_batch: int = Field(512, ge=1, le=1 << 16, description="Prompt tokens evaluated per llama_decode call.")
    runner_start_timeout: float = Field(
        300.0, gt=0, le=3600, description="Seconds a runner may take to load a model before it is given up."
    )
    log_level: str = Field("info", description="debug, info, warning or error.")

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be one of debug, info, warning, error")
        return value

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("host")
    @classmethod
    def _parsable_host(cls, value: str) -> str:
        split_host(value)
        return value

    @property
    def bind(self) -> tuple[str, int]:
        return split_host(self.host)

    @property
    def base_url(self) -> str:
        host, port = self.bind
        if host in {"0.0.0.0", "::", ""}:
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # config.toml lives in the home directory, which CLI or env may themselves move.
        home = init_settings().get("home") or env_settings().get("home") or default_home()
        toml_file = Path(str(home)).expanduser() / "config.toml"
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))


def load_settings(**cli_overrides: Any) -> Settings:
    """Build the settings; `None` values in `cli_overrides` mean "flag not given"."""
    given = {key: value for key, value in cli_overrides.items() if value is not None}
    return Settings(**given)


def split_host(value: str) -> tuple[str, int]:
    """Parse Ollama-style host strings: `host`, `host:port`, `:port`, `[v6]:port`, `http://host:port`."""
    text = value.strip()
    if not text:
        raise ValueError("host must not be empty")
    default_port = DEFAULT_PORT
    if "://" in text:  # as Ollama: an explicit scheme without a port means that scheme's port
        default_port = 443 if text.startswith("https://") else 80
    else:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"host {value!r}: scheme must be http or https")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"host {value!r}: bad port") from exc
    hostname = parts.hostname if parts.hostname is not None else "127.0.0.1"
    return hostname, port if port is not None else default_port

