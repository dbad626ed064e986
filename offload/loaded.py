"""A model the scheduler has loaded: its runner, what the load reported, its clock, and what /api/ps shows of it.

Pure helpers (`wanted_context`, `expired`, `measured_usage`, `running_model`) are table-tested; `Loaded` is the
scheduler's mutable record, changed only under the scheduler's condition lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from offload.eviction import Resident
from offload.generation import Chunk, EmbedRequest, EmbedResult, GenerateRequest
from offload.models.store import FileIdentity, StoredModel
from offload.runner.placement import is_gpu_device
from offload.runner.protocol import LoadedInfo

_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


class Runner(Protocol):
    info: LoadedInfo | None

    async def start(self, timeout: float) -> LoadedInfo: ...
    def generate(self, request: GenerateRequest) -> AsyncIterator[Chunk]: ...
    async def embed(self, request: EmbedRequest) -> EmbedResult: ...
    async def tokenize(self, text: str) -> list[int]: ...
    async def ping(self, timeout: float) -> float: ...
    def has_exited(self) -> bool: ...
    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RunningModel:
    name: str
    model_digest: str
    size: int
    size_vram: int
    expires_at: datetime
    context_length: int
    placement: dict[str, Any]


@dataclass
class Loaded:
    model: StoredModel
    runner: Runner
    info: LoadedInfo
    keep_alive: float
    n_ctx: int  # per sequence, as requested; the runner may hold less (trained context, a plan shrunk to fit)
    usage: Mapping[str, int]  # bytes per device it holds, measured where the runner could say (measured_usage)
    num_gpu: int | None = None  # as requested (None: the server's setting)
    parallel: int = 1  # sequence slots the runner was loaded with (n_seq_max): num_parallel, or what "auto" chose
    fallbacks: tuple[str, ...] = ()  # "cuda: <why it could not run>" for each backend skipped on the way
    warning: str | None = None  # said loudly when GPU layers were asked for and none landed
    active: int = 0
    draining: bool = False  # a request needs it reloaded: no new request joins; it is swapped once idle
    idle_since: float = field(default_factory=time.monotonic)
    file: FileIdentity | None = None  # the GGUF file as it was verified before the load (store.file_identity)

    def expires_at(self) -> datetime:
        if self.active or math.isinf(self.keep_alive):
            return _FAR_FUTURE
        remaining = self.keep_alive - (time.monotonic() - self.idle_since)
        return datetime.now(UTC) + timedelta(seconds=max(0.0, remaining))

    def resident(self, name: str) -> Resident:
        return Resident(name=name, busy=self.active > 0, last_used=self.idle_since, usage=self.usage)


def buffers_by_device(info: LoadedInfo) -> dict[str, int]:
    """llama.cpp's reported buffer bytes per device (weights, KV, compute together), from the runner's load report."""
    devices = (info.placement or {}).get("devices", [])
    return {str(d["name"]): sum(int(b) for b in d["buffers"].values()) for d in devices}


def measured_usage(info: LoadedInfo, gpu_overhead: int) -> dict[str, int]:
    """Bytes per device a loaded runner holds: llama.cpp's reported buffers per device, plus the per-process
    overhead on each GPU it uses. With one GPU and NVML's number for the process, that number replaces the sum."""
    usage = buffers_by_device(info)
    gpus = [name for name, used in usage.items() if used and is_gpu_device(name)]
    for name in gpus:
        usage[name] += gpu_overhead
    if len(gpus) == 1 and info.gpu_memory is not None:
        usage[gpus[0]] = info.gpu_memory
    if not usage:
        usage["CPU"] = info.model_size
    return usage


def running_model(name: str, entry: Loaded) -> RunningModel:
    """What /api/ps shows of a loaded model: sizes from the runner's load report, not from estimates."""
    info = entry.info
    report = info.placement or {}
    buffers = buffers_by_device(info)
    total = sum(buffers.values()) or info.model_size
    on_gpu = sum(used for device, used in buffers.items() if is_gpu_device(device))
    return RunningModel(
        name=name,
        model_digest=entry.model.model_digest,
        size=total,
        size_vram=on_gpu,
        expires_at=entry.expires_at(),
        context_length=info.n_ctx,
        placement={
            "backend": info.backend,
            "layers_on_gpu": info.layers_on_gpu,
            "layers_total": report.get("layers_total") or info.n_layer + 1,
            "devices": report.get("devices", []),
            "verified": bool(report.get("verified")),
            "parallel": entry.parallel,
            "gpu_memory": info.gpu_memory,
            "fallbacks": list(entry.fallbacks),
            "warning": entry.warning,
        },
    )


def wanted_context(requested: int | None, default: int, trained: int | None) -> int:
    """The context to load with: what was asked, else the default; never beyond what the model was trained for."""
    n_ctx = requested if requested and requested > 0 else default
    return min(n_ctx, trained) if trained else n_ctx


def expired(entry_active: int, keep_alive: float, idle_for: float) -> bool:
    return entry_active == 0 and not math.isinf(keep_alive) and idle_for >= keep_alive
