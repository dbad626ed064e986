"""/api/create with LoRA adapters (Ollama's `adapters` field, Modelfile ADAPTER) and /api/show listing them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from offload.models.store import Store, StoredModel
from tests.fixtures.lora import write_lora


def upload(client: TestClient, store: Store, path: Path) -> str:
    digest = store.write_blob([path.read_bytes()])
    assert client.head(f"/api/blobs/{digest}").status_code == 200
    return digest


@pytest.fixture
def adapter(client: TestClient, store: Store, gguf_path: Path, tmp_path: Path) -> str:
    return upload(client, store, write_lora(tmp_path / "lora.gguf", gguf_path))


def statuses(text: str) -> list[str]:
    return [json.loads(line)["status"] for line in text.splitlines() if line]


def test_create_from_a_model_with_an_adapter(
    client: TestClient, store: Store, stored: StoredModel, adapter: str
) -> None:
    response = client.post("/api/create", json={"model": "tuned", "from": "tiny", "adapters": {"lora.gguf": adapter}})
    assert response.status_code == 200, response.text
    assert f"using existing layer {adapter}" in statuses(response.text)
    tuned = store.get("tuned")
    assert [a.digest for a in tuned.adapters] == [adapter]
    assert tuned.model_digest == stored.model_digest
    assert tuned.system == stored.system  # the base model's layers are the defaults, as without an adapter


def test_create_from_files_with_an_adapter(client: TestClient, store: Store, stored: StoredModel, adapter: str) -> None:
    body = {"model": "tuned", "files": {"tiny.gguf": stored.model_digest}, "adapters": {"x": adapter}, "stream": False}
    response = client.post("/api/create", json=body)
    assert response.json() == {"status": "success"}
    assert [a.digest for a in store.get("tuned").adapters] == [adapter]


def test_a_model_built_on_a_tuned_one_keeps_its_adapters(
    client: TestClient, store: Store, gguf_path: Path, tmp_path: Path, adapter: str
) -> None:
    second = upload(client, store, write_lora(tmp_path / "second.gguf", gguf_path, seed=5))
    assert client.post("/api/create", json={"model": "one", "from": "tiny", "adapters": {"a.gguf": adapter}}).is_success
    response = client.post("/api/create", json={"model": "two", "from": "one", "adapters": {"b.gguf": second}})
    assert response.status_code == 200, response.text
    assert [a.digest for a in store.get("two").adapters] == [adapter, second]
    assert client.post("/api/create", json={"model": "three", "from": "two", "system": "x"}).is_success
    assert [a.digest for a in store.get("three").adapters] == [adapter, second]


def test_legacy_modelfile_adapter_names_a_blob(client: TestClient, store: Store, adapter: str) -> None:
    modelfile = f"FROM tiny\nADAPTER @{adapter}\n"
    response = client.post("/api/create", json={"name": "tuned", "modelfile": modelfile})
    assert response.status_code == 200, response.text
    assert [a.digest for a in store.get("tuned").adapters] == [adapter]


def test_show_lists_the_adapters(client: TestClient, store: Store, adapter: str) -> None:
    client.post("/api/create", json={"model": "tuned", "from": "tiny", "adapters": {"lora.gguf": adapter}})
    body = client.post("/api/show", json={"model": "tuned"}).json()
    tuned = store.get("tuned")
    lines = body["modelfile"].splitlines()
    assert lines.index(f"ADAPTER {tuned.adapters[0].path}") == lines.index(f"FROM {tuned.model_path}") + 1
    assert body["adapters"] == [{"digest": adapter, "size": tuned.adapters[0].size}]
    base = client.post("/api/show", json={"model": "tiny"}).json()
    assert "adapters" not in base and "ADAPTER" not in base["modelfile"]


def lora_options() -> list[tuple[dict[str, Any], str]]:
    return [
        ({"architecture": "gemma3"}, "it is for architecture 'gemma3' but the base model is 'llama'"),
        ({"metadata": {"general.type": "model"}}, "not a LoRA adapter"),
        ({"bad_shape": True}, "do not fit the base weight"),
        ({"skip": ("a",)}, "lora_a' is missing"),
    ]


@pytest.mark.parametrize(("options", "reason"), lora_options())
def test_an_adapter_llama_cpp_would_refuse_is_a_400_with_the_reason(
    client: TestClient, store: Store, gguf_path: Path, tmp_path: Path, options: dict[str, Any], reason: str
) -> None:
    digest = upload(client, store, write_lora(tmp_path / "bad.gguf", gguf_path, **options))
    response = client.post("/api/create", json={"model": "tuned", "from": "tiny", "adapters": {"bad.gguf": digest}})
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert not store.exists("tuned")
    assert not store.has_blob(digest)  # unreferenced and unusable: not kept


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"adapters": {"lora.gguf": "sha256:" + "2" * 64}}, 404, "/api/blobs"),
        ({"adapters": {"lora.gguf": "md5:abc"}}, 400, "digest"),
        ({"adapters": {"adapter_model.safetensors": "sha256:" + "2" * 64}}, 400, "safetensors"),
        ({"adapters": {"broken.gguf": "BROKEN"}}, 400, "not a valid GGUF"),
        ({"modelfile": "FROM tiny\nADAPTER ./lora.gguf\n"}, 400, "ADAPTER names a file path"),
        ({"modelfile": "FROM tiny\nADAPTER /etc/passwd\n"}, 400, "ADAPTER names a file path"),
        ({"modelfile": f"FROM tiny\nADAPTER @sha256:{'3' * 64}\n"}, 404, "/api/blobs"),
        ({"adapters": {f"{i}.gguf": "sha256:" + "2" * 64 for i in range(17)}}, 400, "at most 16 LoRA adapters"),
        ({"modelfile": "FROM tiny\n" + ("ADAPTER @sha256:" + "3" * 64 + "\n") * 17}, 400, "at most 16"),
    ],
)
def test_adapter_refusals(client: TestClient, store: Store, body: dict[str, Any], status: int, text: str) -> None:
    if body.get("adapters", {}).get("broken.gguf") == "BROKEN":
        body = {"adapters": {"broken.gguf": store.write_blob([b"not a gguf at all"])}}
    base = {} if "modelfile" in body else {"from": "tiny"}
    response = client.post("/api/create", json={"model": "tuned", **base, **body})
    assert response.status_code == status, response.text
    assert text in response.json()["error"]
