"""Every model a name can reach: the store's first, then those discovery found on disk.

A found model is served from its own file, read-only: `as_stored` gives the scheduler and the API the same
`StoredModel` shape the store's models have (a `FoundStoredModel`, which remembers what was found), and
`verify` checks it with the bounded GGUF reader before each load where a store model is hashed. `adopt`
copies one into the store (its sha256 checked while it is copied where the source names it; a split model as
one blob per part, as pulls store them).
Blocking functions: call them from worker threads.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offload.config import Settings
from offload.errors import BadRequest, FoundModelBroken, ModelNotFound
from offload.models import starter
from offload.models.discover import Discovery, broken_error, roots_from
from offload.models.found import SOURCE_LABELS, FoundModel
from offload.models.names import ModelName, parse_name
from offload.models.store import Store, StoredModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FoundStoredModel(StoredModel):
    """A found model as the scheduler and the API see it. `found` is always set (a default only because the
    base class's last field has one)."""

    found: FoundModel | None = None


def as_stored(found: FoundModel) -> FoundStoredModel:
    if found.name is None:
        raise broken_error(found)
    return FoundStoredModel(
        name=found.name,
        digest=found.id_digest,
        size=found.size,
        modified_at=found.modified_at,
        model_digest=found.content_digest or found.id_digest,
        model_path=found.path,
        template=None,  # Ollama's are Go templates: the GGUF's own chat template serves instead
        system=found.system,
        parameters=dict(found.parameters),
        license=found.license,
        found=found,
    )


def served_found(stored: Sequence[StoredModel], found: Sequence[FoundModel]) -> list[FoundModel]:
    """The found models listed as served beside the store's: usable, and not named like a stored model (the
    store's wins, as in `resolve`)."""
    names = {model.name for model in stored}
    return [model for model in found if model.usable and model.name not in names]


def resolve(store: Store, discovery: Discovery | None, name: str) -> StoredModel:
    """The store's model `name` (the starter imported on first use), else the found one. Raises ModelNotFound,
    InvalidName, FoundModelBroken (found, but its file cannot serve)."""
    try:
        return starter.resolve(store, name)
    except ModelNotFound as exc:
        return _found(discovery, name, exc)


def lookup(store: Store, discovery: Discovery | None, name: str) -> StoredModel:
    """`resolve` without importing the starter: for what only reports on a model."""
    try:
        return store.get(name)
    except ModelNotFound as exc:
        return _found(discovery, name, exc)


def _found(discovery: Discovery | None, name: str, missing: ModelNotFound) -> StoredModel:
    found = discovery.find(name) if discovery is not None else None
    if found is None:
        raise missing
    if not found.usable:
        raise broken_error(found) from None
    return as_stored(found)


def found_of(model: StoredModel) -> FoundModel | None:
    return model.found if isinstance(model, FoundStoredModel) else None


def verify(store: Store, discovery: Discovery | None, model: StoredModel) -> None:
    """Before a load: a store model's file still hashes to its digest (Store.verify); a found model's files are
    still there and valid GGUFs (bounded reader; unchanged files are not read again). Raises CorruptBlob or
    FoundModelBroken."""
    found = found_of(model)
    if found is None:
        store.verify(model)
    elif discovery is not None:
        discovery.recheck(found)


def adopt(store: Store, model: StoredModel, destination: str | ModelName) -> StoredModel:
    """Copy found `model` into the store as `destination`, with the system, parameters and license its source
    gave. A content digest the source names (Ollama's blob, a Hugging Face LFS blob) is checked while copying
    (InvalidDigest, nothing kept, on a mismatch); a file already in the store is not copied again."""
    found = found_of(model)
    if found is None:
        raise BadRequest(f"{model.name.display} is not a found model")
    name = destination if isinstance(destination, ModelName) else parse_name(str(destination))
    parameters: dict[str, Any] | None = dict(found.parameters) or None
    if found.split:
        # One blob per part, hashed while copied; create() checks that they are that model's parts, in order.
        digests = [_copy_blob(store, part) for part in found.parts]
        return store.create(
            name,
            model_digest=digests[0],
            split_parts=digests[1:],
            system=found.system,
            parameters=parameters,
            license=found.license,
        )
    return store.import_gguf(
        name,
        found.path,
        expected_digest=found.content_digest,
        system=found.system,
        parameters=parameters,
        license=found.license,
    )


def _copy_blob(store: Store, path: Path) -> str:
    # O_NONBLOCK: the file was a regular one when found, but a FIFO put in its place must not hang the copy.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # gone or unreadable since it was found
        raise FoundModelBroken(f"{path.name} can no longer be read ({exc.strerror})", param="source") from exc
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FoundModelBroken(f"{path.name} is no longer a regular file", param="source")
        return store.write_blob(file)


def source_label(model: StoredModel) -> str:
    found = found_of(model)
    return SOURCE_LABELS[found.source] if found is not None else SOURCE_LABELS["store"]


def discovery_for(settings: Settings, environ: Mapping[str, str], home: Path) -> Discovery:
    """The discovery the settings ask for; `environ` and `home` give the other tools' default folders."""
    roots = roots_from(
        settings.models_path,
        settings.discover,
        environ,
        home,
        ollama=settings.ollama_models,
        huggingface=settings.hf_cache,
        lmstudio=settings.lmstudio_models,
    )
    for source, folders in roots.by_source():
        if folders:
            log.info("looking for %s models in %s", source, ", ".join(str(folder) for folder in folders))
    return Discovery(roots)
