"""GGUF files in the Hugging Face cache (what huggingface_hub and `llama-server -hf` download), used in place.

    <hub>/models--<org>--<repo>/snapshots/<revision>/<path in the repo>   symbolic links into ../../blobs
    <hub>/models--<org>--<repo>/blobs/<sha256 hex>                       the content of large (LFS) files
    <hub>/models--<org>--<repo>/refs/<branch>                            the revision a branch points at

`<hub>` is HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (config.py resolves it). A model
is named as Ollama names Hugging Face models, `hf.co/<org>/<repo>:<quantization>` (the file's stem when the
quantization is not unique in the repository). The files of the revisions that refs point at come first;
an older revision's file of the same name is the same model downloaded before, and is not listed again.
A large file's blob is named by its sha256, so its content digest is known (an adoption checks it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from offload.models.discover_walk import ScanBudget, model_groups, repo_tags
from offload.models.found import SOURCE_HF, Candidate

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_REF_BYTES = 256
_SNAPSHOT_DEPTH = 4  # folders inside a repository (some keep each quantization in its own)


def hf_candidates(hub: Path, budget: ScanBudget) -> Iterator[Candidate]:
    for repo_dir in _repos(hub, budget):
        repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
        seen: set[str] = set()
        for snapshot in _snapshots(repo_dir):
            groups = model_groups(snapshot, budget, max_depth=_SNAPSHOT_DEPTH)
            for group, tag in zip(groups, repo_tags([g.stem for g in groups]), strict=True):
                name = f"hf.co/{repo_id}:{tag or group.stem}"
                if name in seen:
                    continue
                seen.add(name)
                yield Candidate(
                    source=SOURCE_HF,
                    name=name,
                    path=group.path,
                    parts=group.parts,
                    digest=_blob_digest(group.path) if len(group.parts) == 1 else None,
                    problem=group.problem,
                )
            if not budget.ok():
                return


def _repos(hub: Path, budget: ScanBudget) -> list[Path]:
    try:
        with os.scandir(hub) as it:
            names = sorted(entry.name for entry in it if budget.spend_entry() and entry.name.startswith("models--"))
    except OSError:
        return []
    return [hub / name for name in names]


def _snapshots(repo_dir: Path) -> list[Path]:
    """The repository's snapshot folders: those its refs name first (main before other branches), then the
    rest, newest first."""
    snapshots = repo_dir / "snapshots"
    try:
        with os.scandir(snapshots) as it:
            found = {entry.name: entry.stat().st_mtime for entry in it if entry.is_dir(follow_symlinks=False)}
    except OSError:
        return []
    referenced: list[str] = []
    for ref in ("main", *sorted(_ref_names(repo_dir / "refs"))):
        revision = _read_ref(repo_dir / "refs" / ref)
        if revision in found and revision not in referenced:
            referenced.append(revision)
    rest = sorted((name for name in found if name not in referenced), key=lambda name: -found[name])
    return [snapshots / name for name in (*referenced, *rest)]


def _ref_names(refs: Path) -> list[str]:
    try:
        with os.scandir(refs) as it:
            return [entry.name for entry in it if entry.name != "main" and entry.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _read_ref(path: Path) -> str | None:
    try:
        if not path.is_file():
            return None
        with path.open("rb") as file:
            return file.read(_MAX_REF_BYTES).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _blob_digest(path: Path) -> str | None:
    """The content digest a snapshot link's blob is named by (LFS files: sha256), else None."""
    try:
        target = Path(os.readlink(path)).name
    except OSError:
        return None
    return "sha256:" + target if _HEX64.fullmatch(target) else None
