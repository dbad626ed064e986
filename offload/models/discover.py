"""Discovery of models already on disk: model-path folders, the Ollama store, the Hugging Face cache, LM Studio.

Nothing is copied and nothing found is written to. One scan walks every configured root within one
`ScanBudget` (depth, directory entries, files, wall time: discover_walk.py) and checks each file with the
bounded GGUF reader; checks are cached by (path, device, inode, size, mtime), so a later scan reads only what
changed, and a scan is reused for `ttl` seconds (clients poll /api/tags). A scan never raises for what it
finds: a file that cannot serve is listed as broken, with the reason.

Names: each source proposes its own (found.py, the source modules). When two propose the same name, the
first usable one in source order (`DiscoveryRoots.by_source`: model paths, Ollama, Hugging Face, LM Studio)
serves it (the store, consulted before discovery, comes before all) and the others are listed as shadowed.
Broken entries claim no name.

Roots are injected (`DiscoveryRoots`); `roots_from` computes the defaults from the settings and the
environment variables the other tools define (OLLAMA_MODELS, HF_HUB_CACHE, HF_HOME, XDG_CACHE_HOME).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from offload.errors import FoundModelBroken, InvalidName
from offload.models.discover_files import lmstudio_candidates, path_candidates
from offload.models.discover_hf import hf_candidates
from offload.models.discover_ollama import ollama_candidates
from offload.models.discover_walk import ScanBudget, ScanLimits
from offload.models.found import (
    PROJECTOR_ARCHITECTURES,
    SOURCE_HF,
    SOURCE_LABELS,
    SOURCE_LMSTUDIO,
    SOURCE_OLLAMA,
    SOURCE_PATH,
    Candidate,
    FileCheck,
    FileKey,
    FoundModel,
    check_files,
    file_key,
    identity_digest,
)
from offload.models.names import ModelName, parse_name

log = logging.getLogger(__name__)

_CHECK_CACHE_SIZE = 4096
DEFAULT_LIMITS = ScanLimits()
_EPOCH = datetime.fromtimestamp(0, tz=UTC)

SourceScan = Callable[[Path, ScanBudget], Iterator[Candidate]]
_SCANNERS: Mapping[str, SourceScan] = {
    SOURCE_PATH: path_candidates,
    SOURCE_OLLAMA: ollama_candidates,
    SOURCE_HF: hf_candidates,
    SOURCE_LMSTUDIO: lmstudio_candidates,
}


@dataclass(frozen=True, slots=True)
class DiscoveryRoots:
    """The folders each source is read from, in order; an empty tuple turns a source off."""

    model_paths: tuple[Path, ...] = ()
    ollama: tuple[Path, ...] = ()
    huggingface: tuple[Path, ...] = ()
    lmstudio: tuple[Path, ...] = ()

    def by_source(self) -> list[tuple[str, tuple[Path, ...]]]:
        """Each source and its folders, in the order that decides which serves a name two of them propose."""
        return [
            (SOURCE_PATH, self.model_paths),
            (SOURCE_OLLAMA, self.ollama),
            (SOURCE_HF, self.huggingface),
            (SOURCE_LMSTUDIO, self.lmstudio),
        ]


def roots_from(
    models_path: tuple[Path, ...],
    sources: tuple[str, ...],
    environ: Mapping[str, str],
    home: Path,
    *,
    ollama: Path | None = None,
    huggingface: Path | None = None,
    lmstudio: tuple[Path, ...] = (),
) -> DiscoveryRoots:
    """The roots for the settings' `models_path`, enabled `sources` and explicit folders, the other tools' own
    defaults filling in where a folder is not given. `environ` and `home` are the process's (injected)."""

    def env_path(name: str) -> Path | None:
        value = environ.get(name, "").strip()
        return Path(value).expanduser() if value else None

    ollama_roots: tuple[Path, ...] = (ollama,) if ollama is not None else ()
    if not ollama_roots:
        # A Linux service install keeps its models in the ollama user's home.
        given = env_path("OLLAMA_MODELS")
        ollama_roots = (given,) if given else (home / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models"))
    hf_root = huggingface or env_path("HF_HUB_CACHE") or env_path("HUGGINGFACE_HUB_CACHE")
    if hf_root is None:
        hf_home = env_path("HF_HOME") or (env_path("XDG_CACHE_HOME") or home / ".cache") / "huggingface"
        hf_root = hf_home / "hub"
    lm_roots = lmstudio or (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models")
    return DiscoveryRoots(
        model_paths=tuple(models_path),
        ollama=ollama_roots if SOURCE_OLLAMA in sources else (),
        huggingface=(hf_root,) if SOURCE_HF in sources else (),
        lmstudio=tuple(lm_roots) if SOURCE_LMSTUDIO in sources else (),
    )


@dataclass(frozen=True, slots=True)
class Scan:
    """One scan's outcome: every entry in listing order, and why it stopped early (None: it did not)."""

    models: tuple[FoundModel, ...]
    stopped: str | None = None

    def find(self, name: ModelName) -> FoundModel | None:
        """The entry that serves `name`: the usable one, else the first broken one (to say why it cannot)."""
        named = [m for m in self.models if m.name == name]
        return next((m for m in named if m.usable), next((m for m in named if m.problem is not None), None))


class Discovery:
    """Scans `roots` on demand (thread-safe; blocking: call it from a worker thread)."""

    def __init__(
        self,
        roots: DiscoveryRoots,
        limits: ScanLimits = DEFAULT_LIMITS,
        *,
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.roots = roots
        self.limits = limits
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, Scan] | None = None
        # Used by scans (under _lock) and by recheck (a load, not under it): its own lock, held only to read and
        # write it, never while a file is read.
        self._checks_lock = threading.Lock()
        self._checks: OrderedDict[FileKey, FileCheck] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return any(roots for _, roots in self.roots.by_source())

    def scan(self, *, fresh: bool = False) -> Scan:
        """Every model found, shadowing applied; a scan younger than `ttl` is reused unless `fresh`."""
        with self._lock:
            now = self._clock()
            if not fresh and self._last is not None and now - self._last[0] < self._ttl:
                return self._last[1]
            result = self._scan()
            self._last = (self._clock(), result)
            if result.stopped:
                log.warning("model discovery stopped early (%s); the next scan goes on from there", result.stopped)
            return result

    def find(self, name: str | ModelName) -> FoundModel | None:
        parsed = name if isinstance(name, ModelName) else parse_name(name)
        return self.scan().find(parsed)

    def recheck(self, found: FoundModel) -> FoundModel:
        """`found` checked again now (before a load: the file may have changed since the scan). Raises
        FoundModelBroken when it no longer passes."""
        key = file_key(found.parts)
        problem = key if isinstance(key, str) else self._check(found.parts, key).problem
        if problem is not None:
            raise broken_error(dataclasses.replace(found, problem=problem))
        return found

    # ----- internals ---------------------------------------------------------------------------------

    def _scan(self) -> Scan:
        budget = ScanBudget(self.limits, self._clock)
        entries: list[FoundModel] = []
        for source, roots in self.roots.by_source():
            for root in roots:
                for candidate in _SCANNERS[source](root, budget):
                    found = self._found(candidate, budget)
                    if found is not None:
                        entries.append(found)
        return Scan(tuple(_shadow(entries)), budget.exhausted)

    def _found(self, candidate: Candidate, budget: ScanBudget) -> FoundModel | None:
        """The listing entry of `candidate`; None for a file that is not a model (a vision projector)."""
        name: ModelName | None = None
        problem = candidate.problem
        try:
            name = parse_name(candidate.name)
        except InvalidName as exc:
            problem = problem or f"no usable model name: {exc.message}"
        key = file_key(candidate.parts)
        check: FileCheck | None = None
        if isinstance(key, str):
            problem = problem or key
        elif problem is None:
            with self._checks_lock:
                check = self._checks.get(key)
            if check is None and budget.ok():
                check = self._check(candidate.parts, key)
            stopped = f"not checked yet: the scan stopped after {budget.exhausted}"
            problem = check.problem if check is not None else stopped
        summary = check.summary if check is not None else None
        if summary is not None and summary.architecture in PROJECTOR_ARCHITECTURES:
            return None
        shown_id = candidate.manifest_digest or candidate.digest
        return FoundModel(
            label=name.display if name is not None else candidate.name,
            name=name,
            source=candidate.source,
            path=candidate.path,
            parts=candidate.parts,
            size=check.size if check is not None else 0,
            modified_at=check.modified_at if check is not None else _EPOCH,
            id_digest=shown_id or identity_digest(candidate.source, key, candidate.path),
            content_digest=candidate.digest,
            summary=summary,
            problem=problem,
            system=candidate.system,
            parameters=dict(candidate.parameters),
            license=candidate.license,
        )

    def _check(self, parts: tuple[Path, ...], key: FileKey) -> FileCheck:
        with self._checks_lock:
            cached = self._checks.get(key)
            if cached is not None:
                self._checks.move_to_end(key)
                return cached
        check = check_files(parts, key)
        with self._checks_lock:
            self._checks[key] = check
            while len(self._checks) > _CHECK_CACHE_SIZE:
                self._checks.popitem(last=False)
        return check


def _shadow(entries: list[FoundModel]) -> list[FoundModel]:
    """`entries` (in scan order: DiscoveryRoots.by_source, then each source's own) with every usable entry whose name an
    earlier usable one took marked shadowed."""
    taken: dict[ModelName, str] = {}
    out: list[FoundModel] = []
    for model in entries:
        name = model.name
        if model.usable and name is not None:
            if name in taken:
                model = dataclasses.replace(model, shadowed_by=taken[name])
            else:
                taken[name] = model.source
        out.append(model)
    return out


def broken_error(found: FoundModel) -> FoundModelBroken:
    where = SOURCE_LABELS.get(found.source, found.source)
    return FoundModelBroken(
        f'model "{found.label}" (found in {where}) cannot be used: {found.problem}', param="model"
    )
