from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from offload.errors import (
    BadRequest,
    BlobNotFound,
    InvalidDigest,
    InvalidGGUF,
    InvalidName,
    ModelNotFound,
    StoreError,
)
from offload.models import store as store_module
from offload.models.names import ModelName, parse_name
from offload.models.store import Store
from tests.fixtures.gguf_files import write_tiny_gguf


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def blobs(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "blobs").iterdir())


def temp_files(store: Store) -> list[Path]:
    return list(store.root.rglob(".tmp-*"))


def test_import_and_get(store: Store, model_file: Path) -> None:
    seen: list[int] = []
    model = store.import_gguf(
        "tiny:1",
        model_file,
        template="{{ prompt }}",
        system="be brief",
        parameters={"temperature": 0.2, "stop": ["x"]},
        license="MIT",
        progress=seen.append,
    )
    assert model.name == parse_name("tiny:1")
    assert model.model_digest == sha(model_file)
    assert model.model_path.read_bytes() == model_file.read_bytes()
    assert (model.template, model.system, model.license) == ("{{ prompt }}", "be brief", "MIT")
    assert model.parameters == {"temperature": 0.2, "stop": ["x"]}
    assert seen[-1] == model_file.stat().st_size
    assert model.modified_at.tzinfo is not None
    assert store.get("tiny:1") == model
    assert store.get(parse_name("registry.ollama.ai/library/tiny:1")) == model
    assert store.exists("TINY:1")

    manifest_path = store.root / "manifests/registry.ollama.ai/library/tiny/1"
    raw = manifest_path.read_bytes()
    assert model.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest = json.loads(raw)
    assert manifest["schemaVersion"] == 2
    assert manifest["layers"][0]["mediaType"] == "application/vnd.ollama.image.model"
    assert model.size == sum(layer["size"] for layer in manifest["layers"])
    config = json.loads(store.blob_path(manifest["config"]["digest"]).read_bytes())
    assert (config["model_format"], config["model_family"], config["file_type"]) == ("gguf", "llama", "F32")
    assert temp_files(store) == []


def test_import_from_a_stream_with_expected_digest(store: Store, model_file: Path) -> None:
    data = model_file.read_bytes()
    chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    model = store.import_gguf("s", iter(chunks), expected_digest=sha(model_file))
    assert model.model_digest == sha(model_file)
    assert model.name.tag == "latest"
    assert model.template is None
    assert model.parameters == {}


def test_digest_mismatch_leaves_nothing(store: Store, model_file: Path) -> None:
    with pytest.raises(InvalidDigest):
        store.import_gguf("m", model_file, expected_digest="sha256:" + "0" * 64)
    assert blobs(store) == []
    assert store.list() == []
    assert temp_files(store) == []


def test_invalid_gguf_blob_is_removed(store: Store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 100)
    with pytest.raises(InvalidGGUF):
        store.import_gguf("bad", bad)
    assert blobs(store) == []
    assert not store.exists("bad")


def test_invalid_gguf_blob_already_referenced_is_kept(store: Store, tmp_path: Path, model_file: Path) -> None:
    store.import_gguf("good", model_file)
    # A text layer (a referenced blob) fed back as a "GGUF" must fail without deleting the layer.
    text = tmp_path / "t.txt"
    text.write_text("MIT")
    store.import_gguf("good", model_file, license="MIT")
    with pytest.raises(InvalidGGUF):
        store.import_gguf("bad", text)
    assert store.get("good").license == "MIT"


def test_source_must_be_a_regular_file(store: Store, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadRequest, match="not a regular file"):
        store.import_gguf("m", fifo)
    with pytest.raises(BadRequest, match="not a regular file"):
        store.import_gguf("m", tmp_path)
    with pytest.raises(BadRequest, match="no such file"):
        store.import_gguf("m", tmp_path / "missing.gguf")


