"""`offload create` with Modelfile ADAPTER lines, and `offload show` listing adapters, against a scripted server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.cli_format import show_summary
from tests.fakes.ollama_http import FakeOllama
from tests.fixtures.gguf_files import write_tiny_gguf
from tests.fixtures.lora import write_lora
from tests.unit.test_cli import invoke


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOllama]:
    """A scripted server, and no user config.toml or OFFLOAD_* variable (as test_cli.py isolates its tests)."""
    monkeypatch.setenv("OFFLOAD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("OFFLOAD_HOST", raising=False)
    with FakeOllama() as server:
        yield server


def digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_modelfile_adapters_are_uploaded_and_named_by_digest(fake: FakeOllama, tmp_path: Path) -> None:
    base = write_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "other").mkdir()
    first = write_lora(tmp_path / "lora.gguf", base, seed=1)
    second = write_lora(tmp_path / "other" / "lora.gguf", base, seed=2)  # the same file name: labels stay unique
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM ./tiny.gguf\nADAPTER ./lora.gguf\nADAPTER other/lora.gguf\n")
    fake.on("POST", "/api/create", ndjson=[{"status": "success"}])
    result = invoke(fake, "create", "tuned", "-f", str(modelfile))
    assert result.exit_code == 0, result.output
    assert set(fake.blobs) == {digest(base), digest(first), digest(second)}
    body = fake.requests_to("/api/create")[0].json()
    assert body["files"] == {"tiny.gguf": digest(base)}
    assert list(body["adapters"].items()) == [("lora.gguf", digest(first)), ("1-lora.gguf", digest(second))]


def test_an_adapter_on_a_model_name(fake: FakeOllama, tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "lora.gguf", write_tiny_gguf(tmp_path / "tiny.gguf"))
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM gemma3:270m\nADAPTER {lora}\n")
    fake.on("POST", "/api/create", ndjson=[{"status": "success"}])
    assert invoke(fake, "create", "tuned", "-f", str(modelfile)).exit_code == 0
    assert fake.requests_to("/api/create")[0].json() == {
        "model": "tuned",
        "stream": True,
        "from": "gemma3:270m",
        "adapters": {"lora.gguf": digest(lora)},
    }


def test_a_missing_adapter_file_fails_before_anything_is_sent(fake: FakeOllama, tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM gemma3:270m\nADAPTER ./missing.gguf\n")
    result = invoke(fake, "create", "tuned", "-f", str(modelfile))
    assert result.exit_code == 1
    assert "ADAPTER ./missing.gguf: no such file" in result.stderr
    assert not fake.requests_to("/api/create")


def test_show_lists_adapters() -> None:
    info = {"details": {"family": "gemma3"}, "adapters": [{"digest": "sha256:" + "ab" * 32, "size": 3_000_000}]}
    text = show_summary(info)
    assert "  Adapters\n    LoRA abababababab    3 MB\n" in text
    assert "Adapters" not in show_summary({"details": {"family": "gemma3"}})
