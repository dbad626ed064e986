"""Where a load put things, read from llama.cpp's own load report (pure; no llama.cpp import).

llama.cpp says, while loading, which device each layer was assigned to ("load_tensors: layer 7 assigned to device
CUDA0, is_swa = 1"), how many layers it offloaded ("offloaded 19/19 layers to GPU") and the size of every buffer it
allocated, per device ("CUDA0 model buffer size = 235.16 MiB", "CPU KV buffer size = 12.00 MiB", "CUDA0 compute
buffer size = ..."). These are the real numbers; nothing here estimates.

When a load fails because a buffer could not be allocated, the same log says on which device and how big it was
(`parse_oom`): the scheduler then knows to try a smaller plan rather than another backend.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_LAYER = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
# "LoRA": buffers of LoRA adapters (runner/adapters.py), kept beside the layers they adapt.
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|RS|LoRA) buffer size =\s*([\d.]+) MiB")
_HOST_SUFFIXES = ("_Mapped", "_REPACK", "_Host")
MIB = 1 << 20


def device_of(buffer_name: str) -> str:
    """Buffer names carry a kind suffix ("CPU_Mapped", "CUDA_Host"); the device is what comes before it.
    A host buffer of a GPU backend ("CUDA_Host") lives in system memory, so it counts as CPU."""
    for suffix in _HOST_SUFFIXES:
        if buffer_name.endswith(suffix):
            base = buffer_name[: -len(suffix)]
            return "CPU" if suffix == "_Host" or base == "CPU" else base
    return buffer_name


# ggml's GPU backends name their devices with these; anything else (CPU, AMX, BLAS, ...) is host memory.
_GPU_PREFIXES = ("CUDA", "ROCm", "HIP", "Vulkan", "Metal", "MTL", "SYCL", "OpenCL", "CANN", "MUSA", "WebGPU")


def is_gpu_device(name: str) -> bool:
    """True for a GPU's device name ("CUDA0", "Vulkan1"); the CPU's extra buffer types ("AMX") are not GPUs."""
    return name.startswith(_GPU_PREFIXES)


@dataclass(frozen=True, slots=True)
class LoadReport:
    layers: dict[str, int] = field(default_factory=dict)  # device -> layers assigned to it
    offloaded: tuple[int, int] | None = None  # (layers offloaded, layers in the model), as llama.cpp counts
    buffers: dict[str, dict[str, int]] = field(default_factory=dict)  # device -> kind (model/KV/compute) -> bytes

    @property
    def layers_total(self) -> int:
        if self.layers:
            return sum(self.layers.values())
        return self.offloaded[1] if self.offloaded else 0

    @property
    def layers_on_gpu(self) -> int:
        if self.layers:
            return sum(n for device, n in self.layers.items() if is_gpu_device(device))
        return self.offloaded[0] if self.offloaded else 0

    @property
    def verified(self) -> bool:
        """True when llama.cpp reported per-layer devices (and, with GPUs, its own offload count agrees)."""
        if not self.layers:
            return False
        return self.offloaded is None or self.offloaded[0] == self.layers_on_gpu

    def bytes_on(self, device: str) -> int:
        return sum(self.buffers.get(device, {}).values())

    def to_json(self) -> dict[str, Any]:
        devices = sorted(set(self.layers) | set(self.buffers), key=lambda d: (not is_gpu_device(d), d))
        return {
            "layers_on_gpu": self.layers_on_gpu,
            "layers_total": self.layers_total,
            "verified": self.verified,
            "devices": [
                {"name": d, "layers": self.layers.get(d, 0), "buffers": dict(self.buffers.get(d, {}))}
                for d in devices
            ],
        }


def parse_load_log(text: str) -> LoadReport:
    layers: Counter[str] = Counter()
    seen: set[int] = set()
    offloaded = None
    buffers: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        if match := _LAYER.search(line):
            index = int(match.group(1))
            if index not in seen:  # a model loaded twice in one log counts once
                seen.add(index)
                layers[match.group(2)] += 1
        elif match := _OFFLOADED.search(line):
            offloaded = (int(match.group(1)), int(match.group(2)))
        elif match := _BUFFER.search(line):
            device = device_of(match.group(1))
            kind = match.group(2)
            size = round(float(match.group(3)) * MIB)
            per_device = buffers.setdefault(device, {})
            per_device[kind] = per_device.get(kind, 0) + size
    return LoadReport(layers=dict(layers), offloaded=offloaded, buffers=buffers)


# What llama.cpp prints when a buffer cannot be allocated. ggml logs the failed allocation itself (with a size), the
# allocator that asked for it names the buffer type (with the exact size), and llama.cpp adds what it was loading.
# One failure, as a CUDA build prints it:
#   ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4403.48 MiB on device 0: cudaMalloc failed: out of memory
#   alloc_tensor_range: failed to allocate CUDA0 buffer of size 4617387008
#   llama_model_load: error loading model: unable to allocate CUDA0 buffer
# ggml-cuda.cu is also the ROCm and MUSA backends, which name device 0 "ROCm0" / "MUSA0" but print the same line.
_CUDA_MALLOC = re.compile(r"allocating ([\d.]+) MiB on device (\d+): cudaMalloc failed")
_CUDA_FAMILY = re.compile(r"(?:CUDA|ROCm|MUSA)(\d+)")
# ggml.c, for every CPU buffer (it says MB; it divides by 1024 * 1024), then the CPU (or AMX) buffer type, exactly.
_HOST_MALLOC = re.compile(r"insufficient memory \(attempted to allocate\s*([\d.]+) MB\)")
_HOST_BUFFER = re.compile(r"_(?:cpu|amx)_buffer_type_alloc_buffer: failed to allocate buffer of size (\d+)")
# ggml-vulkan.cpp: an exact size but no device; the allocator's line after it names the device.
_VULKAN_MALLOC = re.compile(r"Device memory allocation of size (\d+) failed")
# ggml-alloc.c (alloc_tensor_range for weights and KV cache, the graph allocator for compute buffers).
_NAMED_ALLOC = re.compile(r"failed to allocate (\S+) buffer of size (\d+)")
# llama-model.cpp; older builds said "unable to allocate backend buffer", which names no device.
_MODEL_ALLOC = re.compile(r"unable to allocate (?!backend )(\S+) buffer")
# llama.cpp's own words, with neither device nor size: the KV cache, the compute buffers (graph_reserve, "compute pp
# buffers" from the context constructor), the old model loader.
_ANY_ALLOC = re.compile(
    r"failed to allocate (?:buffer for kv cache|compute (?:\w+ )?buffers)|unable to allocate backend buffer"
)
# "%.2f MiB" is the size rounded to 0.01 MiB: an exact size within that of it is the same allocation.
_MIB_ROUNDING = MIB // 100


@dataclass(slots=True)
class _Failure:
    """One failed allocation as the lines about it are folded in (each line may add the device or a better size)."""

    device: str | None = None
    requested: int | None = None
    exact: bool = False  # `requested` is a byte count, not MiB rounded to two decimals
    cuda_index: int | None = None  # `device` came from "device N" of ggml-cuda.cu: CUDA, ROCm or MUSA device N


def _failure_in(line: str) -> _Failure | None:
    if match := _NAMED_ALLOC.search(line):
        return _Failure(device_of(match.group(1)), int(match.group(2)), exact=True)
    if match := _CUDA_MALLOC.search(line):
        index = int(match.group(2))
        return _Failure(f"CUDA{index}", round(float(match.group(1)) * MIB), cuda_index=index)
    if match := _HOST_MALLOC.search(line):
        return _Failure("CPU", round(float(match.group(1)) * MIB))
    if match := _HOST_BUFFER.search(line):
        return _Failure("CPU", int(match.group(1)), exact=True)
    if match := _VULKAN_MALLOC.search(line):
        return _Failure(None, int(match.group(1)), exact=True)
    if match := _MODEL_ALLOC.search(line):
        return _Failure(device_of(match.group(1)))
    if _ANY_ALLOC.search(line):
        return _Failure()
    return None


def _same_device(first: _Failure, later: _Failure) -> bool:
    if first.device is None or later.device is None or first.device == later.device:
        return True
    if first.cuda_index is not None and (match := _CUDA_FAMILY.fullmatch(later.device)):
        return int(match.group(1)) == first.cuda_index
    return False


def _same_size(first: _Failure, later: _Failure) -> bool:
    if first.requested is None or later.requested is None:
        return True
    if first.exact and later.exact:
        return first.requested == later.requested
    return abs(first.requested - later.requested) <= _MIB_ROUNDING


def _first_failure(text: str) -> _Failure | None:
    """The first failed allocation in a load log, completed from the lines that describe the same failure."""
    failure: _Failure | None = None
    for line in text.splitlines():
        later = _failure_in(line)
        if later is None:
            continue
        if failure is None:
            failure = later
            continue
        if not (_same_device(failure, later) and _same_size(failure, later)):
            break  # a different allocation (another device, another size): the first one is the answer
        if later.device is not None and (failure.device is None or failure.cuda_index is not None):
            failure.device, failure.cuda_index = later.device, None
        if later.requested is not None and (failure.requested is None or (later.exact and not failure.exact)):
            failure.requested, failure.exact = later.requested, later.exact
    return failure


def parse_oom(log_text: str) -> tuple[str, int] | None:
    """(device, bytes) of the first allocation llama.cpp reports as failed in a load log, or None when the log
    names no failed allocation with both a device and a size. `device` is llama.cpp's name ("CUDA0", "CPU";
    a GPU backend's host buffer counts as "CPU"); `bytes` is exact where llama.cpp printed a byte count, else the MiB
    it printed, converted."""
    failure = _first_failure(log_text)
    if failure is None or failure.device is None or failure.requested is None:
        return None
    return failure.device, failure.requested


def allocation_failed(log_text: str) -> bool:
    """True when the log reports any failed allocation, including llama.cpp's messages that name neither device
    nor size ("failed to allocate buffer for kv cache", "failed to allocate compute buffers")."""
    return _first_failure(log_text) is not None
