"""Bounded walks for GGUF files, and the names the found files get.

Discovery reads directories other programs own (a models folder, caches of other tools), which may be huge,
deep, looping or hostile. Every walk here shares one `ScanBudget`: directory entries looked at, GGUF files
yielded and wall time are capped, hidden and well-known non-model trees are skipped, depth is capped, and a
directory reached twice (a symlink loop) is walked once. Nothing here opens a file: a FIFO or a dangling link
named `*.gguf` is yielded like any other file, and the GGUF check reports it as broken.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from offload.models.gguf import SPLIT_PART, split_part_name

# Trees that never hold models but can hold millions of files.
_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "site-packages", "venv"})
# A quantization in a file name (Llama-3.2-1B-Instruct-Q4_K_M, model.IQ2_XXS, qwen2.5-7b-f16): the tag users pick.
_QUANT = re.compile(
    r"(?<![a-z0-9])(i?q[1-8](?:_[a-z0-9]{1,4}){0,2}|tq[12]_0|bf16|f16|f32|mxfp4(?:_moe)?)(?![a-z0-9])"
)
_NOT_NAME = re.compile(r"[^a-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class ScanLimits:
    """Caps on one discovery scan, all sources together."""

    max_depth: int = 8  # directory levels below a root
    max_entries: int = 50_000  # directory entries looked at
    max_files: int = 2_000  # GGUF files found
    seconds: float = 10.0  # wall time, the GGUF checks included


@dataclass(slots=True)
class ScanBudget:
    """What one scan has used of its `ScanLimits`; `exhausted` says which cap stopped it, for the listing."""

    limits: ScanLimits
    clock: Callable[[], float] = time.monotonic
    entries: int = 0
    files: int = 0
    exhausted: str | None = None
    _deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self._deadline = self.clock() + self.limits.seconds

    def spend_entry(self) -> bool:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            self._stop(f"more than {self.limits.max_entries} directory entries")
        return self.ok()

    def spend_file(self) -> bool:
        self.files += 1
        if self.files > self.limits.max_files:
            self._stop(f"more than {self.limits.max_files} GGUF files")
        return self.ok()

    def ok(self) -> bool:
        if self.exhausted is None and self.clock() > self._deadline:
            self._stop(f"{self.limits.seconds:g} s")
        return self.exhausted is None

    def _stop(self, why: str) -> None:
        if self.exhausted is None:
            self.exhausted = why


def walk_ggufs(root: Path, budget: ScanBudget, *, max_depth: int | None = None) -> Iterator[Path]:
    """`*.gguf` paths under `root` in sorted order, depth first, within `budget`. Symlinked directories are
    followed (model folders are often linked in) but each real directory is walked once; unreadable ones are
    skipped. Yields nothing when `root` is not a directory."""
    depth_cap = budget.limits.max_depth if max_depth is None else min(max_depth, budget.limits.max_depth)
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack and budget.ok():
        directory, depth = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[Path] = []
        for entry in entries:
            if not budget.spend_entry():
                return
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if depth < depth_cap and entry.name not in _SKIPPED_DIRS:
                    subdirs.append(Path(entry.path))
            elif entry.name.lower().endswith(".gguf"):
                if not budget.spend_file():
                    return
                yield Path(entry.path)
        stack.extend((sub, depth + 1) for sub in reversed(subdirs))


@dataclass(frozen=True, slots=True)
class GGUFGroup:
    """One model's files: a single GGUF, or every part of a split one (`parts` in order, first part first).
    `problem` says what is missing when parts are."""

    path: Path  # the file llama.cpp is given: the only file, or part 1
    parts: tuple[Path, ...]
    stem: str  # the file name without .gguf and without the -0000N-of-0000M suffix
    problem: str | None = None


def model_groups(root: Path, budget: ScanBudget, *, max_depth: int | None = None) -> list[GGUFGroup]:
    """The models under `root` (walk_ggufs): vision projectors left out, a split model's parts as one group."""
    return group_parts([path for path in walk_ggufs(root, budget, max_depth=max_depth) if not is_projector(path)])


def group_parts(paths: list[Path]) -> list[GGUFGroup]:
    """Single files as they are; the parts of a split GGUF as one group, listed once. A split model whose parts
    are not all there is one group with a problem (it cannot be loaded)."""
    groups: list[GGUFGroup] = []
    splits: dict[tuple[Path, str, int], dict[int, Path]] = {}
    for path in paths:
        match = SPLIT_PART.fullmatch(path.name)
        if match is None:
            groups.append(GGUFGroup(path=path, parts=(path,), stem=path.name[: -len(".gguf")]))
            continue
        key = (path.parent, match["prefix"], int(match["count"]))
        splits.setdefault(key, {})[int(match["index"])] = path
    for (parent, prefix, count), found in splits.items():
        wanted = range(1, count + 1)
        missing = [index for index in wanted if index not in found]
        first = found.get(1) or parent / split_part_name(prefix, 1, count)
        parts = tuple(found[index] for index in wanted if index in found)
        problem = None
        if count == 0:
            problem = "split GGUF numbered 'of 00000'"
        elif missing:
            shown = ", ".join(str(index) for index in missing[:8]) + (", ..." if len(missing) > 8 else "")
            problem = f"split GGUF: part(s) {shown} of {count} missing"
        groups.append(GGUFGroup(path=first, parts=parts or (first,), stem=prefix, problem=problem))
    groups.sort(key=lambda group: str(group.path))
    return groups


def name_part(text: str) -> str | None:
    """`text` as one part of a model name (lowercase a-z 0-9 _ . -, not starting with . or -), or None when
    nothing usable is left. Runs of other characters become one '-'."""
    cleaned = _NOT_NAME.sub("-", text.lower())
    cleaned = re.sub(r"\.{2,}", ".", cleaned).lstrip(".-")[:128]
    return cleaned or None


def quant_tag(stem: str) -> str | None:
    """The quantization a file name states (the last one), lowercase: "q4_k_m", "iq2_xxs", "bf16"."""
    found = _QUANT.findall(stem.lower())
    return found[-1] if found else None


def repo_tags(stems: list[str]) -> list[str | None]:
    """Tags for the models of one repository, as Ollama's `hf.co/org/repo:Q4_K_M` names them: the quantization
    when the file name states one that no other file in the repository shares, else the file's own stem."""
    quants = [quant_tag(stem) for stem in stems]
    tags: list[str | None] = []
    for stem, quant in zip(stems, quants, strict=True):
        unique = quant is not None and quants.count(quant) == 1
        tags.append(quant if unique else name_part(stem))
    return tags


def is_projector(path: Path) -> bool:
    """A vision projector shipped beside a model (mmproj-*.gguf): not a model of its own, so not listed."""
    return path.name.lower().startswith("mmproj")
