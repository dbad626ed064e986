"""NVIDIA GPUs: NVML (nvidia-ml-py) for the devices, libcuda by ctypes for the driver's CUDA version.

NVML does not initialise CUDA (fast, no context) and ignores CUDA_VISIBLE_DEVICES, so the variable is applied
here the way the CUDA runtime applies it. A GPU NVML lists is only a device if libcuda loads and its driver is
new enough for the CUDA runtime on the machine: otherwise it is rejected, with the reason and the fix. Without
NVML (a container that mounts only libcuda) the devices come from the driver API instead, which honours
CUDA_VISIBLE_DEVICES itself but cannot say how much memory is free without a context.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from offload.hardware.devices import Device, Library, ProbeResult, Problem, Rejection, cuda_version_text
from offload.hardware.system import System

PROBE = "nvidia"

# The first Linux driver release that supports each CUDA version (NVIDIA's CUDA toolkit release notes, table 3).
# Versions as cuDriverGetVersion encodes them: 1000 * major + 10 * minor.
CUDA_MINIMUM_DRIVER: tuple[tuple[int, str], ...] = (
    (11000, "450.36.06"),
    (11010, "455.23"),
    (11020, "460.27.03"),
    (11030, "465.19.01"),
    (11040, "470.42.01"),
    (11050, "495.29.05"),
    (11060, "510.39.01"),
    (11070, "515.43.04"),
    (11080, "520.61.05"),
    (12000, "525.60.13"),
    (12010, "530.30.02"),
    (12020, "535.54.03"),
    (12030, "545.23.06"),
    (12040, "550.54.14"),
    (12050, "555.42.02"),
    (12060, "560.28.03"),
    (12080, "570.26"),
    (12090, "575.51.03"),
    (13000, "580.65.06"),
)

LIBCUDA_FIX = (
    "libcuda.so.1 comes with the NVIDIA driver: install the driver's CUDA library (Debian/Ubuntu: libcuda1 or "
    "libnvidia-compute-<version>; Fedora: xorg-x11-drv-nvidia-cuda-libs); in a container run with --gpus all "
    "and NVIDIA_DRIVER_CAPABILITIES including compute"
)

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def minimum_driver(cuda: int) -> str | None:
    """The first driver release supporting CUDA `cuda` (e.g. 12040 -> "550.54.14"); None past the table's end."""
    for version, release in CUDA_MINIMUM_DRIVER:
        if version >= cuda - cuda % 10:
            return release
    return None


def driver_problem(driver: int, runtime: int, release: str | None = None) -> Problem | None:
    """The problem, with its fix, when the driver's CUDA version (cuDriverGetVersion) is older than the runtime's.

    A lower major version cannot run at all; a lower minor one runs only under CUDA's minor-version
    compatibility, where kernels shipped as PTX for a newer GPU fail to JIT.
    """
    if driver >= runtime:
        return None
    have = f"driver {release}" if release else "the NVIDIA driver"
    problem = f"{have} supports CUDA {cuda_version_text(driver)}; this build needs {cuda_version_text(runtime)}"
    if driver // 1000 < runtime // 1000:
        problem += ": the CUDA backend cannot start"
    else:
        problem += ": it runs only under minor-version compatibility (kernels that need a PTX JIT fail)"
    needed = minimum_driver(runtime)
    fix = f"upgrade the NVIDIA driver to >= {needed}" if needed else "upgrade the NVIDIA driver to the newest release"
    return Problem("CUDA driver", problem, fix)


def cuda_visible(value: str | None, uuids: Sequence[str | None]) -> list[int]:
    """The NVML indices of the GPUs CUDA will see, in the order CUDA numbers them.

    As the CUDA runtime reads CUDA_VISIBLE_DEVICES: unset shows all; "" hides all; entries are indices or
    (prefixes of) UUIDs "GPU-..."; parsing stops at the first entry that is invalid, unknown, ambiguous or repeated.
    """
    if value is None:
        return list(range(len(uuids)))
    order: list[int] = []
    for token in value.split(","):
        index = _match(token.strip(), uuids)
        if index is None or index in order:
            break
        order.append(index)
    return order


