"""choose(): the order to try variants in, on machines described by HardwareSnapshot records."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.backends.select import choose
from offload.backends.variants import Variant
from offload.hardware.devices import CpuInfo, Device, HardwareSnapshot

GIB = 1 << 30
CPU = CpuInfo(name="x86", cores=8, threads=16, flags=("avx2",), memory_total=64 * GIB, memory_available=48 * GIB)


def machine(*devices: Device) -> HardwareSnapshot:
    return HardwareSnapshot(devices=devices, cpu=CPU, libraries=(), rejections=(), cuda_driver_version=None)


H100 = Device("cuda:0", "cuda", "NVIDIA H100", 80 * GIB, 79 * GIB, compute="9.0")
RX7900_ROCM = Device("rocm:0", "rocm", "Radeon RX 7900 XTX", 24 * GIB, 23 * GIB, compute="gfx1100")
RX7900_VULKAN = Device("vulkan:0", "vulkan", "AMD Radeon RX 7900 XTX (RADV NAVI31)", 24 * GIB, None)
CUDA_MACHINE = machine(H100)
AMD_MACHINE = machine(RX7900_ROCM, RX7900_VULKAN)
CPU_MACHINE = machine()


def variant(name: str, source: str = "installed", devices: tuple[str, ...] = (), problem: str | None = None) -> Variant:
    path = None if source == "venv" else Path("/home/u/.offload/backends/linux-x86_64") / name
    gpu = name != "cpu"
    return Variant(name, path, source, gpu, (*devices, "CPU"), source == "installed" and problem is None, problem)


CUDA = variant("cuda", devices=("CUDA0",))
ROCM = variant("rocm", devices=("ROCm0",))
VULKAN = variant("vulkan", devices=("Vulkan0",))
CPU_INSTALLED = variant("cpu")
CPU_VENV = variant("cpu", "venv")
CUDA_TAMPERED = variant("cuda", devices=(), problem="verification failed: llama_cpp/lib/libggml-cuda.so has sha256 ...")
CUDA_BLIND = variant("cuda", devices=())  # the library loads but sees no GPU (e.g. driver too old)
CUDA_CPU_ONLY = variant("cuda", problem="built without CUDA support: the library registers only CPU")


@pytest.mark.parametrize(
    ("snapshot", "variants", "requested", "expected", "forced", "reason", "skipped"),
    [
        pytest.param(
            CUDA_MACHINE, [CPU_VENV, CUDA], "auto", [CUDA, CPU_VENV], False, "auto: try cuda (installed: CUDA0)", [],
            id="cuda-machine-cuda-and-cpu",
        ),
        pytest.param(
            CUDA_MACHINE, [CPU_VENV], "auto", [CPU_VENV], False, "auto: try cpu (venv)",
            ["1 cuda device(s) found (NVIDIA H100) but no cuda variant is installed: offload backends install cuda"],
            id="cuda-machine-only-cpu",
        ),
        pytest.param(
            CUDA_MACHINE, [CUDA_TAMPERED, CPU_VENV], "auto", [CPU_VENV], False, "auto: try cpu (venv)",
            ["cuda variant (installed): verification failed: llama_cpp/lib/libggml-cuda.so has sha256 ..."],
            id="sha-mismatch-skipped-with-problem",
        ),
        pytest.param(
            CUDA_MACHINE, [CUDA_BLIND, CPU_VENV], "auto", [CPU_VENV], False, "auto: try cpu (venv)",
            ["cuda variant (installed) sees no cuda device (the library lists CPU)"],
            id="cuda-build-sees-no-gpu",
        ),
        pytest.param(
            CUDA_MACHINE, [CUDA_CPU_ONLY, CPU_VENV], "auto", [CPU_VENV], False, "auto: try cpu (venv)",
            ["cuda variant (installed): built without CUDA support: the library registers only CPU"],
            id="cuda-dir-holding-a-cpu-build",
        ),
        pytest.param(
            AMD_MACHINE, [CPU_VENV, VULKAN, ROCM, CUDA], "auto", [ROCM, VULKAN, CPU_VENV], False,
            "auto: try rocm (installed: ROCm0), then vulkan (installed: Vulkan0), then cpu (venv)", [],
            id="amd-rocm-then-vulkan-then-cpu",
        ),
        pytest.param(
            CPU_MACHINE, [CUDA, VULKAN, CPU_VENV, CPU_INSTALLED], "auto", [CPU_INSTALLED, CPU_VENV], False,
            "auto: try cpu (installed), then cpu (venv)", [],
            id="no-gpu-installed-cpu-before-venv",
        ),
        pytest.param(
            AMD_MACHINE, [VULKAN, CPU_VENV], "vulkan", [VULKAN], True, "backend vulkan was requested: try vulkan", [],
            id="forced-vulkan-present",
        ),
        pytest.param(
            CUDA_MACHINE, [CUDA, CPU_VENV], "vulkan", [], True,
            "backend vulkan was requested but cannot be used: no vulkan variant is installed "
            "(offload backends install vulkan, or llm.backend auto)",
            [],
            id="forced-vulkan-absent-is-an-error",
        ),
        pytest.param(
            CUDA_MACHINE, [CUDA_TAMPERED, CPU_VENV], "cuda", [], True,
            "backend cuda was requested but cannot be used: cuda variant (installed): verification failed",
            ["cuda variant (installed): verification failed: llama_cpp/lib/libggml-cuda.so has sha256 ..."],
            id="forced-cuda-tampered-no-silent-fallback",
        ),
        pytest.param(
            CUDA_MACHINE, [CUDA, CPU_VENV], "CPU", [CPU_VENV], True, "backend cpu was requested: try cpu (venv)", [],
            id="forced-cpu-on-a-gpu-machine",
        ),
        pytest.param(
            CUDA_MACHINE, [CUDA], "opencl", [], True, "unknown backend 'opencl'", [], id="unknown-backend",
        ),
        pytest.param(
            CPU_MACHINE, [variant("cpu", "venv", problem="loading llama_cpp from the venv failed: ImportError")],
            "auto", [], False, "no usable backend variant: cpu variant (venv): loading llama_cpp", None,
            id="nothing-usable",
        ),
    ],
)  # fmt: skip
def test_choose(
    snapshot: HardwareSnapshot,
    variants: list[Variant],
    requested: str,
    expected: list[Variant],
    forced: bool,
    reason: str,
    skipped: list[str] | None,
) -> None:
    choice = choose(snapshot, variants, requested)
    assert list(choice.variants) == expected
    assert choice.ok == bool(expected)
    assert choice.forced is forced
    assert reason in choice.reason
    if skipped is not None:
        assert list(choice.skipped) == skipped


def test_forced_backend_without_a_device_in_the_snapshot_trusts_the_library() -> None:
    # NVML may be missing while the CUDA build itself sees the GPU: a forced choice goes by the library.
    assert choose(CPU_MACHINE, [CUDA], "cuda").variants == (CUDA,)
