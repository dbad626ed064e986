"""The model store: Ollama's on-disk layout under one root directory.

    <root>/blobs/sha256-<hex>                              content-addressed files (GGUF, text layers, config)
    <root>/manifests/<host>/<namespace>/<model>/<tag>      Ollama manifest JSON (schemaVersion 2)

Crash safety: every file is written to a `.tmp-*` file in its final directory, fsynced and renamed into
place, and a model's manifest is written last, so a crash leaves at most an unreferenced blob or a stale
`.tmp-*` file (ignored, and removed when older than a day). A write that fails (a full disk: StorageFull)
removes its `.tmp-*` file and leaves the store as it was. Names and digests are validated before they
touch a path, and every path must resolve inside the root (a planted symlink cannot redirect us).

A model split by gguf-split keeps each part as a blob (one model layer each, in order) and is loaded through a
folder of links named as llama.cpp expects (split_links.py). A pull downloads into a `.partial-*` file that
outlives an interrupted pull, so the next one resumes (partial.py); it becomes a blob only once it hashes to its name.

Integrity: blobs are verified by sha256 while they are written, and `verify` checks a model's GGUF again before
each load unless its file is unchanged (same device, inode, size, mtime and ctime) since this process last hashed
or wrote it. A blob that no longer matches its digest is removed (CorruptBlob: pull or import the model again), so
a later import writes it afresh instead of trusting the file that is there.

Concurrency: writers in threads and processes may race; renames make each file appear whole. Imports
hold a shared `flock` on `<root>/.lock`; `delete` collects garbage under the exclusive lock so that it
cannot remove a blob an import is about to reference (if imports keep it busy, garbage stays for later).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from offload.errors import (
    BadRequest,
    BlobNotFound,
    CorruptBlob,
    InvalidAdapter,
    InvalidDigest,
    InvalidGGUF,
    InvalidName,
    ModelNotFound,
    OffloadError,
    StoreError,
)
from offload.models import gguf
from offload.models.adapters import check_adapter
from offload.models.names import ModelName, parse_name, validate_digest
from offload.models.partial import PartialBlob, write_failed
from offload.models.split_links import first_part, remove_dangling

if sys.platform != "win32":
    import fcntl

log = logging.getLogger(__name__)

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA_TYPE = "application/vnd.ollama.image.template"
SYSTEM_MEDIA_TYPE = "application/vnd.ollama.image.system"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
ADAPTER_MEDIA_TYPE = "application/vnd.ollama.image.adapter"

_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_TEXT_LAYER_BYTES = 1 << 24
_STALE_TEMP_SECONDS = 24 * 3600
_GC_LOCK_WAIT_SECONDS = 2.0

FileIdentity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def file_identity(path: Path) -> FileIdentity | None:
    """What changes when a file is replaced, truncated or written to (ctime cannot be set back); None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class StoredAdapter:
    """A LoRA adapter layer of a model (checked against the model's GGUF when the model was created)."""

    digest: str
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class StoredModel:
    name: ModelName
    digest: str  # "sha256:<hex>" of the manifest bytes (Ollama's /api/tags digest, without the prefix)
    size: int  # sum of layer sizes
    modified_at: datetime  # manifest mtime, UTC
    model_digest: str  # digest of the GGUF layer
    model_path: Path  # blob path of the GGUF
    template: str | None
    system: str | None
    parameters: dict[str, Any]
    license: str | None
    split_parts: tuple[str, ...] = ()  # digests of parts 2..N of a split GGUF (model_path links part 1)
    adapters: tuple[StoredAdapter, ...] = ()  # applied on top of the GGUF, in this order


