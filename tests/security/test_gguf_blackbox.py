"""One black-box check: the real `offload serve`, driven by the official ollama client, refuses a Bleeding
Llama GGUF (tensor data past the end of the file) with a 400, keeps nothing of it, and goes on serving.
No model needs to load, so this runs without the starter model and without llama.cpp doing any work."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import ollama
import pytest

from tests.blackbox.server import running_server
from tests.security.cases import CASES, seed_model


def case_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_real_server_refuses_a_malformed_gguf_and_keeps_serving(tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == "data-past-eof")
    bad, good = tmp_path / "bad.gguf", tmp_path / "good.gguf"
    bad.write_bytes(case.make())
    good.write_bytes(seed_model())
    home = tmp_path / "home"
    with running_server(home) as server:
        raw = httpx.post(f"{server.base_url}/api/blobs/{case_digest(bad)}", content=bad.read_bytes(), timeout=30)
        assert raw.status_code == 201
        raw = httpx.post(
            server.base_url + "/api/create",
            json={"model": "evil", "files": {"model.gguf": case_digest(bad)}, "stream": False},
            timeout=30,
        )
        assert raw.status_code == 400
        assert raw.json() == {"error": "tensor 't': data at offset 0 runs past end of file"}

        client = ollama.Client(host=server.base_url, timeout=30)
        digest = client.create_blob(bad)
        with pytest.raises(ollama.ResponseError) as refused:
            client.create(model="evil", files={"model.gguf": digest})
        assert refused.value.status_code == 400
        assert refused.value.error == "tensor 't': data at offset 0 runs past end of file"

        blobs = home / "models" / "blobs"
        assert not (blobs / digest.replace(":", "-")).exists()
        assert not list((home / "models" / "manifests").rglob("evil"))
        assert httpx.head(f"{server.base_url}/api/blobs/{digest}", timeout=30).status_code == 404

        # Still serving: the root answers, and a good file becomes a model through the same routes.
        assert httpx.get(server.base_url + "/", timeout=30).text.startswith("offload is running")
        client.create(model="seed", files={"model.gguf": client.create_blob(good)})
        assert [m.model for m in client.list().models] == ["seed:latest"]
        details = client.show("seed").details
        assert details is not None and details.family == "llama"
        assert server.proc is not None and server.proc.poll() is None
