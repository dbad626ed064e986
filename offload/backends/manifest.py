"""The backends manifest: `$OFFLOAD_HOME/backends/<platform>/manifest.json`, one per platform.

    {"platform": "linux-x86_64", "default": "cuda",
     "variants": {"cuda": {"version": "0.3.36", "cmake_args": "-DGGML_CUDA=on",
                           "files": {"llama_cpp/lib/libggml-cuda.so": "<sha256>", ...}}}}

File paths are relative to the variant's directory (`<platform>/<backend>/`). A variant is used only when every
listed file is there with its sha256: the check runs before the library is ever loaded or probed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
BUILD_LOG = "build.log"
_NOT_HASHED = {BUILD_LOG}


class ManifestError(ValueError):
    """manifest.json exists but cannot be read or does not have the shape above."""


@dataclass(frozen=True, slots=True)
class VariantEntry:
    version: str
    cmake_args: str
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> sha256 hex


@dataclass(frozen=True, slots=True)
class Manifest:
    platform: str
    default: str | None = None
    variants: Mapping[str, VariantEntry] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "default": self.default,
            "variants": {
                name: {"version": entry.version, "cmake_args": entry.cmake_args, "files": dict(entry.files)}
                for name, entry in sorted(self.variants.items())
            },
        }


def read_manifest(path: Path, platform: str) -> Manifest:
    """The manifest at `path`; an empty one for `platform` when there is no file. ManifestError when malformed."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return Manifest(platform=platform)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc
    return parse_manifest(raw, str(path))


def parse_manifest(raw: Any, where: str = "manifest") -> Manifest:
    if not isinstance(raw, dict) or not isinstance(raw.get("platform"), str):
        raise ManifestError(f"{where}: expected an object with a string 'platform'")
    default = raw.get("default")
    if default is not None and not isinstance(default, str):
        raise ManifestError(f"{where}: 'default' must be a string")
    variants_raw = raw.get("variants", {})
    if not isinstance(variants_raw, dict):
        raise ManifestError(f"{where}: 'variants' must be an object")
    variants = {}
    for name, entry in variants_raw.items():
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: variant {name!r} must be an object")
        version, cmake_args, files = entry.get("version"), entry.get("cmake_args", ""), entry.get("files", {})
        if not isinstance(version, str) or not isinstance(cmake_args, str) or not isinstance(files, dict):
            raise ManifestError(f"{where}: variant {name!r} needs string version/cmake_args and an object files")
        for relative, digest in files.items():
            if not _safe_relative(relative) or not isinstance(digest, str):
                raise ManifestError(f"{where}: variant {name!r}: bad file entry {relative!r}")
        variants[name] = VariantEntry(version=version, cmake_args=cmake_args, files=dict(files))
    return Manifest(platform=raw["platform"], default=default, variants=variants)


def _safe_relative(relative: object) -> bool:
    # A manifest must not make offload hash (or vouch for) files outside the variant's directory.
    if not isinstance(relative, str) or not relative or relative.startswith("/") or "\\" in relative:
        return False
    return ".." not in Path(relative).parts


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace manifest.json atomically (a reader sees the old file or the new, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".manifest.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(manifest.to_json(), out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(directory: Path) -> dict[str, str]:
    """sha256 of every regular file under `directory` (relative POSIX paths), except build.log and bytecode."""
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        # A symlink is hashed as the file it points to, so a swapped link target fails verification too.
        if "__pycache__" in relative.parts or path.name in _NOT_HASHED or not path.is_file():
            continue
        files[relative.as_posix()] = sha256_file(path)
    return files


def verify(directory: Path, entry: VariantEntry) -> str | None:
    """None when every listed file is present with its sha256; otherwise the first few problems, in words."""
    if not entry.files:
        return "the manifest lists no files for it"
    problems = []
    for relative, expected in sorted(entry.files.items()):
        path = directory / relative
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            problems.append(f"{relative} is missing")
            continue
        except OSError as exc:
            problems.append(f"{relative} cannot be read ({exc.strerror})")
            continue
        if actual != expected.lower():
            problems.append(f"{relative} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…")
    if not problems:
        return None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "verification failed: " + "; ".join(problems[:3]) + more
