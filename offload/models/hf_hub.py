"""The Hugging Face side of a pull, through huggingface_hub: list a repository, find a file in the HF cache, fetch
one with resume. Every failure of huggingface_hub or of the network becomes one of offload's errors here, with a
message saying what to do; nothing of huggingface_hub's leaks out (no traceback reaches a client).

Endpoint, token and cache are huggingface_hub's own settings (`HubConfig.from_environment`): `HF_ENDPOINT`,
`HF_TOKEN` (else the token `hf auth login` saved), `HF_HOME` / `HF_HUB_CACHE`. Tests pass a HubConfig instead.

Downloads are offload's, not `hf_hub_download`'s: that one deletes a partial file when it fails (so a pull
interrupted for good would start over) and writes into the HF cache (a second copy of every model beside the
store). Here the file's metadata comes from `get_hf_file_metadata` and its bytes from `http_get`, which sends the
Range request that resumes, into the store's partial file (Store.partial); the store checks the hub's sha256
before the blob exists. The authorization header goes to the endpoint's own origin only: a redirect to a CDN
(another scheme, host or port) gets none, and huggingface_hub's HTTP client drops it on redirects it follows.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, get_token, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get, repo_folder_name
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # (a lazy export mypy misses)
from huggingface_hub.utils.tqdm import silent_tqdm

from offload.errors import BadRequest, HubAuthRequired, HubError, HubNotFound, HubUnreachable
from offload.models.hf_select import HubFile
from offload.models.partial import PartialBlob

METADATA_TIMEOUT = 30.0  # seconds for one listing or HEAD; downloads have huggingface_hub's own read timeout
# A listed sha256 becomes a blob's name and a path in the HF cache: nothing but 64 lowercase hex digits will do.
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class HubConfig:
    """Where the hub is and who we are there."""

    endpoint: str
    token: str | None = field(default=None, repr=False)
    cache_dir: Path | None = None  # the HF cache, looked in before downloading; None: not looked in

    @classmethod
    def from_environment(cls) -> HubConfig:
        """huggingface_hub's reading of HF_ENDPOINT, HF_TOKEN (or the saved token) and HF_HUB_CACHE."""
        return cls(constants.ENDPOINT, get_token(), Path(constants.HF_HUB_CACHE))

    @property
    def auth(self) -> str | bool:
        """huggingface_hub's `token` argument: False (not None) without one, so no saved token sneaks in."""
        return self.token or False

    def page(self, repo_id: str) -> str:
        return f"{self.endpoint}/{repo_id}"


@dataclass(frozen=True, slots=True)
class Repo:
    repo_id: str  # as the hub spells it
    commit: str  # what every file is fetched at, so the parts of one pull are of one commit
    files: tuple[HubFile, ...]


@dataclass(frozen=True, slots=True)
class Source:
    """Where one file's bytes are, and the headers to send there (no authorization off the hub's origin)."""

    url: str
    headers: Mapping[str, str] = field(repr=False)


