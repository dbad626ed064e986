"""The store when its files change under it or its disk fills: verification before a load, and writes that fail
cleanly. (Concurrent imports of one file: test_store.py.)"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from offload.errors import CorruptBlob, StorageFull
from offload.models import store as store_module
from offload.models.store import Store, StoredModel
from tests.fixtures.gguf_files import write_tiny_gguf
from tests.unit.models.test_store import blobs, temp_files


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def model(store: Store, tmp_path: Path) -> StoredModel:
    return store.import_gguf("tiny", write_tiny_gguf(tmp_path / "tiny.gguf"))


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = store_module._hash_file

    def counting(file: object) -> str:
        calls.append(1)
        return real(file)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "_hash_file", counting)
    return calls


def test_a_blob_written_here_is_verified_without_reading_it_again(
    store: Store, model: StoredModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes = count_hashes(monkeypatch)
    store.verify(model)
    store.verify(model)
    assert hashes == []


def test_another_process_hashes_once_then_trusts_the_unchanged_file(
    store: Store, model: StoredModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = Store(store.root)  # a restarted server: nothing verified yet
    hashes = count_hashes(monkeypatch)
    fresh.verify(model)
    fresh.verify(model)
    assert len(hashes) == 1


def flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as file:
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 0xFF]))


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def replace_with_a_changed_copy(path: Path) -> None:
    copy = path.with_name("changed")
    copy.write_bytes(path.read_bytes()[:-1] + b"\0")
    os.replace(copy, path)


@pytest.mark.parametrize("change", [flip_a_byte, truncate, replace_with_a_changed_copy])
def test_a_changed_model_file_is_refused_and_removed(store: Store, model: StoredModel, change: object) -> None:
    store.verify(model)
    change(model.model_path)  # type: ignore[operator]
    with pytest.raises(CorruptBlob, match="no longer matches its sha256") as refused:
        store.verify(model)
    assert str(store.root) not in refused.value.message  # clients see this message
    assert not model.model_path.exists()
    with pytest.raises(CorruptBlob, match="is missing"):
        store.get("tiny")
    with pytest.raises(CorruptBlob, match="is missing"):
        store.verify(model)


def test_an_import_replaces_a_corrupt_blob_instead_of_trusting_it(
    store: Store, model: StoredModel, tmp_path: Path
) -> None:
    flip_a_byte(model.model_path)
    again = store.import_gguf("tiny", tmp_path / "tiny.gguf")
    assert hashlib.sha256(again.model_path.read_bytes()).hexdigest() == again.model_digest.removeprefix("sha256:")
    store.verify(again)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past `limit` bytes fail with EFBIG in this process (Python ignores SIGXFSZ), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_is_storage_full_and_leaves_nothing(store: Store, model: StoredModel) -> None:
    before = blobs(store)
    big = [os.urandom(1 << 20) for _ in range(4)]
    with file_size_limit(1 << 20), pytest.raises(StorageFull) as full:
        store.write_blob(big)
    assert "no space left in the model store" in full.value.message
    assert str(store.root) not in full.value.message
    assert full.value.status == 507
    assert blobs(store) == before
    assert temp_files(store) == []
    assert store.get("tiny").model_digest == model.model_digest
