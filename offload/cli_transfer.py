"""The client side of `offload create` and `offload pull`: Modelfiles, blob uploads, streamed statuses.

Like Ollama's CLI, `create` does the file work on the client: it parses the Modelfile, hashes a GGUF that
FROM names and each LoRA adapter ADAPTER names, uploads each only if the server lacks that blob (HEAD, then
POST /api/blobs/<digest>), and sends /api/create a request that names blobs by digest (`files`, `adapters`).
Failures raise ClientError with a printable message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from offload.client import ApiClient, ClientError

HASH_CHUNK = 1 << 20
MODELFILE_LIMIT = 1 << 20  # parse_modelfile refuses more; read no further than that


def _bar(console: Console) -> Progress:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console)


def sha256_file(path: Path, advance: Callable[[int], None] | None = None) -> str:
    """ "sha256:<hex>" of the file, read in 1 MiB blocks; `advance(n)` after each."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_CHUNK):
            digest.update(block)
            if advance is not None:
                advance(len(block))
    return "sha256:" + digest.hexdigest()


def from_path(value: str, base: Path) -> Path | None:
    """FROM names a model, unless it is an existing file (relative to `base`) or looks like a path."""
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    if candidate.exists():
        if not candidate.is_file():
            raise ClientError(f"FROM {value}: not a regular file (offload imports GGUF files)")
        return candidate
    if value.startswith((".", "/", "~")) or value.lower().endswith(".gguf"):
        raise ClientError(f"FROM {value}: no such file ({candidate})")
    return None


@dataclass(frozen=True, slots=True)
class LocalFiles:
    """The files a Modelfile names on this machine, to upload before /api/create."""

    model: Path | None  # FROM names this GGUF (None: FROM names a model)
    adapters: tuple[Path, ...] = ()  # ADAPTER lines, in order


def adapter_path(value: str, base: Path) -> Path:
    """An ADAPTER line always names a file (relative to `base`, the Modelfile's folder)."""
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base / candidate
    if not candidate.is_file():
        what = "not a regular file" if candidate.exists() else "no such file"
        raise ClientError(f"ADAPTER {value}: {what} ({candidate}); ADAPTER names a LoRA adapter in GGUF form")
    return candidate


def read_modelfile(path: Path, body: dict[str, Any]) -> LocalFiles:
    """Fill the /api/create `body` from the Modelfile at `path`; return the local files it names."""
    from offload.errors import InvalidModelfile
    from offload.models.modelfile import parse_modelfile

    try:
        with path.open("rb") as handle:
            raw = handle.read(MODELFILE_LIMIT + 1)
        parsed = parse_modelfile(raw.decode("utf-8"))
    except OSError as exc:
        raise ClientError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ClientError(f"{path}: not UTF-8 text") from exc
    except InvalidModelfile as exc:
        raise ClientError(f"{path}: {exc.message}") from exc
    for key in ("template", "system", "license"):
        value = getattr(parsed, key)
        if value is not None:
            body[key] = value
    if parsed.parameters:
        body["parameters"] = dict(parsed.parameters)
    if parsed.messages:
        body["messages"] = [{"role": role, "content": content} for role, content in parsed.messages]
    folder = path.resolve().parent
    gguf = from_path(parsed.from_, folder)
    if gguf is None:
        body["from"] = parsed.from_
    return LocalFiles(gguf, tuple(adapter_path(value, folder) for value in parsed.adapters))


def upload(api: ApiClient, path: Path, console: Console) -> str:
    """Hash the file, send it unless the server already holds that blob, and return its digest."""
    if not path.is_file():
        raise ClientError(f"{path}: not a regular file")
    size = path.stat().st_size
    with _bar(console) as bar:
        hashing = bar.add_task(f"hashing {path.name}", total=size)
        digest = sha256_file(path, lambda n: bar.advance(hashing, n))
        if not api.has_blob(digest):
            sending = bar.add_task(f"uploading {path.name}", total=size)
            api.upload_blob(path, digest, lambda n: bar.advance(sending, n))
    return digest


def upload_adapters(api: ApiClient, paths: tuple[Path, ...], console: Console) -> dict[str, str]:
    """Upload each adapter as `upload` does; the `adapters` field: {file name: digest}, in order. The names are
    labels only (the server never reads paths), made unique where two files share one."""
    adapters: dict[str, str] = {}
    for index, path in enumerate(paths):
        label = path.name if path.name not in adapters else f"{index}-{path.name}"
        adapters[label] = upload(api, path, console)
    return adapters


def show_statuses(lines: Generator[dict[str, Any], None, None], console: Console) -> None:
    """Print each new `status`; lines with total/completed drive one progress bar per digest."""
    tasks: dict[str, TaskID] = {}
    last = ""
    with closing(lines), _bar(console) as bar:
        for obj in lines:
            status = str(obj.get("status") or "")
            total = obj.get("total")
            if isinstance(total, int) and total > 0:
                key = str(obj.get("digest") or status)
                completed = obj.get("completed")
                done = completed if isinstance(completed, int) else 0
                if key not in tasks:
                    # Starts where a resumed pull is, so the speed and time left count only what moves now.
                    tasks[key] = bar.add_task(status, total=total, completed=done)
                else:
                    bar.update(tasks[key], completed=done)
            elif status and status != last:
                bar.console.print(status, markup=False, highlight=False)
            last = status