def fetch_repo(hub: HubConfig, repo_id: str) -> Repo:
    """The repository's files with their sizes and LFS sha256, at its current commit."""
    with hub_errors(hub, repo_id):
        info = HfApi(endpoint=hub.endpoint, token=hub.auth).model_info(
            repo_id, files_metadata=True, timeout=METADATA_TIMEOUT
        )
    files = tuple(
        HubFile(s.rfilename, s.lfs.size if s.lfs else s.size or 0, s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or ()
    )
    if not info.sha:
        raise HubError(f"{hub.endpoint} listed {repo_id} without its commit")
    bad = [file.path for file in files if file.sha256 is not None and not _SHA256.fullmatch(file.sha256)]
    if bad:
        raise HubError(f"{hub.endpoint} listed {bad[0]} of {repo_id} with a malformed sha256")
    return Repo(info.id, info.sha, files)


def exists(hub: HubConfig, repo_id: str) -> Repo | None:
    """The repository when we can read it, else None."""
    try:
        return fetch_repo(hub, repo_id)
    except (HubNotFound, HubAuthRequired, BadRequest):
        return None


def locate(hub: HubConfig, repo: Repo, file: HubFile) -> Source:
    """Ask the hub where `file` is (a HEAD request, following redirects within the hub): its own URL or a CDN's.
    Raises HubError when the hub's metadata does not name the sha256 its listing gave."""
    url = hf_hub_url(repo.repo_id, file.path, revision=repo.commit, endpoint=hub.endpoint)
    with hub_errors(hub, repo.repo_id):
        meta = get_hf_file_metadata(url, token=hub.auth, timeout=METADATA_TIMEOUT, endpoint=hub.endpoint)
    if file.sha256 is not None and meta.etag != file.sha256:
        raise HubError(
            f"{hub.endpoint} lists {file.path} of {repo.repo_id} with sha256 {file.sha256} but serves {meta.etag}"
        )
    headers = build_hf_headers(token=hub.auth)
    if _origin(meta.location) != _origin(url):
        headers.pop("authorization", None)
    return Source(meta.location, headers)


def download(hub: HubConfig, repo: Repo, source: Source, file: HubFile, out: PartialBlob) -> None:
    """Append what `out` lacks of `file` (Range from its size; from 0 if it holds more than the file). The bytes are
    checked by the store afterwards (Store.adopt), not here."""
    start = out.size
    if start > file.size:
        out.truncate(0)
        start = 0
    with hub_errors(hub, repo.repo_id):
        try:
            http_get(
                source.url,
                cast(BinaryIO, out),
                resume_size=start,
                headers=dict(source.headers),
                expected_size=file.size,
                tqdm_class=cast(Any, silent_tqdm),  # progress goes to our callback, not a bar on the server's stderr
            )
        except OSError as exc:
            if isinstance(exc, HfHubHTTPError) or exc.errno is not None:
                raise  # the hub's answer (translated below), or a local error (PartialBlob.write's StorageFull)
            # http_get's "Consistency check failed": the body was not the length the hub said.
            shown = f"{file.path} from {repo.repo_id}"
            raise HubError(f"the download of {shown} did not end at its {file.size} bytes") from exc


def cached(hub: HubConfig, repo: Repo, file: HubFile) -> Path | None:
    """`file` in the HF cache (at this commit, or any copy of its blob), unverified; None when it is not there."""
    if hub.cache_dir is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        found = try_to_load_from_cache(repo.repo_id, file.path, cache_dir=hub.cache_dir, revision=repo.commit)
        if isinstance(found, str):
            return Path(found)
        if file.sha256 is not None:
            # The cache keeps an LFS file's blob under its sha256, whichever commit brought it.
            blob = hub.cache_dir / repo_folder_name(repo_id=repo.repo_id, repo_type="model") / "blobs" / file.sha256
            if blob.is_file():
                return blob
    return None


@contextlib.contextmanager
def hub_errors(hub: HubConfig, repo_id: str) -> Iterator[None]:
    """Translate huggingface_hub's and the network's exceptions into offload's errors (see the module docstring)."""
    shown = f"hf.co/{repo_id}" if hub.endpoint == constants._HF_DEFAULT_ENDPOINT else f"{hub.page(repo_id)}"
    try:
        yield
    except GatedRepoError as exc:
        raise HubAuthRequired(_gated(hub, repo_id, shown), param="model") from exc
    except RepositoryNotFoundError as exc:
        if hub.token:
            raise HubNotFound(f"{shown} was not found, or the token in HF_TOKEN cannot read it", param="model") from exc
        raise HubNotFound(
            f"{shown} was not found (if it is private, set HF_TOKEN to a token that can read it)", param="model"
        ) from exc
    except (RevisionNotFoundError, RemoteEntryNotFoundError) as exc:
        raise HubNotFound(f"{shown}: {_first_line(exc)}", param="model") from exc
    except OfflineModeIsEnabled as exc:
        raise HubUnreachable(f"HF_HUB_OFFLINE is set: {shown} cannot be pulled") from exc
    except HfHubHTTPError as exc:
        raise _http_error(exc, hub, shown) from exc
    except HFValidationError as exc:
        raise BadRequest(f"{repo_id} is not a Hugging Face repository id: {_first_line(exc)}", param="model") from exc
    except httpx2.TransportError as exc:
        raise HubUnreachable(f"cannot reach {hub.endpoint} ({type(exc).__name__}: {exc})") from exc


def _gated(hub: HubConfig, repo_id: str, shown: str) -> str:
    if hub.token:
        return (
            f"{shown} is gated and the token in HF_TOKEN has no access to it yet: accept its terms at "
            f"{hub.page(repo_id)} with that account"
        )
    return (
        f"{shown} is gated: accept its terms at {hub.page(repo_id)}, then set HF_TOKEN to a token of that account "
        "(https://huggingface.co/settings/tokens) where the server runs"
    )


def _http_error(exc: HfHubHTTPError, hub: HubConfig, shown: str) -> HubError | HubAuthRequired | HubNotFound:
    status = exc.response.status_code if exc.response is not None else None
    if status == 401:
        if hub.token:
            return HubAuthRequired(f"{hub.endpoint} refused the token in HF_TOKEN (401): check it", param="model")
        return HubAuthRequired(f"{shown} needs a token: set HF_TOKEN where the server runs", param="model")
    if status == 403:
        return HubAuthRequired(f"{hub.endpoint} refused access to {shown} (403): check HF_TOKEN", param="model")
    if status == 404:
        return HubNotFound(f"{shown}: not found (404)", param="model")
    return HubError(f"{hub.endpoint} answered {status} for {shown}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(), parts.port)