class Store:
    """Models under `root` (normally `settings.models_dir`). Methods are safe to call from threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self._blobs = self.root / "blobs"
        self._manifests = self.root / "manifests"
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._manifests.mkdir(parents=True, exist_ok=True)
            self._real_root = self.root.resolve(strict=True)
        except OSError as exc:
            raise StoreError(f"cannot create the model store at {self.root}: {exc}") from exc
        self._verified: dict[str, FileIdentity] = {}  # blob digest -> its file when last hashed or written here
        self._verified_lock = threading.Lock()
        self._remove_stale_temps()

    # ----- paths -------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Path of the blob `digest` (validated; raises InvalidDigest). The file need not exist."""
        valid = validate_digest(digest)
        return self._inside(self._blobs / ("sha256-" + valid.removeprefix("sha256:")))

    def _manifest_path(self, name: ModelName) -> Path:
        return self._inside(self._manifests / name.host / name.namespace / name.model / name.tag)

    def _inside(self, path: Path) -> Path:
        if not path.resolve().is_relative_to(self._real_root):
            raise StoreError(f"{path} resolves outside the model store")
        return path

    @staticmethod
    def _name(name: str | ModelName) -> ModelName:
        if isinstance(name, ModelName):
            # A ModelName can be built directly, skipping parse_name: validate it again.
            parsed = parse_name(f"{name.host}/{name.namespace}/{name.model}:{name.tag}")
            if parsed != name:
                raise InvalidName(f"model name {name!r} is not normalized", param="model")
            return parsed
        return parse_name(name)

    # ----- blobs -------------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_blob(
        self,
        source: Iterable[bytes] | BinaryIO,
        expected_digest: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Stream `source` into a blob and return its "sha256:<hex>" digest.

        With `expected_digest`, an existing blob of that digest is reused without reading `source`, and a
        mismatch raises InvalidDigest with nothing left behind. `progress` gets the bytes written so far.
        """
        expected = validate_digest(expected_digest) if expected_digest is not None else None
        with self._lock(exclusive=False):
            if expected is not None and self._intact(expected):
                return expected
            return self._stream_blob(source, expected, progress)

    def blob_intact(self, digest: str) -> bool:
        """Whether blob `digest` is stored and hashes to its name (read unless unchanged since it was last hashed or
        written here). One that does not is removed."""
        return self._intact(validate_digest(digest))

    @contextlib.contextmanager
    def partial(self, digest: str) -> Iterator[PartialBlob]:
        """The partial download of blob `digest`, open and locked (waits while another download of it holds it);
        `adopt` moves it into place once complete. See offload/models/partial.py."""
        expected = validate_digest(digest)
        try:
            partial = PartialBlob(self._inside(self._blobs / (".partial-" + expected.replace(":", "-"))))
        except OSError as exc:
            raise write_failed("starting a download", exc) from exc
        try:
            yield partial
        finally:
            partial.close()

    def adopt(self, partial: PartialBlob, digest: str) -> None:
        """Make the finished download `partial` blob `digest`, once it hashes to it. One that does not is removed
        and InvalidDigest raised."""
        expected = validate_digest(digest)
        partial.flush()
        with self._lock(exclusive=False):
            try:
                with _open_regular(partial.path) as file:
                    found = _hash_file(file)
            except (OSError, BadRequest) as exc:
                raise StoreError(f"reading the download of {expected} failed: {exc}") from exc
            if found != expected:
                partial.discard()
                raise InvalidDigest(f"the download hashes to {found}, not {expected}", param="digest")
            try:
                self._place(partial.path, expected)
            except OSError as exc:
                raise write_failed("storing a download", exc) from exc

    def verify(self, model: StoredModel) -> None:
        """Check that the GGUF of `model` and its adapters still hash to their digests (blocking: reads each file
        unless it is unchanged since it was last hashed or written here). Raises CorruptBlob, after removing a blob
        that does not match."""
        parts = [model.model_digest, *model.split_parts]
        files = [("model file", digest) for digest in parts] + [("LoRA adapter", a.digest) for a in model.adapters]
        for what, digest in files:
            if not self.blob_path(digest).is_file():
                raise CorruptBlob(f"the {what} of {model.name.display} is missing ({digest}); pull or import it again")
            if not self._intact(digest):
                raise CorruptBlob(
                    f"the {what} of {model.name.display} no longer matches its sha256 digest {digest} (it was "
                    "changed on disk) and was removed; pull or import the model again"
                )

    def _intact(self, digest: str) -> bool:
        """Whether blob `digest` exists and hashes to its name. A blob that does not is removed."""
        path = self.blob_path(digest)
        before = file_identity(path)
        if before is None:
            return False
        with self._verified_lock:
            if self._verified.get(digest) == before:
                return True
        try:
            with _open_regular(path) as file:
                st = os.fstat(file.fileno())
                hashed: FileIdentity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                found = _hash_file(file)
        except (OSError, BadRequest) as exc:
            raise StoreError(f"reading blob {digest} failed: {exc}") from exc
        if found != digest:
            log.error("blob %s hashes to %s (changed on disk): removing it", digest, found)
            if file_identity(path) == hashed:  # not if a verified copy was renamed into place meanwhile
                path.unlink(missing_ok=True)
            return False
        self._remember(digest, hashed)
        return True

    def _remember(self, digest: str, identity: FileIdentity | None) -> None:
        if identity is not None:
            with self._verified_lock:
                self._verified[digest] = identity

    def _stream_blob(
        self,
        source: Iterable[bytes] | BinaryIO,
        expected: str | None,
        progress: Callable[[int], None] | None,
    ) -> str:
        hasher = hashlib.sha256()
        written = 0
        tmp: Path | None = None
        try:
            tmp = self._temp_file(self._blobs)
            with open(tmp, "r+b") as out:
                for chunk in _chunks(source):
                    out.write(chunk)
                    hasher.update(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(written)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + hasher.hexdigest()
            if expected is not None and digest != expected:
                raise InvalidDigest(f"digest mismatch: expected {expected}, got {digest}", param="digest")
            self._place(tmp, digest)
            return digest
        except OSError as exc:
            raise write_failed("writing a blob", exc) from exc
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _place(self, file: Path, digest: str) -> None:
        """Rename `file` (in the blob folder, hashing to `digest`) into place, or drop it if that blob is there."""
        target = self.blob_path(digest)
        if target.is_file() and self._intact(digest):
            file.unlink()  # same content is already stored
        else:
            os.replace(file, target)
            _fsync_dir(self._blobs)
            self._remember(digest, file_identity(target))

    # ----- models ------------------------------------------------------------------------------------

    def list(self) -> list[StoredModel]:
        """All readable models, newest first. Unreadable manifests are skipped and logged."""
        models: list[StoredModel] = []
        for name, path in self._manifest_files():
            try:
                models.append(self._load(name, path))
            except (OffloadError, OSError) as exc:
                log.warning("skipping model %s: %s", name, exc)
        models.sort(key=lambda m: m.modified_at, reverse=True)
        return models

    def get(self, name: str | ModelName) -> StoredModel:
        """The model `name`; raises InvalidName, ModelNotFound, or StoreError for a corrupt manifest."""
        parsed = self._name(name)
        return self._load(parsed, self._manifest_path(parsed))

    def exists(self, name: str | ModelName) -> bool:
        return self._manifest_path(self._name(name)).is_file()

    def import_gguf(
        self,
        name: str | ModelName,
        source: Path | Iterable[bytes],
        *,
        expected_digest: str | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        license: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> StoredModel:
        """Store a GGUF (a regular file or a byte stream) as model `name`; see write_blob and create.

        An invalid GGUF raises InvalidGGUF and its blob is removed unless a manifest already uses it.
        A file source is hashed first, so a GGUF already in the store is not copied again.
        """
        parsed = self._name(name)
        expected = validate_digest(expected_digest) if expected_digest is not None else None
        with self._lock(exclusive=False):
            if isinstance(source, str | os.PathLike):
                with _open_regular(Path(source)) as file:
                    if expected is None:
                        try:
                            expected = _hash_file(file)
                            file.seek(0)
                        except OSError as exc:
                            raise StoreError(f"reading {source} failed: {exc}") from exc
                    digest = self.write_blob(file, expected, progress)
            else:
                digest = self.write_blob(source, expected, progress)
            blob = self.blob_path(digest)
            info = self._read_model_blob(digest, blob)
            return self._write_model(parsed, digest, blob, info, template, system, parameters, license)

    def create(
        self,
        name: str | ModelName,
        *,
        model_digest: str,
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        license: str | None = None,
        adapters: Sequence[str] = (),
        split_parts: Sequence[str] = (),
    ) -> StoredModel:
        """Write model `name` from a GGUF blob already in the store (it must pass read_gguf, else it is
        removed unless a manifest uses it), plus text layers and the manifest. Replaces an existing model of
        that name atomically. A model split by gguf-split is `model_digest` (its first part) and `split_parts`,
        the digests of the other parts in order (InvalidGGUF unless they are that model's parts). `adapters` are
        digests of LoRA adapter blobs, applied in that order: each must be one llama.cpp will load onto this GGUF
        (InvalidAdapter, the blob removed unless a manifest uses it).
        """
        parsed = self._name(name)
        digest = validate_digest(model_digest)
        with self._lock(exclusive=False):
            blob = self._existing_blob(digest, "model_digest")
            info = self._read_model_blob(digest, blob)
            info, split = self._split_parts(info, split_parts)
            checked = [self._read_adapter_blob(validate_digest(a), info) for a in adapters]
            return self._write_model(
                parsed, digest, blob, info, template, system, parameters, license, checked, split=split
            )

    def copy(self, source: str | ModelName, destination: str | ModelName) -> StoredModel:
        src, dst = self._name(source), self._name(destination)
        self._load(src, self._manifest_path(src))  # refuse to copy what we could not serve
        raw = _read_bounded(self._manifest_path(src), _MAX_MANIFEST_BYTES)
        self._atomic_write(self._manifest_path(dst), raw)
        return self.get(dst)

    def delete(self, name: str | ModelName) -> None:
        """Remove the manifest of `name`, then the blobs it used that no other manifest uses."""
        parsed = self._name(name)
        path = self._manifest_path(parsed)
        try:
            candidates = _manifest_digests(_read_bounded(path, _MAX_MANIFEST_BYTES))
        except FileNotFoundError:
            raise ModelNotFound(parsed.display) from None
        except (OSError, ValueError):
            candidates = set()  # corrupt manifest: delete it, keep blobs (we cannot tell which it used)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ModelNotFound(parsed.display) from None
        except OSError as exc:
            raise StoreError(f"cannot delete {parsed.display}: {exc}") from exc
        # Empty manifest directories are left: removing them could race a create in the same folder.
        with self._lock(exclusive=True, wait=_GC_LOCK_WAIT_SECONDS) as locked:
            if not locked:
                log.info("imports in progress; blobs of %s are kept for a later delete", parsed.display)
                return
            for digest in candidates - self._referenced_digests():
                with contextlib.suppress(OSError):
                    self.blob_path(digest).unlink(missing_ok=True)
            remove_dangling(self.root)

    # ----- internals ---------------------------------------------------------------------------------

    def _existing_blob(self, digest: str, param: str, what: str = "blob") -> Path:
        """The path of blob `digest`; BlobNotFound naming the request field `param` when it is not there."""
        blob = self.blob_path(digest)
        if not blob.is_file():
            raise BlobNotFound(f"{what} {digest} not found", param=param)
        return blob

    def _drop_unless_used(self, digest: str, blob: Path) -> None:
        """Remove a blob no model can be built from, unless a manifest uses it: an uploaded blob nobody
        references would otherwise stay forever."""
        if digest not in self._referenced_digests():
            blob.unlink(missing_ok=True)

    def _read_model_blob(self, digest: str, blob: Path) -> gguf.GGUFFile:
        """read_gguf(blob). An invalid GGUF is removed unless a manifest uses it: no model can be built from
        it, and an uploaded blob nobody references would otherwise stay forever. Raises InvalidGGUF."""
        try:
            return gguf.read_gguf(blob)
        except InvalidGGUF:
            self._drop_unless_used(digest, blob)
            raise

    def _read_adapter_blob(self, digest: str, base: gguf.GGUFFile) -> StoredAdapter:
        """The adapter blob `digest`, checked against `base` (see _read_model_blob for why a bad one is removed).
        Raises BlobNotFound or InvalidAdapter."""
        blob = self._existing_blob(digest, "adapters", "adapter blob")
        try:
            try:
                info = gguf.read_gguf(blob)
            except InvalidGGUF as exc:
                raise InvalidAdapter(f"adapter {digest} is not a valid GGUF: {exc.message}", param="adapters") from exc
            check_adapter(info, base, label=f"adapter {digest}")
        except InvalidAdapter:
            self._drop_unless_used(digest, blob)
            raise
        return StoredAdapter(digest, blob, blob.stat().st_size)

    def _split_parts(
        self, first: gguf.GGUFFile, digests: Sequence[str]
    ) -> tuple[gguf.GGUFFile, tuple[tuple[str, int], ...]]:
        """The whole model and (digest, size) of each further part; raises BlobNotFound, InvalidGGUF."""
        parts: list[tuple[str, int]] = []
        infos: list[gguf.GGUFFile] = []
        for digest in map(validate_digest, digests):
            blob = self._existing_blob(digest, "split_parts")
            infos.append(self._read_model_blob(digest, blob))
            parts.append((digest, blob.stat().st_size))
        return (gguf.merge_split(first, infos) if infos else first), tuple(parts)

    def _write_model(
        self,
        name: ModelName,
        model_digest: str,
        blob: Path,
        info: gguf.GGUFFile,
        template: str | None,
        system: str | None,
        parameters: dict[str, Any] | None,
        license: str | None,
        adapters: Sequence[StoredAdapter] = (),
        *,
        split: Sequence[tuple[str, int]] = (),
    ) -> StoredModel:
        layers = [_layer(MODEL_MEDIA_TYPE, model_digest, blob.stat().st_size)]
        layers += [_layer(MODEL_MEDIA_TYPE, digest, size) for digest, size in split]
        # As Ollama orders them: the model, its adapters, then the text layers.
        layers += [_layer(ADAPTER_MEDIA_TYPE, adapter.digest, adapter.size) for adapter in adapters]
        texts = [(TEMPLATE_MEDIA_TYPE, template), (SYSTEM_MEDIA_TYPE, system), (LICENSE_MEDIA_TYPE, license)]
        if parameters:
            try:
                params = json.dumps(parameters, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"parameters cannot be stored as JSON: {exc}", param="parameters") from exc
            texts.append((PARAMS_MEDIA_TYPE, params))
        for media_type, text in texts:
            if text is not None:
                data = text.encode("utf-8")
                if len(data) > _MAX_TEXT_LAYER_BYTES:
                    kind = media_type.rsplit(".", 1)[-1]
                    raise BadRequest(f"{kind} is larger than {_MAX_TEXT_LAYER_BYTES} bytes", param=kind)
                layers.append(_layer(media_type, self._stream_blob([data], None, None), len(data)))
        config = {
            "model_format": "gguf",
            "model_family": info.architecture,
            "model_families": [info.architecture],
            "model_type": gguf.format_parameter_size(info.parameter_count),
            "file_type": info.file_type,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        }
        config_bytes = json.dumps(config).encode()
        config_digest = self._stream_blob([config_bytes], None, None)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": _layer(CONFIG_MEDIA_TYPE, config_digest, len(config_bytes)),
            "layers": layers,
        }
        path = self._manifest_path(name)
        self._atomic_write(path, json.dumps(manifest).encode())
        return self._load(name, path)

    def _load(self, name: ModelName, path: Path) -> StoredModel:
        try:
            raw = _read_bounded(path, _MAX_MANIFEST_BYTES)
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            raise ModelNotFound(name.display) from None
        except OSError as exc:
            raise StoreError(f"cannot read the manifest of {name.display}: {exc}") from exc
        try:
            layers = _parse_manifest(raw)
        except (ValueError, InvalidDigest) as exc:
            raise StoreError(f"the manifest of {name.display} is corrupt: {exc}") from exc
        models = [layer for layer in layers if layer[0] == MODEL_MEDIA_TYPE]
        if not models:
            raise StoreError(f"the manifest of {name.display} has no model layer")
        blobs = [self.blob_path(digest) for _, digest, _ in models]
        for blob, (_, digest, _) in zip(blobs, models, strict=True):
            if not blob.is_file():
                raise CorruptBlob(f"the model file of {name.display} is missing ({digest}); pull or import it again")
        model_path = blobs[0]
        if len(blobs) > 1:
            try:
                model_path = self._inside(first_part(self.root, blobs))
            except OSError as exc:
                raise StoreError(f"cannot link the parts of {name.display}: {exc}") from exc

        def text(media_type: str) -> str | None:
            parts = [self._read_text(name, d) for m, d, _ in layers if m == media_type]
            return "\n".join(parts) if parts else None

        adapters: list[StoredAdapter] = []
        for media_type, digest, size in layers:
            if media_type == ADAPTER_MEDIA_TYPE:
                adapter_path = self.blob_path(digest)
                if not adapter_path.is_file():
                    raise CorruptBlob(
                        f"the LoRA adapter of {name.display} is missing ({digest}); pull or import it again"
                    )
                adapters.append(StoredAdapter(digest, adapter_path, size))
        params_text = text(PARAMS_MEDIA_TYPE)
        parameters: dict[str, Any] = {}
        if params_text is not None:
            try:
                parameters = json.loads(params_text)
            except ValueError as exc:
                raise StoreError(f"the parameters of {name.display} are not JSON") from exc
            if not isinstance(parameters, dict):
                raise StoreError(f"the parameters of {name.display} are not a JSON object")
        return StoredModel(
            name=name,
            digest="sha256:" + hashlib.sha256(raw).hexdigest(),
            size=sum(size for _, _, size in layers),
            modified_at=datetime.fromtimestamp(mtime, tz=UTC),
            model_digest=models[0][1],
            model_path=model_path,
            template=text(TEMPLATE_MEDIA_TYPE),
            system=text(SYSTEM_MEDIA_TYPE),
            parameters=parameters,
            license=text(LICENSE_MEDIA_TYPE),
            split_parts=tuple(digest for _, digest, _ in models[1:]),
            adapters=tuple(adapters),
        )

    def _read_text(self, name: ModelName, digest: str) -> str:
        try:
            return _read_bounded(self.blob_path(digest), _MAX_TEXT_LAYER_BYTES).decode("utf-8")
        except (OSError, ValueError) as exc:
            raise StoreError(f"layer {digest} of {name.display} is unreadable: {exc}") from exc

    def _manifest_files(self) -> Iterator[tuple[ModelName, Path]]:
        """(name, path) of each manifest file host/namespace/model/tag, skipping temp files and names
        that do not parse back to the same path (e.g. upper case written by another tool)."""
        for host in _subdirs(self._manifests):
            for namespace in _subdirs(host):
                for model in _subdirs(namespace):
                    with contextlib.suppress(OSError), os.scandir(model) as entries:
                        for entry in entries:
                            if entry.name.startswith(".") or not entry.is_file():
                                continue
                            text = f"{host.name}/{namespace.name}/{model.name}:{entry.name}"
                            try:
                                name = parse_name(text)
                            except InvalidName:
                                log.warning("skipping manifest with an invalid name: %s", text)
                                continue
                            if (name.host, name.namespace, name.model, name.tag) == (
                                host.name,
                                namespace.name,
                                model.name,
                                entry.name,
                            ):
                                yield name, Path(entry.path)

    def _referenced_digests(self) -> set[str]:
        referenced: set[str] = set()
        for _, path in self._manifest_files():
            with contextlib.suppress(OSError, ValueError):
                referenced |= _manifest_digests(_read_bounded(path, _MAX_MANIFEST_BYTES))
        return referenced

    def _temp_file(self, directory: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        os.fchmod(fd, 0o644)
        os.close(fd)
        return Path(name)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._temp_file(path.parent)
            try:
                with open(tmp, "r+b") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except OSError as exc:
            raise write_failed("writing a manifest", exc) from exc

    def _remove_stale_temps(self) -> None:
        cutoff = time.time() - _STALE_TEMP_SECONDS
        for directory, _, files in os.walk(self.root):
            for file in files:
                if file.startswith(".tmp-"):
                    path = Path(directory, file)
                    with contextlib.suppress(OSError):
                        if path.stat().st_mtime < cutoff:
                            path.unlink()

    @contextlib.contextmanager
    def _lock(self, *, exclusive: bool, wait: float | None = None) -> Iterator[bool]:
        """flock on <root>/.lock: shared for writers, exclusive for garbage collection. Yields whether
        the lock is held; with `wait`, gives up after that many seconds instead of blocking."""
        if sys.platform == "win32":  # no flock: atomic renames still keep every file whole
            yield True
            return
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            if wait is None:
                fcntl.flock(fd, mode)
            else:
                deadline = time.monotonic() + wait
                while True:
                    try:
                        fcntl.flock(fd, mode | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            yield False
                            return
                        time.sleep(0.05)
            yield True
        finally:
            os.close(fd)


def _layer(media_type: str, digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _parse_manifest(raw: bytes) -> list[tuple[str, str, int]]:
    """(mediaType, digest, size) of each layer; ValueError or InvalidDigest if malformed."""
    manifest = json.loads(raw)
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
        raise ValueError("not a schemaVersion 2 manifest")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise ValueError("layers is not a list")
    out: list[tuple[str, str, int]] = []
    for layer in layers:
        if not isinstance(layer, dict):
            raise ValueError("a layer is not an object")
        media_type, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
        if not isinstance(media_type, str) or not isinstance(digest, str):
            raise ValueError("a layer lacks mediaType or digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("a layer has a bad size")
        out.append((media_type, validate_digest(digest), size))
    return out


def _manifest_digests(raw: bytes) -> set[str]:
    """Every blob a manifest refers to (layers and config); ValueError if it cannot be parsed."""
    try:
        digests = {digest for _, digest, _ in _parse_manifest(raw)}
        config = json.loads(raw).get("config")
        if isinstance(config, dict) and isinstance(config.get("digest"), str):
            digests.add(validate_digest(config["digest"]))
    except InvalidDigest as exc:
        raise ValueError(str(exc)) from exc
    return digests


def _read_bounded(path: Path, limit: int) -> bytes:
    with open(path, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data


def _subdirs(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return []


def _chunks(source: Iterable[bytes] | BinaryIO) -> Iterator[bytes]:
    if isinstance(source, io.IOBase) or hasattr(source, "read"):
        reader: Any = source
        while chunk := reader.read(_CHUNK):
            yield chunk
    else:
        for chunk in source:
            if chunk:
                yield bytes(chunk)


def _hash_file(file: BinaryIO) -> str:
    hasher = hashlib.sha256()
    while chunk := file.read(_CHUNK):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


@contextlib.contextmanager
def _open_regular(path: Path) -> Iterator[BinaryIO]:
    """Open `path` for reading; BadRequest unless it is a regular file (a FIFO or device could hang or
    stream forever). O_NONBLOCK keeps the open itself from blocking on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadRequest(f"{path}: no such file", param="path") from None
    except OSError as exc:
        raise BadRequest(f"cannot open {path}: {exc.strerror or exc}", param="path") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadRequest(f"{path} is not a regular file", param="path")
        file = os.fdopen(fd, "rb", buffering=_CHUNK)
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
