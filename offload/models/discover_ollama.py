"""Models in an Ollama store (`OLLAMA_MODELS`, else ~/.ollama/models), used in place.

    <root>/manifests/<host>/<namespace>/<model>/<tag>   manifest JSON (schemaVersion 2), one per model
    <root>/blobs/sha256-<hex>                           the layers, by content digest

The layout is offload's own store's, so the manifest parser is the store's. Each manifest's first layer of
type `application/vnd.ollama.image.model` is the GGUF, and its digest is known (an adoption checks it while
copying). The params, system and license layers come along; the template layer does not: Ollama's templates
are Go text/template, which offload does not run (the GGUF's own chat template is used, as for imports).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from offload.errors import InvalidDigest
from offload.models.discover_walk import ScanBudget
from offload.models.found import SOURCE_OLLAMA, Candidate
from offload.models.store import (
    ADAPTER_MEDIA_TYPE,
    LICENSE_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    PARAMS_MEDIA_TYPE,
    SYSTEM_MEDIA_TYPE,
    _parse_manifest,  # the same manifest format, parsed with the same checks
)

_MAX_MANIFEST_BYTES = 1 << 20
_MAX_TEXT_BYTES = 1 << 20
_LEVELS = 4  # host / namespace / model / tag


def ollama_candidates(root: Path, budget: ScanBudget) -> Iterator[Candidate]:
    """One candidate per manifest under `root`/manifests, in sorted order."""
    blobs = root / "blobs"
    for parts, manifest in _manifests(root / "manifests", budget):
        host, namespace, model, tag = parts
        name = f"{host}/{namespace}/{model}:{tag}"
        yield _candidate(name, manifest, blobs)


def _manifests(top: Path, budget: ScanBudget) -> Iterator[tuple[tuple[str, ...], Path]]:
    """(host, namespace, model, tag) and the path of each manifest file, exactly four levels down."""
    stack: list[tuple[Path, tuple[str, ...]]] = [(top, ())]
    while stack and budget.ok():
        directory, above = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        deeper: list[tuple[Path, tuple[str, ...]]] = []
        for entry in entries:
            if not budget.spend_entry():
                return
            if entry.name.startswith("."):  # Ollama's and our own temp files
                continue
            level = (*above, entry.name)
            try:
                if len(level) < _LEVELS and entry.is_dir(follow_symlinks=False):
                    deeper.append((Path(entry.path), level))
                elif len(level) == _LEVELS and entry.is_file():  # not a FIFO: reading one would block
                    if not budget.spend_file():
                        return
                    yield level, Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(deeper))


def _candidate(name: str, manifest: Path, blobs: Path) -> Candidate:
    def broken(problem: str, model: Path = manifest) -> Candidate:
        return Candidate(SOURCE_OLLAMA, name, model, (model,), problem=problem)

    try:
        raw = _read_regular(manifest, _MAX_MANIFEST_BYTES)
        layers = _parse_manifest(raw)
    except (OSError, ValueError, InvalidDigest) as exc:
        return broken(f"unreadable Ollama manifest: {getattr(exc, 'message', None) or exc}")
    models = [digest for media_type, digest, _ in layers if media_type == MODEL_MEDIA_TYPE]
    if not models:
        return broken("the Ollama manifest has no model layer")
    digest = models[0]
    path = blobs / digest.replace(":", "-")
    if any(media_type == ADAPTER_MEDIA_TYPE for media_type, _, _ in layers):
        return broken("the Ollama model applies a LoRA adapter, which is not used from Ollama's store; "
                      "import it with a Modelfile instead", path)
    texts: dict[str, str] = {}
    for media_type, layer, _ in layers:
        if media_type in (SYSTEM_MEDIA_TYPE, LICENSE_MEDIA_TYPE, PARAMS_MEDIA_TYPE) and media_type not in texts:
            try:
                texts[media_type] = _read_regular(blobs / layer.replace(":", "-"), _MAX_TEXT_BYTES).decode("utf-8")
            except (OSError, ValueError) as exc:
                return broken(f"layer {layer} of the Ollama model is unreadable: {exc}", path)
    parameters = _parameters(texts.get(PARAMS_MEDIA_TYPE))
    if parameters is None:
        return broken("the Ollama model's parameters are not a JSON object", path)
    return Candidate(
        source=SOURCE_OLLAMA,
        name=name,
        path=path,
        parts=(path,),
        digest=digest,
        manifest_digest=_sha256(raw),
        system=texts.get(SYSTEM_MEDIA_TYPE),
        parameters=parameters,
        license=texts.get(LICENSE_MEDIA_TYPE),
    )


def _parameters(text: str | None) -> Mapping[str, Any] | None:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _sha256(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file; ValueError past it. O_NONBLOCK: a FIFO planted in another
    program's store must not hang the listing (it is refused right after the open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path.name} is not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data
