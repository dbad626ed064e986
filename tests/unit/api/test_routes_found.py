"""Models found on disk through the API: listed in /api/tags, served in place, adopted by /api/copy, never deleted."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from offload.api import create_app
from offload.config import Settings
from offload.errors import FoundModelBroken, InvalidDigest
from offload.models import catalog
from offload.models.discover import Discovery, DiscoveryRoots
from offload.models.gguf import read_gguf
from offload.models.store import Store, StoredModel
from tests.fakes.scheduler import FakeScheduler
from tests.fixtures.found_layouts import ollama_model
from tests.fixtures.gguf_files import write_tiny_gguf

OLLAMA_NAME = "registry.ollama.ai/library/found/1b"


@pytest.fixture
def roots(tmp_path: Path, gguf_path: Path) -> DiscoveryRoots:
    folder = tmp_path / "found-models"
    folder.mkdir()
    shutil.copyfile(gguf_path, folder / "loose.gguf")
    shutil.copyfile(gguf_path, folder / "tiny.gguf")  # shadowed by the store's tiny:latest
    (folder / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    os.mkfifo(folder / "pipe.gguf")
    (folder / "split").mkdir()
    write_tiny_gguf(folder / "split" / "parts.gguf", split_max_tensors=4)
    ollama_model(tmp_path / "ollama", OLLAMA_NAME, gguf_path, parameters={"temperature": 0.3}, system="Hi.")
    return DiscoveryRoots(model_paths=(folder,), ollama=(tmp_path / "ollama",))


@pytest.fixture
def found_client(
    settings: Settings, store: Store, scheduler: FakeScheduler, stored: StoredModel, roots: DiscoveryRoots
) -> Iterator[TestClient]:
    app = create_app(settings, store, scheduler, Discovery(roots, ttl=0))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_tags_lists_found_models_after_the_stores_and_the_unusable_apart(found_client: TestClient) -> None:
    body = found_client.get("/api/tags").json()
    names = [(m["name"], (m.get("offload") or {}).get("source", "store")) for m in body["models"]]
    assert names == [
        ("tiny:latest", "store"),
        ("loose:latest", "path"),
        ("parts:latest", "path"),
        ("found:1b", "ollama"),
    ]
    found = body["models"][3]
    assert found["details"]["family"] == "llama" and found["details"]["quantization_level"] == "F32"
    assert found["offload"]["path"].endswith(found["digest"]) is False  # the ID is the manifest's, not the blob's
    unusable = {entry["name"]: entry for entry in body["offload"]["unusable"]}
    assert set(unusable) == {"broken:latest", "pipe:latest", "tiny:latest"}
    assert "past end of file" in unusable["broken:latest"]["reason"]
    assert "FIFO" in unusable["pipe:latest"]["reason"]
    assert unusable["tiny:latest"]["reason"] == "shadowed by the model of the same name in the store"
    assert body["offload"]["scan_stopped"] is None


def test_a_found_model_generates_in_place_with_its_sources_parameters(
    found_client: TestClient, scheduler: FakeScheduler, tmp_path: Path
) -> None:
    response = found_client.post("/api/generate", json={"model": "found:1b", "prompt": "x", "stream": False})
    assert response.status_code == 200, response.text
    (model,) = scheduler.models
    assert model.model_path.parent == tmp_path / "ollama" / "blobs"
    assert model.system == "Hi." and model.parameters == {"temperature": 0.3}
    assert scheduler.requests[0].sampling.temperature == 0.3


def test_show_and_openai_see_a_found_model(found_client: TestClient) -> None:
    shown = found_client.post("/api/show", json={"model": "loose"})
    assert shown.status_code == 200, shown.text
    assert shown.json()["details"]["family"] == "llama"
    messages = [{"role": "user", "content": "x"}]
    chat = found_client.post("/v1/chat/completions", json={"model": "loose", "messages": messages})
    assert chat.status_code == 200, chat.text
    listed = [m["id"] for m in found_client.get("/v1/models").json()["data"]]
    assert listed == ["tiny:latest", "loose:latest", "parts:latest", "found:1b"]
    assert found_client.get("/v1/models/found:1b").json()["id"] == "found:1b"


def test_a_broken_found_model_is_refused_with_the_reason(found_client: TestClient) -> None:
    response = found_client.post("/api/generate", json={"model": "broken", "prompt": "x"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error.startswith('model "broken:latest" (found in a model path) cannot be used: ')
    assert "found-models" not in error  # no folders in what clients see


def test_copy_adopts_a_found_model_into_the_store(found_client: TestClient, store: Store) -> None:
    response = found_client.post("/api/copy", json={"source": "found:1b", "destination": "mine"})
    assert response.status_code == 200, response.text
    adopted = store.get("mine")
    assert adopted.parameters == {"temperature": 0.3} and adopted.system == "Hi."
    assert read_gguf(adopted.model_path).architecture == "llama"
    names = [m["name"] for m in found_client.get("/api/tags").json()["models"]]
    assert "mine:latest" in names and "found:1b" in names  # the original stays where it was


def test_copy_adopts_a_split_model_part_by_part(found_client: TestClient, store: Store) -> None:
    response = found_client.post("/api/copy", json={"source": "parts", "destination": "mine-split"})
    assert response.status_code == 200, response.text
    adopted = store.get("mine-split")
    assert len(adopted.split_parts) == 2
    assert read_gguf(adopted.model_path).metadata["split.count"] == 3


def test_delete_never_removes_a_found_file(found_client: TestClient, tmp_path: Path) -> None:
    response = found_client.request("DELETE", "/api/delete", json={"model": "loose"})
    assert response.status_code == 400
    assert "does not delete other programs' files" in response.json()["error"]
    assert (tmp_path / "found-models" / "loose.gguf").is_file()


def test_adopting_checks_the_digest_the_source_names(store: Store, roots: DiscoveryRoots) -> None:
    discovery = Discovery(roots, ttl=0)
    found = catalog.resolve(store, discovery, "found:1b")
    with open(found.model_path, "r+b") as file:  # still a valid GGUF, no longer the bytes of its name
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 1]))
    with pytest.raises(InvalidDigest, match="digest mismatch"):
        catalog.adopt(store, found, "mine")
    assert not store.exists("mine")


def test_adopting_a_split_model_whose_part_went_away_says_so(store: Store, roots: DiscoveryRoots) -> None:
    discovery = Discovery(roots, ttl=0)
    found = catalog.resolve(store, discovery, "parts")
    parts = catalog.found_of(found)
    assert parts is not None and len(parts.parts) > 1
    parts.parts[1].unlink()
    with pytest.raises(FoundModelBroken, match="can no longer be read"):
        catalog.adopt(store, found, "mine-split")
    assert not store.exists("mine-split")


def test_verify_before_a_load_rechecks_a_found_file(store: Store, roots: DiscoveryRoots) -> None:
    discovery = Discovery(roots, ttl=0)
    found = catalog.resolve(store, discovery, "loose")
    catalog.verify(store, discovery, found)
    found.model_path.write_bytes(b"GGUF")
    with pytest.raises(FoundModelBroken, match="cannot be used"):
        catalog.verify(store, discovery, found)


def test_tags_keep_ollamas_shape_when_nothing_found_is_unusable(
    settings: Settings, store: Store, scheduler: FakeScheduler, tmp_path: Path
) -> None:
    app = create_app(settings, store, scheduler, Discovery(DiscoveryRoots(model_paths=(tmp_path / "none",))))
    with TestClient(app) as client:
        assert client.get("/api/tags").json() == {"models": []}


def test_without_discovery_only_the_store_answers(client: TestClient) -> None:
    body = client.get("/api/tags").json()
    assert "offload" not in body
    assert client.post("/api/generate", json={"model": "loose", "prompt": "x"}).status_code == 404
