"""Where llama.cpp finds the parts of a split model in the store.

llama.cpp loads a model split by gguf-split from its first part's path, and finds the others beside it by name
(`<prefix>-00002-of-00003.gguf`, ...). The store keeps every part as a blob named by its digest, so a split model
gets a folder of relative symlinks named as llama.cpp expects, and its `model_path` is the first link:

    <root>/splits/<key>/model-00001-of-00003.gguf -> ../../blobs/sha256-<part 1>
                        model-00002-of-00003.gguf -> ../../blobs/sha256-<part 2> ...

`<key>` is derived from the parts' digests, so one set of parts has one folder whichever manifests use it. Folders
are made whole (in a `.tmp-*` folder renamed into place) and again when missing; `remove_dangling` drops those whose
blobs are gone, after a delete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from offload.models.gguf import split_part_name

SPLITS = "splits"


def first_part(root: Path, blobs: Sequence[Path]) -> Path:
    """The link to the first of `blobs` (the parts in order, every one a blob under `root/blobs`), making the
    folder of links when it is missing. Raises OSError when the file system will not hold symlinks."""
    key = hashlib.sha256("\n".join(blob.name for blob in blobs).encode()).hexdigest()[:32]
    folder = root / SPLITS / key
    first = folder / split_part_name("model", 1, len(blobs))
    if first.is_symlink():
        return first
    (root / SPLITS).mkdir(exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root / SPLITS))
    try:
        for index, blob in enumerate(blobs, start=1):
            os.symlink(os.path.relpath(blob, folder), building / split_part_name("model", index, len(blobs)))
        try:
            os.rename(building, folder)
        except OSError:
            if not first.is_symlink():  # not a concurrent maker's finished folder: a real failure
                raise
    finally:
        if building.exists():
            _remove(building)
    return first


def remove_dangling(root: Path) -> None:
    """Remove the link folders that point at a blob no longer there (its models were deleted)."""
    with contextlib.suppress(OSError), os.scandir(root / SPLITS) as folders:
        for folder in folders:
            if not folder.name.startswith(".") and folder.is_dir(follow_symlinks=False):
                links = list(Path(folder.path).iterdir())
                if any(not link.exists() for link in links):
                    _remove(Path(folder.path))


def _remove(folder: Path) -> None:
    with contextlib.suppress(OSError):
        for link in folder.iterdir():
            link.unlink()
        folder.rmdir()
