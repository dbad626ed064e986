"""The store's side of pulls: resumable partial downloads adopted only when they hash right, and split models
(one blob per part, loaded through links named as llama.cpp expects)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from offload.errors import CorruptBlob, InvalidDigest, InvalidGGUF
from offload.models.gguf import read_gguf
from offload.models.store import Store
from tests.fixtures.gguf_files import write_tiny_gguf


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "blobs").iterdir() if p.name.startswith("."))


def test_a_partial_download_survives_and_resumes(store: Store) -> None:
    data = os.urandom(3000)
    digest = digest_of(data)
    with store.partial(digest) as partial:
        assert partial.size == 0
        partial.write(data[:1000])
    with store.partial(digest) as partial:  # a later pull: the bytes are still there
        assert partial.size == 1000
        partial.write(data[1000:])
        store.adopt(partial, digest)
    assert store.blob_path(digest).read_bytes() == data
    assert store.blob_intact(digest)
    assert leftovers(store) == []


def test_a_download_that_does_not_hash_right_is_removed(store: Store) -> None:
    digest = digest_of(b"what the hub said")
    with store.partial(digest) as partial:
        partial.write(b"what arrived")
        with pytest.raises(InvalidDigest, match="hashes to"):
            store.adopt(partial, digest)
    assert not store.blob_path(digest).exists()
    assert leftovers(store) == []


def test_one_download_of_a_blob_at_a_time(store: Store) -> None:
    digest = digest_of(b"x")
    order: list[str] = []
    with store.partial(digest) as partial:

        def second() -> None:
            with store.partial(digest):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.3)
        order.append("first")
        partial.write(b"x")
        store.adopt(partial, digest)
    thread.join(5)
    assert order == ["first", "second"]
    assert store.blob_intact(digest)


def split_model(store: Store, tmp_path: Path) -> list[str]:
    first = write_tiny_gguf(tmp_path / "m.gguf", split_max_tensors=4)
    parts = sorted(first.parent.glob("m-*-of-*.gguf"))
    return [store.write_blob(part.open("rb")) for part in parts]


def test_a_split_model_is_stored_as_parts_and_loaded_through_links(store: Store, tmp_path: Path) -> None:
    digests = split_model(store, tmp_path)
    model = store.create("hf.co/org/repo:q8_0", model_digest=digests[0], split_parts=digests[1:])
    assert model.model_digest == digests[0]
    assert model.split_parts == tuple(digests[1:])
    assert model.model_path.name == "model-00001-of-00003.gguf"
    assert model.model_path.resolve() == store.blob_path(digests[0])
    whole = read_gguf(write_tiny_gguf(tmp_path / "whole.gguf"))
    assert len(read_gguf(model.model_path).tensors) == len(whole.tensors)
    assert model.size == sum(store.blob_path(d).stat().st_size for d in digests)
    assert store.get("hf.co/org/repo:q8_0") == model
    store.verify(model)


def test_a_changed_part_fails_verification(store: Store, tmp_path: Path) -> None:
    digests = split_model(store, tmp_path)
    model = store.create("m", model_digest=digests[0], split_parts=digests[1:])
    store.blob_path(digests[2]).write_bytes(b"changed")
    fresh = Store(store.root)  # hashes again rather than trusting what it wrote
    with pytest.raises(CorruptBlob, match="no longer matches"):
        fresh.verify(model)


def test_parts_out_of_order_are_refused(store: Store, tmp_path: Path) -> None:
    digests = split_model(store, tmp_path)
    with pytest.raises(InvalidGGUF, match="not part 2"):
        store.create("m", model_digest=digests[0], split_parts=[digests[2], digests[1]])


def test_deleting_a_split_model_removes_its_parts_and_links(store: Store, tmp_path: Path) -> None:
    digests = split_model(store, tmp_path)
    store.create("m", model_digest=digests[0], split_parts=digests[1:])
    store.delete("m")
    assert not any(store.blob_path(d).exists() for d in digests)
    assert list((store.root / "splits").iterdir()) == []


def test_links_are_made_again_when_missing(store: Store, tmp_path: Path) -> None:
    digests = split_model(store, tmp_path)
    model = store.create("m", model_digest=digests[0], split_parts=digests[1:])
    for link in model.model_path.parent.iterdir():
        link.unlink()
    model.model_path.parent.rmdir()
    assert read_gguf(store.get("m").model_path).metadata["split.count"] == 3
