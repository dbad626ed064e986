"""What the rest of offload sees of the hardware: small frozen records, and the snapshot that holds them.

A probe turns the machine into `Device`s (usable accelerators), `Library`s (shared libraries found, and
where) and `Rejection`s (what it saw but could not use, and why). The scheduler, the backend choice and
`offload doctor` read only these; none of them talks to a driver.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Device:
    """One accelerator a llama.cpp backend can use. `total_memory` is never 0: a probe rejects such a device."""

    id: str  # "cuda:0", "rocm:0", "vulkan:0", "metal:0"
    library: str  # "cuda" | "rocm" | "vulkan" | "metal"
    name: str
    total_memory: int  # bytes
    free_memory: int | None  # bytes; None when the driver cannot say
    uuid: str | None = None
    compute: str | None = None  # CUDA compute capability "9.0", AMD gfx target "gfx1100", Vulkan API "1.3.275"
    driver_version: str | None = None
    integrated: bool = False
    index: int = 0  # the index the backend library will use (after CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something a probe saw and did not turn into a device (or a probe that could not run), with the reason."""

    probe: str  # "nvidia", "amd", "vulkan", "metal", "cpu", "libraries"
    subject: str  # what was rejected: a device name, a library, the probe itself
    reason: str


@dataclass(frozen=True, slots=True)
class Library:
    """A shared library looked for: `path` None means not found, and then `how` lists where it was searched."""

    name: str  # the soname looked for, e.g. "libcuda.so.1"
    path: str | None
    # "ldconfig", "debian-multiarch", "/usr/lib64", "/usr/lib", "nix", "wsl", "cuda-toolkit", "LD_LIBRARY_PATH"
    how: str


@dataclass(frozen=True, slots=True)
class Problem:
    """A fault the user can fix, and the exact fix (doctor prints both)."""

    subject: str
    problem: str
    fix: str


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe found: usable devices, what it rejected and why, and the faults it can name a fix for."""

    devices: tuple[Device, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True, slots=True)
class CpuInfo:
    name: str
    cores: int  # physical cores usable by this process
    threads: int  # logical CPUs usable by this process
    flags: tuple[str, ...]  # the SIMD features llama.cpp cares about: avx, avx2, avx512f, f16c, fma, neon, sve, ...
    memory_total: int  # bytes, capped by the cgroup limit when there is one
    memory_available: int  # bytes


@dataclass(frozen=True, slots=True)
class HardwareSnapshot:
    devices: tuple[Device, ...]  # accelerators only; the CPU is `cpu`
    cpu: CpuInfo
    libraries: tuple[Library, ...]
    rejections: tuple[Rejection, ...]
    cuda_driver_version: int | None  # cuDriverGetVersion, e.g. 12040
    cuda_runtime_version: int | None = None  # cudaRuntimeGetVersion of the libcudart found on the machine
    problems: tuple[Problem, ...] = ()

    def usable(self, library: str) -> tuple[Device, ...]:
        """The devices of one library ("cuda", "vulkan", ...), in the backend's own index order."""
        return tuple(sorted((d for d in self.devices if d.library == library), key=lambda d: d.index))

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": [asdict(device) for device in self.devices],
            "cpu": {**asdict(self.cpu), "flags": list(self.cpu.flags)},
            "libraries": [asdict(library) for library in self.libraries],
            "rejections": [asdict(rejection) for rejection in self.rejections],
            "cuda_driver_version": self.cuda_driver_version,
            "cuda_runtime_version": self.cuda_runtime_version,
            "problems": [asdict(problem) for problem in self.problems],
        }


def cuda_version_text(version: int) -> str:
    """12040 -> "12.4" (the encoding of cuDriverGetVersion and cudaRuntimeGetVersion)."""
    return f"{version // 1000}.{version % 1000 // 10}"