def test_dedup(store: Store, model_file: Path) -> None:
    a = store.import_gguf("a", model_file)
    before = a.model_path.stat()
    b = store.import_gguf("b", model_file)
    assert a.model_digest == b.model_digest
    after = b.model_path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not copied again
    assert len([n for n in blobs(store) if n.startswith("sha256-")]) == 2  # the GGUF and one shared config


def test_write_blob_reuses_an_existing_blob_without_reading(store: Store) -> None:
    digest = store.write_blob([b"hello"])
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()

    def explode() -> list[bytes]:
        raise AssertionError("source was read")

    class Unreadable:
        def __iter__(self) -> object:
            return iter(explode())

    assert store.write_blob(Unreadable(), expected_digest=digest) == digest  # type: ignore[arg-type]
    assert store.has_blob(digest.replace(":", "-"))


def test_create_from_blob(store: Store, model_file: Path) -> None:
    with model_file.open("rb") as file:
        digest = store.write_blob(file)
    model = store.create("made:x", model_digest=digest, system="s")
    assert model.system == "s"
    with pytest.raises(BlobNotFound):
        store.create("made:y", model_digest="sha256:" + "1" * 64)
    not_gguf = store.write_blob([b"not a gguf"])
    with pytest.raises(InvalidGGUF):
        store.create("made:z", model_digest=not_gguf)
    with pytest.raises(BadRequest, match="JSON"):
        store.create("made:w", model_digest=digest, parameters={"x": float("nan")})


def test_create_replaces_a_model(store: Store, model_file: Path) -> None:
    store.import_gguf("m", model_file, system="one")
    store.import_gguf("m", model_file, system="two")
    assert [m.system for m in store.list()] == ["two"]


def test_crash_before_manifest_leaves_no_model(
    store: Store, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def crash(src: str | Path, dst: str | Path) -> None:
        if "manifests" in str(dst):
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreError):
        store.import_gguf("crash", model_file)
    monkeypatch.undo()
    assert store.list() == []
    assert not store.exists("crash")
    assert temp_files(store) == []
    assert sha(model_file).removeprefix("sha256:") in "".join(blobs(store))  # blob written, not listed


def test_crash_inside_create(store: Store, model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash after the blob write")

    monkeypatch.setattr(Store, "_atomic_write", crash)
    with pytest.raises(RuntimeError):
        store.import_gguf("crash", model_file)
    monkeypatch.undo()
    assert store.list() == []
    with pytest.raises(ModelNotFound):
        store.get("crash")


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    old = store.root / "blobs" / ".tmp-old"
    new = store.root / "blobs" / ".tmp-new"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (0, 0))
    Store(tmp_path / "models")
    assert not old.exists()
    assert new.exists()  # may belong to an import running right now


def test_delete_keeps_shared_blobs(store: Store, model_file: Path, tmp_path: Path) -> None:
    other = write_tiny_gguf(tmp_path / "other.gguf", n_tokens=40)
    a = store.import_gguf("a", model_file, license="shared")
    b = store.import_gguf("b", model_file, license="shared")
    c = store.import_gguf("c", other, system="only c")
    store.delete("a")
    assert not store.exists("a")
    assert b.model_path.exists()
    assert store.get("b").license == "shared"
    store.delete("b")
    assert not a.model_path.exists()
    assert c.model_path.exists()
    store.delete("c")
    assert blobs(store) == []
    with pytest.raises(ModelNotFound, match='model "c:latest" not found'):
        store.delete("c")


