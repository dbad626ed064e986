"""The CLI's side of models found on disk: `serve --model-path`, and `cp` adopting (a request without a read
timeout: the server copies and hashes a whole GGUF)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from offload.cli import app
from offload.client import ApiClient
from offload.config import Settings
from tests.fakes.ollama_http import FakeOllama

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path / "home"))
    for name in ("OFFLOAD_HOST", "OFFLOAD_MODELS_PATH", "OFFLOAD_DISCOVER"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    calls: list[Settings] = []
    module = types.ModuleType("offload.server")
    module.serve = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "offload.server", module)
    return calls


def test_serve_takes_model_paths(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_MODELS_PATH", "/from-env")
    result = runner.invoke(app, ["serve", "--model-path", "/a", "--model-path", "/b"])
    assert result.exit_code == 0, result.output
    assert served[0].models_path == (Path("/a"), Path("/b"))


def test_serve_without_the_flag_keeps_the_environments(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OFFLOAD_MODELS_PATH", "/from-env")
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert served[0].models_path == (Path("/from-env"),)


def test_cp_of_a_found_model_waits_for_the_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[bool] = []
    real = ApiClient.request

    def recording(self: ApiClient, method: str, path: str, body: Any = None, *, wait: bool = False) -> Any:
        waits.append(wait)
        return real(self, method, path, body, wait=wait)

    monkeypatch.setattr(ApiClient, "request", recording)
    with FakeOllama() as fake:
        fake.on("POST", "/api/copy", json=None)
        result = runner.invoke(app, ["cp", "llama3.2:3b", "mine", "--host", fake.url])
    assert result.exit_code == 0, result.output
    assert result.stdout == "copied 'llama3.2:3b' to 'mine'\n"
    assert waits == [True]
