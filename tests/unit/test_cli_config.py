"""`offload config get|set|list` through typer's runner, on a temporary OFFLOAD_HOME."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from offload.cli_config import config_app

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in list(os.environ):
        if key.upper().startswith("OFFLOAD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("args", "code", "output", "toml"),
    [
        (["set", "llm.backend", "vulkan"], 0, "llm.backend = vulkan", {"llm": {"backend": "vulkan"}}),
        (["set", "llm.gpu_layers", "-1"], 0, "llm.gpu_layers = -1", {"llm": {"gpu_layers": "-1"}}),
        (["set", "llm.num_ctx", "8192"], 0, "llm.num_ctx = 8192", {"llm": {"num_ctx": 8192}}),
        (["set", "llm.num_ctx", "10"], 1, "llm.num_ctx: Input should be greater than or equal to 256", None),
        (["set", "llm.colour", "red"], 1, "unknown config key 'llm.colour'; known keys: server.host", None),
        (["set", "server.home", "/elsewhere"], 1, "use OFFLOAD_HOME or --home", None),
        (["get", "llm.colour"], 1, "known keys: server.host", None),
        (["get", "llm.backend"], 0, "auto", None),
        (["get", "server.keep_alive"], 0, "5m", None),
    ],
)
def test_config_commands(home: Path, args: list[str], code: int, output: str, toml: dict[str, object] | None) -> None:
    result = runner.invoke(config_app, args)
    assert result.exit_code == code, result.output
    assert output in result.output
    path = home / "config.toml"
    if toml is None:
        assert not path.exists()
    else:
        assert tomllib.loads(path.read_text()) == toml


def test_set_then_get_and_list(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert runner.invoke(config_app, ["set", "llm.backend", "CPU"]).exit_code == 0
    assert runner.invoke(config_app, ["get", "llm.backend"]).output == "cpu\n"
    monkeypatch.setenv("OFFLOAD_NUM_CTX", "2048")
    listed = runner.invoke(config_app, ["list"])
    assert listed.exit_code == 0
    rows = {line.split()[0]: line.split()[1:] for line in listed.output.splitlines()}
    assert rows["llm.backend"] == ["cpu", "config.toml"]
    assert rows["llm.num_ctx"] == ["2048", "env", "OFFLOAD_NUM_CTX"]
    assert rows["llm.gpu_layers"] == ["auto", "default"]
    assert rows["server.home"] == [str(home.resolve()), "env", "OFFLOAD_HOME"]


def test_set_warns_when_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_BACKEND", "cuda")
    result = runner.invoke(config_app, ["set", "llm.backend", "cpu"])
    assert result.exit_code == 0
    assert "OFFLOAD_BACKEND is set in the environment and overrides config.toml" in result.output


def test_set_repairs_a_file_that_get_rejects(home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text('[llm]\nbackend = "opencl"\n')
    got = runner.invoke(config_app, ["get", "llm.num_ctx"])
    assert got.exit_code == 1
    assert "invalid settings: llm.backend: " in got.output
    # set checks the whole file, so the bad key must be the one fixed first
    assert runner.invoke(config_app, ["set", "llm.num_ctx", "8192"]).exit_code == 1
    assert runner.invoke(config_app, ["set", "llm.backend", "cpu"]).exit_code == 0
    assert runner.invoke(config_app, ["get", "llm.backend"]).output == "cpu\n"


def test_not_toml_is_reported(home: Path) -> None:
    home.mkdir()
    (home / "config.toml").write_text("= nonsense\n")
    result = runner.invoke(config_app, ["list"])
    assert result.exit_code == 1
    assert "not valid TOML" in result.output