def test_delete_during_an_import_keeps_blobs_for_later(
    store: Store, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = store.import_gguf("a", model_file)
    monkeypatch.setattr(store_module, "_GC_LOCK_WAIT_SECONDS", 0.1)
    with store._lock(exclusive=False):  # what an import in another thread or process holds
        store.delete("a")
    assert not store.exists("a")
    assert model.model_path.exists()  # collected by a later delete, never under a running import


def test_oversized_text_layer_is_refused(store: Store, model_file: Path) -> None:
    with pytest.raises(BadRequest, match="license is larger"):
        store.import_gguf("m", model_file, license="x" * ((1 << 24) + 1))
    assert not store.exists("m")


def test_copy(store: Store, model_file: Path) -> None:
    source = store.import_gguf("src:1", model_file, system="hi")
    copied = store.copy("src:1", "me/dst:2")
    assert copied.name == parse_name("me/dst:2")
    assert (copied.model_digest, copied.system, copied.digest) == (source.model_digest, "hi", source.digest)
    store.delete("src:1")
    assert store.get("me/dst:2").model_path.exists()
    with pytest.raises(ModelNotFound):
        store.copy("nope", "x")


def test_list_sorted_and_skips_corrupt_manifests(store: Store, model_file: Path) -> None:
    store.import_gguf("old", model_file)
    store.import_gguf("new", model_file)
    manifests = store.root / "manifests/registry.ollama.ai/library"
    os.utime(manifests / "old/latest", (1_000_000, 1_000_000))
    (manifests / "junk").mkdir()
    (manifests / "junk/latest").write_text("{not json")
    (manifests / "nolayers").mkdir()
    (manifests / "nolayers/latest").write_text(json.dumps({"schemaVersion": 2, "layers": []}))
    (manifests / "badpath").mkdir()
    bad = {"schemaVersion": 2, "layers": [{"mediaType": "x", "digest": "sha256:../../etc", "size": 1}]}
    (manifests / "badpath/latest").write_text(json.dumps(bad))
    (manifests / "Upper").mkdir()
    (manifests / "Upper/latest").write_bytes((manifests / "new/latest").read_bytes())
    (manifests / "new/.tmp-abc").write_text("partial")
    assert [m.name.display for m in store.list()] == ["new:latest", "old:latest"]
    with pytest.raises(StoreError, match="corrupt"):
        store.get("junk")
    with pytest.raises(StoreError, match="no model layer"):
        store.get("nolayers")


def test_missing_model(store: Store) -> None:
    with pytest.raises(ModelNotFound, match='model "ghost:latest" not found'):
        store.get("Ghost")
    assert not store.exists("ghost")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b/c/d", "x:../y", "a\\b", "..", "m\x00"])
def test_traversal_names_are_rejected_before_any_path(store: Store, model_file: Path, name: str) -> None:
    before = sorted(store.root.rglob("*"))
    for call in (store.get, store.exists, store.delete):
        with pytest.raises(InvalidName):
            call(name)
    with pytest.raises(InvalidName):
        store.import_gguf(name, model_file)
    with pytest.raises(InvalidName):
        store.copy("a", name)
    assert sorted(store.root.rglob("*")) == before


def test_unnormalized_model_name_objects_are_rejected(store: Store) -> None:
    with pytest.raises(InvalidName):
        store.get(ModelName("registry.ollama.ai", "..", "x", "latest"))
    with pytest.raises(InvalidName):
        store.get(ModelName("registry.ollama.ai", "library", "X", "latest"))


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "sha256-" + "a" * 63 + "/", "../blobs", ""])
def test_traversal_digests_are_rejected(store: Store, digest: str) -> None:
    with pytest.raises(InvalidDigest):
        store.blob_path(digest)
    with pytest.raises(InvalidDigest):
        store.has_blob(digest)
    with pytest.raises(InvalidDigest):
        store.create("m", model_digest=digest)
    with pytest.raises(InvalidDigest):
        store.write_blob([b"x"], expected_digest=digest)
    assert blobs(store) == []


def test_symlink_out_of_the_store_is_refused(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "manifests" / "evil.host").symlink_to(outside)
    with pytest.raises(StoreError, match="outside"):
        store.get("evil.host/ns/m:t")


def test_concurrent_imports_of_the_same_file(store: Store, model_file: Path) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def work(name: str) -> None:
        try:
            barrier.wait()
            store.import_gguf(name, model_file)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b", "a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    digest = sha(model_file)
    gguf_blobs = [n for n in blobs(store) if n == digest.replace(":", "-")]
    assert len(gguf_blobs) == 1
    assert sha(store.blob_path(digest)) == digest
    assert {m.name.model for m in store.list()} == {"a", "b"}
    assert temp_files(store) == []
