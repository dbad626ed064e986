"""Pull a GGUF model from Hugging Face into the store, in two steps:

`plan` (a few small requests) lists the repository, picks the quantization (hf_select) and asks the hub where each
file is: every error a user can fix (no such repository, a gated one, no GGUF, no such quantization) surfaces here,
before anything is downloaded, so the API can answer it with its own HTTP status.

`pull` then fetches each file (each part of a split model) that the store lacks: from the HF cache when it is
there (copied, and checked on the way), else from the hub into the store's partial file, resuming what an earlier
pull left. Every file must hash to the sha256 the hub lists before the manifest is written; one that does not is
deleted (ChecksumMismatch). It reports Ollama's pull statuses as it goes:

    pulling manifest -> pulling <digest> (total, completed) per file -> verifying sha256 digest -> writing manifest
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from offload.errors import ChecksumMismatch, HubError, InvalidDigest, NoGGUF
from offload.models import hf_hub
from offload.models.hf_hub import HubConfig, Repo, Source
from offload.models.hf_names import HubRef
from offload.models.hf_select import Candidate, HubFile, candidates, choose
from offload.models.partial import PartialBlob
from offload.models.pull_status import PullStatus, Report
from offload.models.store import Store, StoredModel

log = logging.getLogger(__name__)

# Files llama.cpp cannot load but another engine could: a repository of only these is a model of another format.
_OTHER_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")




@dataclass(frozen=True, slots=True)
class PullPlan:
    ref: HubRef
    repo: Repo
    chosen: Candidate
    sources: tuple[Source, ...]  # where each file of `chosen` is, in order


def plan(hub: HubConfig, ref: HubRef, memory: Callable[[], int]) -> PullPlan:
    """What `ref` pulls. `memory()` is this machine's memory in bytes (asked only when the choice depends on it).
    Raises HubNotFound, HubAuthRequired, NoGGUF, HubUnreachable, HubError."""
    repo = hf_hub.fetch_repo(hub, ref.repo_id)
    found = candidates(repo.files)
    if not found:
        raise _no_gguf(hub, ref, repo)
    chosen = choose(found, ref.quant, memory, where=ref.display)
    unverifiable = [file.path for file in chosen.files if file.sha256 is None]
    if unverifiable:
        raise HubError(f"{unverifiable[0]} of {ref.display} has no sha256 on the hub (it is not an LFS file)")
    sources = tuple(hf_hub.locate(hub, repo, file) for file in chosen.files)
    log.info(
        "pulling %s as %s: %s, %d file(s), %d bytes, commit %s",
        ref.display, ref.name, chosen.label, len(chosen.files), chosen.size, repo.commit,
    )
    return PullPlan(ref, repo, chosen, sources)


def pull(planned: PullPlan, hub: HubConfig, store: Store, report: Report) -> StoredModel:
    """Fetch and verify every file of the plan, then write the model's manifest. Raises ChecksumMismatch,
    HubUnreachable, HubError, StorageFull, InvalidGGUF (the hub's file is no model llama.cpp would load)."""
    digests = ["sha256:" + str(file.sha256) for file in planned.chosen.files]
    with contextlib.ExitStack() as held:
        downloads = []
        for file, source, digest in zip(planned.chosen.files, planned.sources, digests, strict=True):
            partial = _fetch(planned, hub, store, file, source, digest, report, held)
            if partial is not None:
                downloads.append((file, digest, partial))
        report(PullStatus("verifying sha256 digest"))
        for file, digest, partial in downloads:
            try:
                store.adopt(partial, digest)
            except InvalidDigest as exc:
                raise ChecksumMismatch(
                    f"{file.path} from {planned.ref.display} does not match the sha256 the hub lists for it "
                    f"({digest}): the download was deleted; pull again to fetch it anew"
                ) from exc
    report(PullStatus("writing manifest"))
    return store.create(planned.ref.name, model_digest=digests[0], split_parts=digests[1:])


def _fetch(
    planned: PullPlan,
    hub: HubConfig,
    store: Store,
    file: HubFile,
    source: Source,
    digest: str,
    report: Report,
    held: contextlib.ExitStack,
) -> PartialBlob | None:
    """Get `file` into the store: None when it is a blob already (stored, or copied from the HF cache), else the
    finished partial download, still locked (held open by `held`) for the caller to verify."""
    label = f"pulling {digest.removeprefix('sha256:')[:12]}"

    def progress(done: int) -> None:
        report(PullStatus(label, digest, file.size, min(done, file.size)))

    if store.blob_intact(digest):
        progress(file.size)
        return None
    cached = hf_hub.cached(hub, planned.repo, file)
    if cached is not None:
        try:
            with cached.open("rb") as copy:
                store.write_blob(copy, digest, progress)  # hashed on the way in: InvalidDigest if it differs
            log.info("%s of %s came from the HF cache", file.path, planned.ref.display)
            return None
        except (OSError, InvalidDigest) as exc:
            log.warning("the HF cache's copy of %s is unusable (%s); downloading it", file.path, exc)
    partial = held.enter_context(store.partial(digest))
    if store.blob_intact(digest):  # another pull finished it while we waited for the partial file
        partial.discard()
        progress(file.size)
        return None
    if partial.size:
        log.info("resuming %s of %s at byte %d", file.path, planned.ref.display, partial.size)
    progress(partial.size)
    partial.progress = progress
    hf_hub.download(hub, planned.repo, source, file, partial)
    return partial


def _no_gguf(hub: HubConfig, ref: HubRef, repo: Repo) -> NoGGUF:
    """Why there is nothing to pull, and where to look instead."""
    advice = []
    if not ref.repo_id.lower().endswith("-gguf"):
        sibling = hf_hub.exists(hub, f"{ref.repo_id}-GGUF")
        if sibling is not None and candidates(sibling.files):
            advice.append(f"{sibling.repo_id} has them: offload pull hf.co/{sibling.repo_id}")
    if any(file.path.lower().endswith(_OTHER_WEIGHTS) for file in repo.files):
        advice.append(
            "its weights are safetensors/PyTorch files, which llama.cpp cannot load: pull a GGUF conversion of it, "
            "or run it with an engine for those formats such as vLLM (not in offload yet)"
        )
    return NoGGUF(f"{ref.display} has no GGUF file" + ("; " + "; ".join(advice) if advice else ""), param="model")


def machine_memory() -> int:
    """The memory a model would be loaded into: the GPUs' together when there are any, else the RAM."""
    from offload.hardware.probe import snapshot  # probes devices: only when a choice needs it

    found = snapshot()
    return sum(device.total_memory for device in found.devices) or found.cpu.memory_total
