"""Pulls from Hugging Face, end to end: the real server with HF_ENDPOINT pointed at the fake hub on loopback
(tests/fakes/huggingface.py, its LFS files behind a CDN on another host), pulled through the official ollama client
and through `offload pull`, then generated from by real llama.cpp: a one-file model and a split one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import ollama
import pytest

from tests.blackbox.server import ServerProcess, running_server
from tests.fakes.huggingface import FakeHub
from tests.fixtures.gguf_files import write_tiny_gguf

pytestmark = pytest.mark.blackbox


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    made = tmp_path_factory.mktemp("gguf")
    # The tiny test model loads in llama.cpp (random weights, 300 tokens with byte fallback): enough to generate.
    single = write_tiny_gguf(made / "single.gguf", n_tokens=300).read_bytes()
    (made / "split").mkdir()
    first = write_tiny_gguf(made / "split" / "Tiny-Q8_0.gguf", n_tokens=300, split_max_tensors=4)
    parts = {f"Q8_0/{part.name}": part.read_bytes() for part in sorted(first.parent.glob("*-of-*.gguf"))}
    with FakeHub(cdn=True) as hub:
        hub.add_repo("org/Tiny-GGUF", {"README.md": b"# tiny\n", "Tiny-Q4_K_M.gguf": single, **parts})
        yield hub


@pytest.fixture(scope="module")
def server(fake: FakeHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("offload-home")
    env = {"HF_ENDPOINT": fake.url, "HF_TOKEN": "", "HF_HOME": str(home / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    with running_server(home, env) as process:
        yield process


def test_the_ollama_client_pulls_and_the_model_generates(server: ServerProcess) -> None:
    client = ollama.Client(host=server.base_url)
    statuses = [part.status for part in client.pull("hf.co/org/Tiny-GGUF", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert any(status and status.startswith("pulling ") and status != "pulling manifest" for status in statuses)
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert "hf.co/org/tiny-gguf:latest" in [model.model for model in client.list().models]
    shown = client.show("hf.co/org/Tiny-GGUF")
    assert shown.details is not None and shown.details.family == "llama"
    answer = client.generate("hf.co/org/Tiny-GGUF", "hello", options={"num_predict": 1, "temperature": 0})
    assert answer.done and answer.eval_count == 1


def test_offload_pull_fetches_a_split_model_that_llama_cpp_loads(server: ServerProcess) -> None:
    pulled = _offload_pull(server, "hf.co/org/Tiny-GGUF:Q8_0", timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    assert "success" in pulled.stderr
    client = ollama.Client(host=server.base_url)
    answer = client.generate("hf.co/org/Tiny-GGUF:q8_0", "hello", options={"num_predict": 1, "temperature": 0})
    assert answer.done and answer.eval_count == 1


def test_offload_pull_says_what_is_wrong_without_a_traceback(server: ServerProcess) -> None:
    missing = _offload_pull(server, "hf.co/org/Tiny-GGUF:Q2_K", timeout=60)
    assert missing.returncode == 1
    assert "has no Q2_K quantization; it has Q4_K_M, Q8_0" in missing.stderr
    assert "Traceback" not in missing.stderr and "Traceback" not in server.log()


def _offload_pull(server: ServerProcess, name: str, *, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", "pull", name],
        env=server.env, capture_output=True, text=True, timeout=timeout,
    )
