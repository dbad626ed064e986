"""manifest.json: shape, atomic writes, sha256 verification of a variant's files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from offload.backends.manifest import (
    Manifest,
    ManifestError,
    VariantEntry,
    hash_tree,
    parse_manifest,
    read_manifest,
    verify,
    write_manifest,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_round_trip(tmp_path: Path) -> None:
    manifest = Manifest(
        platform="linux-x86_64",
        default="cuda",
        variants={"cuda": VariantEntry("0.3.36", "-DGGML_CUDA=on", {"llama_cpp/lib/libggml-cuda.so": "ab" * 32})},
    )
    write_manifest(tmp_path / "manifest.json", manifest)
    assert read_manifest(tmp_path / "manifest.json", "linux-x86_64") == manifest
    assert json.loads((tmp_path / "manifest.json").read_text())["variants"]["cuda"]["cmake_args"] == "-DGGML_CUDA=on"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_missing_file_is_an_empty_manifest(tmp_path: Path) -> None:
    assert read_manifest(tmp_path / "manifest.json", "darwin-arm64") == Manifest(platform="darwin-arm64")


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"default": "cpu"},
        {"platform": "linux-x86_64", "default": 3},
        {"platform": "linux-x86_64", "variants": []},
        {"platform": "linux-x86_64", "variants": {"cpu": "x"}},
        {"platform": "linux-x86_64", "variants": {"cpu": {"cmake_args": ""}}},
        {"platform": "linux-x86_64", "variants": {"cpu": {"version": "1", "files": {"../evil.so": "aa"}}}},
        {"platform": "linux-x86_64", "variants": {"cpu": {"version": "1", "files": {"/etc/passwd": "aa"}}}},
        {"platform": "linux-x86_64", "variants": {"cpu": {"version": "1", "files": {"a.so": 5}}}},
    ],
)
def test_malformed_rejected(raw: Any) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(raw)


def test_unreadable_json_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path / "manifest.json", "linux-x86_64")


def make_variant(root: Path) -> VariantEntry:
    (root / "llama_cpp" / "lib").mkdir(parents=True)
    (root / "llama_cpp" / "__init__.py").write_bytes(b"init")
    (root / "llama_cpp" / "lib" / "libllama.so").write_bytes(b"llama")
    (root / "llama_cpp" / "__pycache__").mkdir()
    (root / "llama_cpp" / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    (root / "build.log").write_text("log")
    return VariantEntry("0.3.36", "-DGGML_NATIVE=on", hash_tree(root))


def test_hash_tree_skips_log_and_bytecode(tmp_path: Path) -> None:
    entry = make_variant(tmp_path)
    assert entry.files == {"llama_cpp/__init__.py": sha(b"init"), "llama_cpp/lib/libllama.so": sha(b"llama")}


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (None, None),
        ("rewrite", "llama_cpp/lib/libllama.so has sha256"),
        ("delete", "llama_cpp/lib/libllama.so is missing"),
        ("relink", "llama_cpp/lib/libllama.so has sha256"),
    ],
)
def test_verify(tmp_path: Path, damage: str | None, problem: str | None) -> None:
    entry = make_variant(tmp_path)
    library = tmp_path / "llama_cpp" / "lib" / "libllama.so"
    if damage == "rewrite":
        library.write_bytes(b"evil")
    elif damage == "delete":
        library.unlink()
    elif damage == "relink":
        (tmp_path / "evil.so").write_bytes(b"evil")
        library.unlink()
        library.symlink_to(tmp_path / "evil.so")
    (tmp_path / "build.log").write_text("a different log changes nothing")
    result = verify(tmp_path, entry)
    if problem is None:
        assert result is None
    else:
        assert result is not None and result.startswith("verification failed: ") and problem in result


def test_verify_empty_file_list(tmp_path: Path) -> None:
    assert verify(tmp_path, VariantEntry("1", "")) == "the manifest lists no files for it"


def test_verify_reports_at_most_three(tmp_path: Path) -> None:
    entry = VariantEntry("1", "", {f"f{i}": "00" * 32 for i in range(5)})
    result = verify(tmp_path, entry)
    assert result is not None and result.endswith("(and 2 more)")
