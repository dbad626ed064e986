"""Settings: CLI kwargs > OFFLOAD_* env > $OFFLOAD_HOME/config.toml > defaults; host parsing."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from offload.config import (
    DEFAULT_PORT,
    ConfigError,
    Settings,
    config_entries,
    config_keys,
    dumps_toml,
    load_settings,
    resolve_home,
    set_config_value,
    split_host,
)


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


# ---------------------------------------------------------------- backend, gpu_layers, dotted keys, sectioned TOML


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("OFFLOAD_BACKEND", "vulkan", "vulkan"),
        ("OFFLOAD_BACKEND", "CUDA", "cuda"),
        ("OFFLOAD_BACKEND", "auto", "auto"),
        ("OFFLOAD_GPU_LAYERS", "-1", "-1"),
        ("OFFLOAD_GPU_LAYERS", "0", "0"),
        ("OFFLOAD_GPU_LAYERS", "33", "33"),
        ("OFFLOAD_GPU_LAYERS", "AUTO", "auto"),
        ("OFFLOAD_GPU_LAYERS", " 007 ", "7"),
    ],
)
def test_backend_and_gpu_layers_from_env(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    settings = load_settings()
    assert getattr(settings, env.removeprefix("OFFLOAD_").lower()) == expected


def test_backend_and_gpu_layers_defaults() -> None:
    settings = load_settings()
    assert (settings.backend, settings.gpu_layers) == ("auto", "auto")


@pytest.mark.parametrize(
    "overrides",
    [
        {"backend": "opencl"},
        {"backend": ""},
        {"gpu_layers": "-2"},
        {"gpu_layers": "all"},
        {"gpu_layers": "1.5"},
        {"gpu_layers": True},
        {"gpu_layers": 2.0},
    ],
)
def test_backend_and_gpu_layers_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        load_settings(**overrides)


def test_gpu_layers_int_accepted_from_cli_and_toml(clean_env: Path) -> None:
    assert load_settings(gpu_layers=12).gpu_layers == "12"
    write_toml(clean_env / ".offload", "[llm]\ngpu_layers = -1\n")
    assert load_settings().gpu_layers == "-1"


# ---------------------------------------------------------------- num_parallel: "auto" or 1..256


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), (" AUTO ", "auto"), ("1", 1), ("4", 4), (" 016 ", 16), ("256", 256), (8, 8)],
)
def test_num_parallel_accepted(monkeypatch: pytest.MonkeyPatch, value: object, expected: object) -> None:
    assert load_settings(num_parallel=value).num_parallel == expected
    monkeypatch.setenv("OFFLOAD_NUM_PARALLEL", str(value))
    assert load_settings().num_parallel == expected


def test_num_parallel_defaults_to_auto(clean_env: Path) -> None:
    assert load_settings().num_parallel == "auto"
    write_toml(clean_env / ".offload", "[llm]\nnum_parallel = 2\n")
    assert load_settings().num_parallel == 2


@pytest.mark.parametrize("value", ["0", "257", "-1", "four", "", "1.5", 0, 2.0, True])
def test_num_parallel_rejected_with_what_is_accepted(value: object) -> None:
    with pytest.raises(ValidationError, match=r'num_parallel must be "auto" or a count from 1 to 256, not'):
        load_settings(num_parallel=value)


def test_num_parallel_through_config_set(clean_env: Path) -> None:
    home = clean_env / ".offload"
    assert set_config_value(home, "llm.num_parallel", "auto") == "auto"
    assert set_config_value(home, "llm.num_parallel", "8") == 8
    assert tomllib.loads((home / "config.toml").read_text()) == {"llm": {"num_parallel": 8}}
    with pytest.raises(ConfigError, match=r"llm.num_parallel: .*from 1 to 256"):
        set_config_value(home, "llm.num_parallel", "0")


def test_every_field_has_one_dotted_key() -> None:
    keys = config_keys()
    assert sorted(keys.values()) == sorted(Settings.model_fields)
    assert all(key.count(".") == 1 for key in keys)
    assert {"server.host", "server.keep_alive", "llm.backend", "llm.gpu_layers", "llm.num_ctx"} <= set(keys)


@pytest.mark.parametrize(
    ("toml", "field", "expected"),
    [
        pytest.param('[llm]\nbackend = "vulkan"\n', "backend", "vulkan", id="sectioned"),
        pytest.param("num_ctx = 8192\n", "num_ctx", 8192, id="flat-compat"),
        pytest.param("num_ctx = 8192\n[llm]\nnum_ctx = 2048\n", "num_ctx", 2048, id="sectioned-beats-flat"),
        pytest.param("[runner]\nstart_timeout = 5\n", "runner_start_timeout", 5.0, id="renamed-leaf"),
        pytest.param('[server]\nhost = "0.0.0.0:1"\n', "host", "0.0.0.0:1", id="server-section"),
        pytest.param("[llm]\nunknown = 1\n[other]\nx = 2\n", "num_ctx", 4096, id="unknown-ignored"),
        pytest.param("[llm]\nhost = '1.2.3.4'\n", "host", f"127.0.0.1:{DEFAULT_PORT}", id="wrong-section-ignored"),
    ],
)
def test_sectioned_toml(clean_env: Path, toml: str, field: str, expected: object) -> None:
    write_toml(clean_env / ".offload", toml)
    assert getattr(load_settings(), field) == expected


def test_env_beats_sectioned_toml(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(clean_env / ".offload", '[llm]\nbackend = "vulkan"\n')
    monkeypatch.setenv("OFFLOAD_BACKEND", "cpu")
    assert load_settings().backend == "cpu"
    assert load_settings(backend="cuda").backend == "cuda"


def test_invalid_sectioned_value_rejected(clean_env: Path) -> None:
    write_toml(clean_env / ".offload", '[llm]\nbackend = "opencl"\n')
    with pytest.raises(ValidationError):
        load_settings()


def test_toml_that_is_not_toml_is_a_config_error(clean_env: Path) -> None:
    write_toml(clean_env / ".offload", "num_ctx = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings()


@pytest.mark.parametrize(
    ("before", "key", "raw", "stored", "after"),
    [
        pytest.param(None, "llm.backend", "Vulkan", "vulkan", {"llm": {"backend": "vulkan"}}, id="new-file"),
        pytest.param(None, "llm.num_ctx", "8192", 8192, {"llm": {"num_ctx": 8192}}, id="typed-int"),
        pytest.param(None, "runner.start_timeout", "30", 30.0, {"runner": {"start_timeout": 30.0}}, id="float"),
        pytest.param(None, "llm.gpu_layers", "-1", "-1", {"llm": {"gpu_layers": "-1"}}, id="gpu-layers"),
        pytest.param(
            "num_ctx = 1024\nnum_batch = 64\n",
            "llm.num_ctx",
            "2048",
            2048,
            {"num_batch": 64, "llm": {"num_ctx": 2048}},
            id="flat-line-replaced",
        ),
        pytest.param(
            '[llm]\nbackend = "cpu"\n[mine]\nnote = "a \\"quoted\\" é"\n',
            "server.keep_alive",
            "1h",
            "1h",
            {"llm": {"backend": "cpu"}, "mine": {"note": 'a "quoted" é'}, "server": {"keep_alive": "1h"}},
            id="other-content-kept",
        ),
    ],
)
def test_set_config_value(
    tmp_path: Path, before: str | None, key: str, raw: str, stored: object, after: dict[str, object]
) -> None:
    if before is not None:
        write_toml(tmp_path, before)
    assert set_config_value(tmp_path, key, raw) == stored
    assert tomllib.loads((tmp_path / "config.toml").read_text()) == after
    assert not list(tmp_path.glob(".config.*"))  # no temporary file left behind
    assert getattr(load_settings(home=tmp_path), config_keys()[key]) == stored


@pytest.mark.parametrize(
    ("key", "raw", "message"),
    [
        ("llm.nope", "1", "unknown config key 'llm.nope'; known keys: server.host"),
        ("num_ctx", "1", "unknown config key"),
        ("llm.num_ctx", "10", "llm.num_ctx: "),
        ("llm.num_ctx", "many", "llm.num_ctx: "),
        ("llm.backend", "opencl", "llm.backend: "),
        ("llm.gpu_layers", "-5", "llm.gpu_layers: "),
        ("server.home", "/tmp/x", "OFFLOAD_HOME"),  # noqa: S108 (never written)
        ("server.host", "ftp://x", "server.host: "),
    ],
)
def test_set_config_value_rejects_without_writing(tmp_path: Path, key: str, raw: str, message: str) -> None:
    write_toml(tmp_path, "num_batch = 64\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        set_config_value(tmp_path, key, raw)
    assert (tmp_path / "config.toml").read_text() == "num_batch = 64\n"


def test_set_ignores_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_NUM_CTX", "10")  # invalid, but config.toml is not the environment
    assert set_config_value(tmp_path, "llm.num_batch", "128") == 128


def test_set_refuses_a_section_that_is_a_value(tmp_path: Path) -> None:
    write_toml(tmp_path, "llm = 3\n")
    with pytest.raises(ConfigError, match="not a \\[llm\\] table"):
        set_config_value(tmp_path, "llm.backend", "cpu")


def test_config_entries_sources(tmp_path: Path) -> None:
    write_toml(tmp_path, "[llm]\nnum_ctx = 8192\n")
    settings = load_settings(home=tmp_path)
    environ = {"offload_backend": "cpu"}
    entries = {key: (value, source) for key, value, source in config_entries(settings, environ, tmp_path)}
    assert entries["llm.num_ctx"] == (8192, "config.toml")
    assert entries["llm.backend"] == ("auto", "env OFFLOAD_BACKEND")  # settings came from elsewhere; source by name
    assert entries["llm.gpu_layers"] == ("auto", "default")
    assert entries["server.home"] == (str(tmp_path.resolve()), "default")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({}, ".offload"), ({"OFFLOAD_HOME": "/srv/o"}, "/srv/o"), ({"offload_home": "/srv/p"}, "/srv/p")],
)
def test_resolve_home(clean_env: Path, environ: dict[str, str], expected: str) -> None:
    assert resolve_home(environ) == (clean_env / expected).resolve()


@pytest.mark.parametrize(
    "document",
    [
        {"a": 1, "b": True, "c": 1.5, "d": "x\\y\"z\n\t\x01\x7f", "e": [1, "two"]},
        {"t": {"inner": {"deep": "v"}}, "top": float("inf")},
        {"weird key": {"ok-key_1": "é ☃ 😀"}},
        {"empty": {}},
    ],
)
def test_dumps_toml_round_trips(document: dict[str, object]) -> None:
    assert tomllib.loads(dumps_toml(document)) == document


def test_dumps_toml_refuses_arrays_of_tables() -> None:
    with pytest.raises(ConfigError, match="x"):
        dumps_toml({"x": [{"a": 1}]})


# ---------------------------------------------------------------- the security settings


def test_security_defaults(clean_env: Path) -> None:
    settings = load_settings()
    assert settings.api_key is None
    assert settings.api_key_file is None
    assert settings.origins == ()
    assert settings.allowed_hosts == ()
    assert settings.max_body_bytes == 32 * 1024 * 1024


def test_lists_from_env_and_toml(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_ORIGINS", " https://A.example/ ,http://b.example:8080,, ")
    write_toml(clean_env / ".offload", '[server]\nallowed_hosts = ["Box.lan", "*.corp"]\n')
    settings = load_settings()
    assert settings.origins == ("https://a.example", "http://b.example:8080")
    assert settings.allowed_hosts == ("box.lan", "*.corp")


def test_the_key_is_masked_when_shown_and_stored_in_clear(tmp_path: Path) -> None:
    shown = set_config_value(tmp_path, "server.api_key", "sk-1234")
    assert str(shown) == "**********"
    assert tomllib.loads((tmp_path / "config.toml").read_text()) == {"server": {"api_key": "sk-1234"}}
    settings = load_settings(home=tmp_path)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "sk-1234"
    entries = {key: value for key, value, _ in config_entries(settings, {}, tmp_path)}
    assert str(entries["server.api_key"]) == "**********"


def test_origins_set_through_config_are_a_toml_list(tmp_path: Path) -> None:
    assert set_config_value(tmp_path, "server.origins", "https://a.example,https://b.example") == [
        "https://a.example",
        "https://b.example",
    ]
    assert load_settings(home=tmp_path).origins == ("https://a.example", "https://b.example")
    entries = {key: value for key, value, _ in config_entries(load_settings(home=tmp_path), {}, tmp_path)}
    assert entries["server.origins"] == "https://a.example,https://b.example"


def test_the_key_file_is_read_when_no_key_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert load_settings(api_key_file=str(key_file)).api_key.get_secret_value() == "from-file"  # type: ignore[union-attr]
    monkeypatch.setenv("OFFLOAD_API_KEY", "from-env")
    assert load_settings(api_key_file=str(key_file)).api_key.get_secret_value() == "from-env"  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["1023", "0", "-1", "lots"])
def test_max_body_bytes_rejected(value: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(max_body_bytes=value)
