"""The store's LoRA adapter layers: Ollama's media type, checked against the model, verified, collected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from offload.errors import BlobNotFound, CorruptBlob, InvalidAdapter
from offload.models.store import ADAPTER_MEDIA_TYPE, MODEL_MEDIA_TYPE, Store, StoredModel
from tests.fixtures.gguf_files import write_tiny_gguf
from tests.fixtures.lora import write_lora


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Store, StoredModel]:
    """A store holding a tiny model to put adapters on."""
    store = Store(tmp_path / "models")
    return store, store.import_gguf("tiny", write_tiny_gguf(tmp_path / "tiny.gguf"))


def upload(store: Store, path: Path) -> str:
    return store.write_blob([path.read_bytes()])


def manifest_layers(store: Store, name: str) -> list[tuple[str, str]]:
    path = store.root / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    return [(layer["mediaType"], layer["digest"]) for layer in json.loads(path.read_text())["layers"]]


def test_adapters_are_layers_after_the_model(tiny: tuple[Store, StoredModel], tmp_path: Path) -> None:
    store, model = tiny
    first = upload(store, write_lora(tmp_path / "a.gguf", model.model_path, seed=1))
    second = upload(store, write_lora(tmp_path / "b.gguf", model.model_path, seed=2))
    created = store.create("tuned", model_digest=model.model_digest, adapters=[first, second], system="hi")
    assert [a.digest for a in created.adapters] == [first, second]
    assert created.adapters[0].path == store.blob_path(first)
    assert created.adapters[0].size == (tmp_path / "a.gguf").stat().st_size
    assert created.size == model.size + sum(a.size for a in created.adapters) + len(b"hi")
    layers = manifest_layers(store, "tuned")
    expected = [(MODEL_MEDIA_TYPE, model.model_digest), (ADAPTER_MEDIA_TYPE, first), (ADAPTER_MEDIA_TYPE, second)]
    assert layers[:3] == expected
    assert store.get("tuned").adapters == created.adapters
    assert store.get("tiny").adapters == ()
    store.verify(created)


def test_a_bad_adapter_is_refused_and_its_blob_removed(tiny: tuple[Store, StoredModel], tmp_path: Path) -> None:
    store, model = tiny
    wrong = upload(store, write_lora(tmp_path / "a.gguf", model.model_path, architecture="gemma3"))
    with pytest.raises(InvalidAdapter, match=f"adapter {wrong}: it is for architecture 'gemma3'"):
        store.create("tuned", model_digest=model.model_digest, adapters=[wrong])
    assert not store.has_blob(wrong)
    assert not store.exists("tuned")
    broken = store.write_blob([b"GGUF\x03\x00\x00\x00 not really"])
    with pytest.raises(InvalidAdapter, match=f"adapter {broken} is not a valid GGUF"):
        store.create("tuned", model_digest=model.model_digest, adapters=[broken])
    assert not store.has_blob(broken)
    with pytest.raises(BlobNotFound):
        store.create("tuned", model_digest=model.model_digest, adapters=["sha256:" + "1" * 64])


def test_an_adapter_changed_on_disk_fails_verify(tiny: tuple[Store, StoredModel], tmp_path: Path) -> None:
    store, model = tiny
    digest = upload(store, write_lora(tmp_path / "a.gguf", model.model_path))
    tuned = store.create("tuned", model_digest=model.model_digest, adapters=[digest])
    path = store.blob_path(digest)
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with pytest.raises(CorruptBlob, match="LoRA adapter of tuned:latest no longer matches"):
        store.verify(tuned)
    assert not path.exists()
    with pytest.raises(CorruptBlob, match="LoRA adapter of tuned:latest is missing"):
        store.get("tuned")


def test_delete_collects_an_adapter_only_when_unused(tiny: tuple[Store, StoredModel], tmp_path: Path) -> None:
    store, model = tiny
    digest = upload(store, write_lora(tmp_path / "a.gguf", model.model_path))
    store.create("one", model_digest=model.model_digest, adapters=[digest])
    store.create("two", model_digest=model.model_digest, adapters=[digest])
    store.delete("one")
    assert store.has_blob(digest)
    store.delete("two")
    assert not store.has_blob(digest)
    assert store.has_blob(model.model_digest)
