"""Settings: CLI kwargs > OFFLOAD_* env > $OFFLOAD_HOME/config.toml > defaults; host parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from offload.config import DEFAULT_PORT, load_settings, split_host


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No OFFLOAD_* from the outer environment, and a fake $HOME so ~/.offload/config.toml is ours."""
    for key in list(os.environ):
        if key.upper().startswith("OFFLOAD_"):
            monkeypatch.delenv(key)
    user_home = tmp_path / "user"
    user_home.mkdir()
    monkeypatch.setenv("HOME", str(user_home))
    return user_home


def write_toml(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)


def test_defaults(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.host == f"127.0.0.1:{DEFAULT_PORT}"
    assert settings.home == (clean_env / ".offload").resolve()
    assert settings.models_dir == settings.home / "models"
    assert settings.keep_alive == "5m"
    assert settings.num_ctx == 4096
    assert settings.log_level == "info"


# Each row: which sources set num_ctx (toml, env, cli) and the value that must win.
@pytest.mark.parametrize(
    ("toml", "env", "cli", "expected"),
    [
        pytest.param(None, None, None, 4096, id="default"),
        pytest.param(8192, None, None, 8192, id="toml-over-default"),
        pytest.param(8192, "2048", None, 2048, id="env-over-toml"),
        pytest.param(None, "2048", None, 2048, id="env-over-default"),
        pytest.param(8192, "2048", 1024, 1024, id="cli-over-env"),
        pytest.param(8192, None, 1024, 1024, id="cli-over-toml"),
    ],
)
def test_precedence(
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    toml: int | None,
    env: str | None,
    cli: int | None,
    expected: int,
) -> None:
    if toml is not None:
        write_toml(clean_env / ".offload", f"num_ctx = {toml}\n")
    if env is not None:
        monkeypatch.setenv("OFFLOAD_NUM_CTX", env)
    assert load_settings(num_ctx=cli).num_ctx == expected


def test_none_kwargs_mean_flag_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_NUM_CTX", "2048")
    monkeypatch.setenv("OFFLOAD_LOG_LEVEL", "debug")
    settings = load_settings(num_ctx=None, log_level=None, host=None, home=None)
    assert settings.num_ctx == 2048
    assert settings.log_level == "debug"
    assert settings.host == f"127.0.0.1:{DEFAULT_PORT}"


def test_toml_read_from_home_chosen_by_env(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(clean_env / ".offload", "num_ctx = 1111\n")
    env_home = tmp_path / "env-home"
    write_toml(env_home, 'num_ctx = 2222\nkeep_alive = "1h"\n')
    monkeypatch.setenv("OFFLOAD_HOME", str(env_home))
    settings = load_settings()
    assert settings.home == env_home.resolve()
    assert settings.num_ctx == 2222
    assert settings.keep_alive == "1h"


def test_toml_read_from_home_chosen_by_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_home, cli_home = tmp_path / "env-home", tmp_path / "cli-home"
    write_toml(env_home, "num_ctx = 2222\n")
    write_toml(cli_home, "num_ctx = 3333\n")
    monkeypatch.setenv("OFFLOAD_HOME", str(env_home))
    settings = load_settings(home=cli_home)
    assert settings.home == cli_home.resolve()
    assert settings.num_ctx == 3333


def test_home_with_tilde_is_expanded_for_the_toml_too(clean_env: Path) -> None:
    write_toml(clean_env / "elsewhere", "num_batch = 64\n")
    settings = load_settings(home="~/elsewhere")
    assert settings.home == (clean_env / "elsewhere").resolve()
    assert settings.num_batch == 64


def test_env_beats_toml_for_every_source_field(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(clean_env / ".offload", 'host = "0.0.0.0:1"\nlog_level = "error"\n')
    monkeypatch.setenv("OFFLOAD_HOST", "127.0.0.1:2")
    settings = load_settings()
    assert settings.host == "127.0.0.1:2"
    assert settings.log_level == "error"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", DEFAULT_PORT)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:11434", ("::1", 11434)),
        ("[::]:5000", ("::", 5000)),
        ("http://example:1234", ("example", 1234)),
        ("http://example", ("example", 80)),
        ("https://example", ("example", 443)),
        ("https://example:8443", ("example", 8443)),
        ("localhost", ("localhost", DEFAULT_PORT)),
        ("  localhost:1  ", ("localhost", 1)),
    ],
)
def test_split_host(value: str, expected: tuple[str, int]) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize("value", ["", "   ", "http://h:99999", "h:port", "ftp://x", "unix:///tmp/sock"])
def test_split_host_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="host"):
        split_host(value)


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),
        ("[::]:5000", "http://127.0.0.1:5000"),
        ("127.0.0.1", f"http://127.0.0.1:{DEFAULT_PORT}"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("example:1234", "http://example:1234"),
        (":9000", "http://127.0.0.1:9000"),
    ],
)
def test_base_url(tmp_path: Path, host: str, url: str) -> None:
    assert load_settings(home=tmp_path, host=host).base_url == url


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_ctx": 10},
        {"num_ctx": 1 << 21},
        {"log_level": "loud"},
        {"host": "ftp://x"},
        {"host": ""},
        {"num_threads": -1},
        {"num_batch": 0},
        {"runner_start_timeout": 0},
    ],
)
def test_invalid_values_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        load_settings(**overrides)


@pytest.mark.parametrize(("env", "value"), [("OFFLOAD_NUM_CTX", "abc"), ("OFFLOAD_LOG_LEVEL", "loud")])
def test_invalid_env_rejected(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError):
        load_settings()


def test_invalid_toml_value_rejected(clean_env: Path) -> None:
    write_toml(clean_env / ".offload", "num_ctx = 10\n")
    with pytest.raises(ValidationError):
        load_settings()


def test_log_level_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_LOG_LEVEL", "WARNING")
    assert load_settings().log_level == "warning"
