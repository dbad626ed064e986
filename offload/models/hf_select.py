"""Which GGUF of a Hugging Face repository to pull. Pure: a file list in, a choice (or an error) out.

A repository holds one model in several quantizations: `Model-Q4_K_M.gguf`, `Model-Q8_0.gguf`, or, for big ones,
llama.cpp's split files `Model-Q8_0-00001-of-00003.gguf` ... (often in a `Q8_0/` folder). Each quantization is a
`Candidate`: one file, or every part of a split set (a set with a part missing is no candidate). Vision projectors
(`mmproj`) and importance matrices (`imatrix`) are GGUF files too, but no model, and are left out.

The rule, written in docs/MODELS.md too:
1. A tag names the quantization: the candidate whose label (the quantization in its file name, e.g. `Q4_K_M`)
   equals it, case-insensitively; else the one whose path holds it between `-`, `.` or `/`. None: HubNotFound
   listing the labels there are.
2. No tag: Q4_K_M when the repository has it (the default of llama.cpp's `-hf` and of the hub's own Ollama
   endpoint).
3. Else the largest candidate that fits in 80% of this machine's memory (a larger file of the same model is a finer
   quantization; the rest is room for the KV cache and everything else), else the smallest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from offload.errors import HubNotFound
from offload.models.gguf import SPLIT_PART

DEFAULT_QUANT = "Q4_K_M"
MEMORY_SHARE = 0.8

# Quantization labels as llama.cpp's quantize tool and the usual publishers write them in file names.
_LABEL = re.compile(
    r"(?<![a-z0-9])((?:ud-)?(?:i?q[1-8](?:_[a-z0-9]+)*|tq[12]_0|bf16|fp16|f16|fp32|f32|mxfp4(?:_moe)?))(?![a-z0-9])",
    re.IGNORECASE,
)
_NOT_A_MODEL = ("mmproj", "imatrix")


@dataclass(frozen=True, slots=True)
class HubFile:
    """One file of a repository at one commit, as the hub lists it."""

    path: str
    size: int
    sha256: str | None  # the LFS sha256; None for a file kept in git itself (small text files)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One quantization of the model: a single GGUF, or the parts of a split one in order."""

    label: str  # "Q4_K_M"; the file name without .gguf when it names no quantization
    files: tuple[HubFile, ...]

    @property
    def size(self) -> int:
        return sum(file.size for file in self.files)

    @property
    def path(self) -> str:
        """The first file: what a user would name."""
        return self.files[0].path


def candidates(files: Iterable[HubFile]) -> list[Candidate]:
    """The repository's GGUF models, sorted by path. Split sets are whole or left out."""
    singles: list[Candidate] = []
    splits: dict[tuple[str, int], dict[int, HubFile]] = {}
    for file in files:
        lowered = file.path.lower()
        base = lowered.rsplit("/", 1)[-1]
        if not lowered.endswith(".gguf") or any(word in base for word in _NOT_A_MODEL):
            continue
        split = SPLIT_PART.fullmatch(file.path)
        if split is None:
            singles.append(Candidate(_label(file.path), (file,)))
            continue
        count = int(split["count"])
        splits.setdefault((split["prefix"], count), {})[int(split["index"])] = file
    for (prefix, count), parts in splits.items():
        if count >= 1 and sorted(parts) == list(range(1, count + 1)):
            singles.append(Candidate(_label(prefix + ".gguf"), tuple(parts[i] for i in range(1, count + 1))))
    return sorted(singles, key=lambda c: c.path)


def _label(path: str) -> str:
    stem = path.rsplit("/", 1)[-1][: -len(".gguf")]
    found = _LABEL.findall(stem)
    return found[-1].upper() if found else stem


def labels(found: Sequence[Candidate]) -> list[str]:
    return sorted({candidate.label for candidate in found})


def choose(
    found: Sequence[Candidate], quant: str | None, memory: Callable[[], int], *, where: str = "the repository"
) -> Candidate:
    """The candidate to pull (see the module's rule); `memory()` is this machine's memory in bytes, asked only
    when rule 3 needs it; `where` names the repository in errors. `found` must not be empty."""
    if not found:
        raise ValueError("no candidates to choose from")
    if quant is not None:
        return _requested(found, quant, where)
    default = [c for c in found if c.label == DEFAULT_QUANT]
    if default:
        return default[0]
    if len(found) == 1:
        return found[0]
    budget = memory() * MEMORY_SHARE
    fitting = [c for c in found if c.size <= budget]
    if fitting:
        return max(fitting, key=lambda c: (c.size, c.path))
    return min(found, key=lambda c: (c.size, c.path))


def _requested(found: Sequence[Candidate], quant: str, where: str) -> Candidate:
    wanted = quant.upper()
    exact = [c for c in found if c.label == wanted]
    if exact:
        return exact[0]
    bounded = re.compile(rf"(?:^|[-./]){re.escape(quant)}(?:$|[-./])", re.IGNORECASE)
    named = [c for c in found if bounded.search(c.path)]
    if named:
        return named[0]
    raise HubNotFound(f"{where} has no {quant} quantization; it has {', '.join(labels(found))}", param="model")
