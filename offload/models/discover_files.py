"""GGUF files in plain folders: `--model-path` / OFFLOAD_MODELS_PATH directories and LM Studio's models.

A model-path file is named by its file name without `.gguf` (tag `latest`): the file `Qwen2.5-7B-Q4_K_M.gguf`
anywhere below a model path is `qwen2.5-7b-q4_k_m`. LM Studio keeps `<publisher>/<repo>/<file>.gguf` under
~/.lmstudio/models (older versions: ~/.cache/lm-studio/models); its models are named
`lmstudio/<publisher>/<repo>:<quantization>`, as Hugging Face repositories are. A split GGUF is one model,
named after its first part without the `-00001-of-0000N` suffix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from offload.models.discover_walk import GGUFGroup, ScanBudget, model_groups, name_part, repo_tags
from offload.models.found import SOURCE_LMSTUDIO, SOURCE_PATH, Candidate

_LMSTUDIO_DEPTH = 3  # publisher / repo / one folder more


def path_candidates(root: Path, budget: ScanBudget) -> Iterator[Candidate]:
    for group in model_groups(root, budget):
        yield _candidate(SOURCE_PATH, _part(group.stem), group)


def lmstudio_candidates(root: Path, budget: ScanBudget) -> Iterator[Candidate]:
    by_repo: dict[tuple[str, ...], list[GGUFGroup]] = {}
    for group in model_groups(root, budget, max_depth=_LMSTUDIO_DEPTH):
        folders = group.path.parent.relative_to(root).parts
        by_repo.setdefault(tuple(folders[:2]), []).append(group)
    for folders, groups in sorted(by_repo.items()):
        tags = repo_tags([g.stem for g in groups])
        for group, tag in zip(groups, tags, strict=True):
            if len(folders) == 2:
                publisher, repo = folders
            elif folders:  # a file right in a publisher's folder
                publisher, repo = "local", folders[0]
            else:  # a file right in the models folder
                publisher, repo, tag = "local", group.stem, "latest"
            name = f"lmstudio/{_part(publisher)}/{_part(repo)}:{tag or _part(group.stem)}"
            yield _candidate(SOURCE_LMSTUDIO, name, group)


def _candidate(source: str, name: str, group: GGUFGroup) -> Candidate:
    return Candidate(source=source, name=name, path=group.path, parts=group.parts, problem=group.problem)


def _part(text: str) -> str:
    # A name the folder or file gives that cannot be made valid stays as it is: parse_name then says why.
    return name_part(text) or text