def _match(token: str, uuids: Sequence[str | None]) -> int | None:
    if token.isdigit():
        index = int(token)
        return index if index < len(uuids) else None
    if not token.upper().startswith("GPU-"):
        return None
    hits = [i for i, uuid in enumerate(uuids) if uuid is not None and uuid.lower().startswith(token.lower())]
    return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True, slots=True)
class NvidiaResult:
    found: ProbeResult
    driver_version: int | None  # cuDriverGetVersion
    runtime_version: int | None  # cudaRuntimeGetVersion of the libcudart found


@dataclass(frozen=True, slots=True)
class _Gpu:
    name: str
    uuid: str | None
    total: int
    free: int | None
    compute: str | None


def probe(system: System, libraries: dict[str, Library], searched: str) -> NvidiaResult:
    """Every NVIDIA GPU the CUDA backend could use; never raises."""
    rejections: list[Rejection] = []
    problems: list[Problem] = []
    driver, driver_error = _driver_version(system, libraries["cuda"], searched)
    runtime = _runtime_version(system, libraries["cudart"])

    listed = _nvml_gpus(system, libraries["nvml"])
    if isinstance(listed, str):
        nvml_error = listed
        if driver_error is not None and libraries["nvml"].path is None and libraries["cuda"].path is None:
            rejections.append(Rejection(PROBE, "driver", f"no NVIDIA driver: {driver_error}"))
            return NvidiaResult(ProbeResult(rejections=tuple(rejections)), None, runtime)
        rejections.append(Rejection(PROBE, "NVML", nvml_error))
        if driver_error is not None:
            rejections.append(Rejection(PROBE, "libcuda", driver_error))
            return NvidiaResult(ProbeResult(rejections=tuple(rejections)), None, runtime)
        # No NVML but a working libcuda: ask the driver API, which applies CUDA_VISIBLE_DEVICES itself.
        fallback = _driver_api_gpus(system, libraries["cuda"])
        if isinstance(fallback, str):
            rejections.append(Rejection(PROBE, "libcuda", fallback))
            return NvidiaResult(ProbeResult(rejections=tuple(rejections)), driver, runtime)
        visible, release = list(enumerate(fallback)), None
    else:
        gpus, release = listed
        value = system.environ.get("CUDA_VISIBLE_DEVICES")
        order = cuda_visible(value, [gpu.uuid for gpu in gpus])
        for nvml_index, gpu in enumerate(gpus):
            if nvml_index not in order:
                subject = f"{gpu.name} (NVML index {nvml_index})"
                rejections.append(Rejection(PROBE, subject, f"hidden by CUDA_VISIBLE_DEVICES={value!r}"))
        visible = [(cuda_index, gpus[nvml_index]) for cuda_index, nvml_index in enumerate(order)]

    unusable = driver_error
    if driver_error is not None and visible:
        problems.append(Problem("libcuda", driver_error, LIBCUDA_FIX))
    if unusable is None and driver is not None and runtime is not None:
        problem = driver_problem(driver, runtime, release)
        if problem is not None:
            problems.append(problem)
            if driver // 1000 < runtime // 1000:
                unusable = problem.problem

    devices: list[Device] = []
    for index, gpu in visible:
        subject = f"cuda:{index} {gpu.name}"
        if unusable is not None:
            rejections.append(Rejection(PROBE, subject, unusable))
        elif gpu.total <= 0:
            rejections.append(Rejection(PROBE, subject, "the driver reports 0 bytes of memory"))
        else:
            devices.append(
                Device(
                    id=f"cuda:{index}",
                    library="cuda",
                    name=gpu.name,
                    total_memory=gpu.total,
                    free_memory=gpu.free,
                    uuid=gpu.uuid,
                    compute=gpu.compute,
                    driver_version=release,
                    index=index,
                )
            )
    return NvidiaResult(ProbeResult(tuple(devices), tuple(rejections), tuple(problems)), driver, runtime)


