"""Models found on disk outside the store: what each source proposes, and the check every file passes.

A source (`discover_ollama`, `discover_hf`, `discover_files`) turns a directory layout into `Candidate`s: a
proposed name, the GGUF file(s), and what the layout itself says (a known sha256, Ollama's params layer).
`check_files` then validates the files with the bounded GGUF reader, without following anything a file
declares, and `Discovery` (discover.py) turns both into `FoundModel`s: usable, broken (with the reason) or
shadowed by a model of the same name that comes first.

Reasons name the file at most by its base name: they reach API clients (an unusable model's error).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from offload.errors import InvalidGGUF
from offload.models import gguf
from offload.models.names import ModelName

SOURCE_STORE = "store"
SOURCE_PATH = "path"  # a --model-path / OFFLOAD_MODELS_PATH directory
SOURCE_OLLAMA = "ollama"
SOURCE_HF = "huggingface"
SOURCE_LMSTUDIO = "lmstudio"
SOURCE_LABELS: Mapping[str, str] = MappingProxyType(
    {
        SOURCE_STORE: "the store",
        SOURCE_PATH: "a model path",
        SOURCE_OLLAMA: "the Ollama store",
        SOURCE_HF: "the Hugging Face cache",
        SOURCE_LMSTUDIO: "LM Studio's models",
    }
)
# Vision projectors ship beside models (mmproj-*.gguf) and are not models themselves.
PROJECTOR_ARCHITECTURES = frozenset({"clip"})

FileKey = tuple[tuple[str, int, int, int, int], ...]  # per part: path, st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True, slots=True)
class Candidate:
    """A model a source layout names. `problem` is set when the layout itself is broken (an unreadable
    manifest, a missing blob); such a candidate is listed as broken without reading any file."""

    source: str
    name: str  # the proposed name; one that parse_name refuses makes the entry broken
    path: Path  # the file llama.cpp is given (part 1 of a split model)
    parts: tuple[Path, ...]
    digest: str | None = None  # "sha256:<hex>" of the file's content, where the layout names it
    manifest_digest: str | None = None  # Ollama's: what its /api/tags shows as the model's ID
    system: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    license: str | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class GGUFSummary:
    """What a listing shows of a GGUF (Ollama's "details"), kept instead of the reader's full metadata."""

    architecture: str
    parameter_count: int
    file_type: str


@dataclass(frozen=True, slots=True)
class FileCheck:
    """The outcome of `check_files`: a summary when every part is a valid GGUF, else the first problem."""

    size: int
    modified_at: datetime
    summary: GGUFSummary | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class FoundModel:
    """One model found outside the store, as listed. Usable when `problem` and `shadowed_by` are both None."""

    label: str  # the name as shown: name.display when valid, else the text the source proposed
    name: ModelName | None
    source: str
    path: Path
    parts: tuple[Path, ...]
    size: int
    modified_at: datetime
    id_digest: str  # the ID shown: Ollama's manifest digest, the content digest, else a hash of path and mtime
    content_digest: str | None
    summary: GGUFSummary | None
    problem: str | None = None
    shadowed_by: str | None = None  # the source whose model of the same name is served instead
    system: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    license: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None and self.shadowed_by is None and self.name is not None

    @property
    def split(self) -> bool:
        return len(self.parts) > 1


def _stat_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{path.name}: symbolic link loop"
    if exc.errno == errno.ENOENT:
        return f"{path.name}: missing" + (" (dangling symbolic link)" if path.is_symlink() else "")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{path.name}: permission denied"
    return f"{path.name}: cannot be read ({exc.strerror or exc})"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def file_key(parts: tuple[Path, ...]) -> FileKey | str:
    """What identifies the files' current contents (a changed one gets a new key), or the first problem found
    while stat-ing them: missing, a loop, not a regular file. Never opens a file."""
    key: list[tuple[str, int, int, int, int]] = []
    for path in parts:
        try:
            st = os.stat(path)
        except OSError as exc:
            return _stat_problem(path, exc)
        if not stat.S_ISREG(st.st_mode):
            return f"{path.name}: {_kind(st.st_mode)}, not a GGUF file"
        key.append((str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(key)


def check_files(parts: tuple[Path, ...], key: FileKey) -> FileCheck:
    """Validate the model with the bounded GGUF reader (`key` from `file_key`), a split one whole: the reader
    reads every part from the first, as llama.cpp loads them. Blocking: reads headers, metadata and tensor
    tables, never tensor data."""
    size = sum(item[3] for item in key)
    modified = datetime.fromtimestamp(max(item[4] for item in key) / 1e9, tz=UTC)

    def broken(problem: str) -> FileCheck:
        return FileCheck(size, modified, None, problem)

    for path in parts:
        if not os.access(path, os.R_OK):
            return broken(f"{path.name}: permission denied")
    try:
        info = gguf.read_gguf(parts[0])
    except InvalidGGUF as exc:
        return broken(exc.message)
    if len(parts) > 1 and info.metadata.get("split.count") != len(parts):
        # llama.cpp finds the other parts through the first one's split.count; without it they are never read.
        return broken(f"{parts[0].name}: named as part 1 of {len(parts)} but its metadata does not say so")
    return FileCheck(size, modified, GGUFSummary(info.architecture, info.parameter_count, info.file_type), None)


def identity_digest(source: str, key: FileKey | str, path: Path) -> str:
    """An ID for a file whose content digest nobody states: changes when the file (or its place) does. Not a
    content hash, and never used as one."""
    text = f"{source}\0{path}\0{key!r}"
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
