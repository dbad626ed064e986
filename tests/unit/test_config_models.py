"""The settings for models found on disk: folder lists separated like PATH, the sources to read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from offload.config import config_entries, load_settings, set_config_value


def test_models_path_is_separated_like_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFLOAD_MODELS_PATH", os.pathsep.join(["/a", "~/b", ""]))
    settings = load_settings(home=tmp_path)
    assert settings.models_path == (Path("/a"), Path.home() / "b")
    assert dict((k, v) for k, v, _ in config_entries(settings, os.environ, tmp_path))["models.path"] == os.pathsep.join(
        ["/a", str(Path.home() / "b")]
    )


def test_model_path_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFLOAD_MODELS_PATH", "/env")
    assert load_settings(home=tmp_path, models_path=(Path("/flag"),)).models_path == (Path("/flag"),)


@pytest.mark.parametrize(
    ("text", "sources"),
    [("ollama", ("ollama",)), ("Ollama, huggingface", ("ollama", "huggingface")), ("none", ()), ("", ())],
)
def test_discover_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, sources: tuple[str, ...]) -> None:
    monkeypatch.setenv("OFFLOAD_DISCOVER", text)
    assert load_settings(home=tmp_path).discover == sources


def test_discover_rejects_an_unknown_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFLOAD_DISCOVER", "ollama,lmstudioo")
    with pytest.raises(ValidationError, match="unknown source 'lmstudioo'"):
        load_settings(home=tmp_path)


def test_folders_round_trip_through_config_toml(tmp_path: Path) -> None:
    assert set_config_value(tmp_path, "models.path", os.pathsep.join(["/x", "/y"])) == (Path("/x"), Path("/y"))
    assert set_config_value(tmp_path, "models.ollama", "/o") == "/o"
    settings = load_settings(home=tmp_path)
    assert settings.models_path == (Path("/x"), Path("/y")) and settings.ollama_models == Path("/o")
    assert 'path = ["/x", "/y"]' in (tmp_path / "config.toml").read_text()
