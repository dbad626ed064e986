"""Where a load put things, read from llama.cpp's own load report (pure; no llama.cpp import).

llama.cpp says, while loading, which device each layer was assigned to ("load_tensors: layer 7 assigned to device
CUDA0, is_swa = 1"), how many layers it offloaded ("offloaded 19/19 layers to GPU") and the size of every buffer it
allocated, per device ("CUDA0 model buffer size = 235.16 MiB", "CPU KV buffer size = 12.00 MiB", "CUDA0 compute
buffer size = ..."). These are the real numbers; nothing here estimates.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_LAYER = re.compile(r"layer\s+(\d+) assigned to device (\S+?),")
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|RS) buffer size =\s*([\d.]+) MiB")
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