def _driver_version(system: System, libcuda: Library, searched: str) -> tuple[int | None, str | None]:
    """(cuDriverGetVersion, None) or (None, why libcuda cannot be used)."""
    if libcuda.path is None:
        return None, f"{libcuda.name} not found; searched {searched}"
    try:
        lib = system.load_library(libcuda.path)
        version = ctypes.c_int(0)
        result = lib.cuDriverGetVersion(ctypes.pointer(version))
    except (OSError, AttributeError) as exc:
        return None, f"{libcuda.path} cannot be loaded: {exc}"
    if result != 0:
        return None, f"cuDriverGetVersion failed with CUDA error {result} ({libcuda.path})"
    return version.value, None


def _runtime_version(system: System, cudart: Library) -> int | None:
    if cudart.path is None:
        return None
    try:
        lib = system.load_library(cudart.path)
        version = ctypes.c_int(0)
        if lib.cudaRuntimeGetVersion(ctypes.pointer(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return version.value or None


def _nvml_gpus(system: System, library: Library) -> tuple[list[_Gpu], str | None] | str:
    """(GPUs in NVML order, driver release) or why NVML could not list them."""
    try:
        nvml = system.nvml()
    except ImportError as exc:
        return f"nvidia-ml-py is not installed ({exc})"
    if library.path is not None:
        # pynvml opens "libnvidia-ml.so.1" by name, which fails where the loader does not look (NixOS);
        # once this path is open, the loader finds it by its soname.
        try:
            system.load_library(library.path)
        except OSError as exc:
            return f"{library.path} cannot be loaded: {exc}"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_*: driver not loaded, library not found, ...
        return f"nvmlInit failed: {_text(exc)}"
    try:
        release = _str(nvml.nvmlSystemGetDriverVersion())
        gpus = [_nvml_gpu(nvml, index) for index in range(int(nvml.nvmlDeviceGetCount()))]
    except Exception as exc:
        return f"NVML failed: {_text(exc)}"
    finally:
        # Shutting down a library that already failed changes nothing.
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return gpus, release


def _nvml_gpu(nvml: Any, index: int) -> _Gpu:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        compute: str | None = f"{major}.{minor}"
    except Exception:
        compute = None
    try:
        uuid: str | None = _str(nvml.nvmlDeviceGetUUID(handle))
    except Exception:
        uuid = None
    return _Gpu(_str(nvml.nvmlDeviceGetName(handle)), uuid, int(memory.total), int(memory.free), compute)


def _driver_api_gpus(system: System, libcuda: Library) -> list[_Gpu] | str:
    """GPUs through the CUDA driver API (cuInit: slower than NVML, so only when NVML is missing)."""
    if libcuda.path is None:
        return f"{libcuda.name} not found"
    try:
        lib = system.load_library(libcuda.path)
        result = lib.cuInit(0)
        if result != 0:
            return f"cuInit failed with CUDA error {result}"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.pointer(count)) != 0:
            return "cuDeviceGetCount failed"
        gpus = []
        for ordinal in range(count.value):
            device = ctypes.c_int(0)
            if lib.cuDeviceGet(ctypes.pointer(device), ordinal) != 0:
                return f"cuDeviceGet({ordinal}) failed"
            name = ctypes.create_string_buffer(256)
            lib.cuDeviceGetName(name, 256, device)
            total = ctypes.c_size_t(0)
            lib.cuDeviceTotalMem_v2(ctypes.pointer(total), device)
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            lib.cuDeviceGetAttribute(ctypes.pointer(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
            lib.cuDeviceGetAttribute(ctypes.pointer(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
            raw = (ctypes.c_ubyte * 16)()
            uuid = _uuid(bytes(raw)) if lib.cuDeviceGetUuid(raw, device) == 0 else None
            compute = f"{major.value}.{minor.value}"
            gpus.append(_Gpu(name.value.decode(errors="replace"), uuid, total.value, None, compute))
    except (OSError, AttributeError) as exc:
        return f"the CUDA driver API failed: {exc}"
    return gpus


def _uuid(raw: bytes) -> str:
    text = raw.hex()
    return f"GPU-{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _str(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
