"""A fake machine for the hardware probes: files, `ldconfig -p`, loadable fake libraries, NVML, sysctl.

`FakeSystem` answers the `offload.hardware.system.System` protocol from plain dicts. The fake libraries
(`FakeLibCuda`, `FakeLibCudart`, `FakeVulkan`) expose the same C functions the probes call through ctypes
and write their answers into the ctypes pointers and buffers they are given, so the probes' ctypes code
runs unchanged. The Vulkan structs are packed here from the layout in the Vulkan headers, independently
of the probe's own constants. Ready-made machines are at the bottom.
"""

from __future__ import annotations

import ctypes
import fnmatch
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

GIB = 1024**3
MIB = 1024**2


# ---------------------------------------------------------------- the machine


@dataclass
class FakeSystem:
    files: dict[str, str] = field(default_factory=dict)
    libraries: dict[str, Any] = field(default_factory=dict)  # path -> fake library; the path exists as a file
    ldconfig_entries: dict[str, str] | None = field(default_factory=dict)  # soname -> path; None: cannot run
    environ: Mapping[str, str] = field(default_factory=dict)
    platform: str = "linux"
    machine: str = "x86_64"
    nvml_module: Any = None  # None: `import pynvml` fails
    sysctls: dict[str, str] = field(default_factory=dict)
    cpus: int = 8
    loaded: list[str] = field(default_factory=list)  # every path load_library was asked for

    def _paths(self) -> set[str]:
        paths = set(self.files) | set(self.libraries)
        for path in list(paths):
            parts = path.split("/")
            paths.update("/".join(parts[:i]) for i in range(2, len(parts)))
        return paths

    def read_text(self, path: str) -> str | None:
        return self.files.get(path)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted({p[len(prefix) :].split("/")[0] for p in self._paths() if p.startswith(prefix)})

    def exists(self, path: str) -> bool:
        return path.rstrip("/") in self._paths()

    def glob(self, pattern: str) -> list[str]:
        wanted = pattern.split("/")
        return sorted(
            path
            for path in self._paths()
            if len(path.split("/")) == len(wanted)
            and all(fnmatch.fnmatchcase(part, want) for part, want in zip(path.split("/"), wanted, strict=True))
        )

    def ldconfig(self) -> str | None:
        if self.ldconfig_entries is None:
            return None
        lines = [f"{len(self.ldconfig_entries)} libs found in cache `/etc/ld.so.cache'"]
        lines += [f"\t{soname} (libc6,x86-64) => {path}" for soname, path in self.ldconfig_entries.items()]
        return "\n".join(lines) + "\n"

    def load_library(self, path: str) -> Any:
        self.loaded.append(path)
        if path not in self.libraries:
            raise OSError(f"{path}: cannot open shared object file: No such file or directory")
        library = self.libraries[path]
        if isinstance(library, OSError):
            raise library
        return library

    def nvml(self) -> Any:
        if self.nvml_module is None:
            raise ImportError("No module named 'pynvml'")
        return self.nvml_module

    def sysctl(self, name: str) -> str | None:
        return self.sysctls.get(name)

    def usable_cpus(self) -> int:
        return self.cpus


# ---------------------------------------------------------------- NVIDIA


@dataclass(frozen=True)
class FakeGpu:
    name: str
    uuid: str
    total: int
    free: int
    compute: tuple[int, int] = (9, 0)


H100 = FakeGpu("NVIDIA H100 80GB HBM3", "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6", 80 * GIB, 79 * GIB, (9, 0))
A100 = FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-1d2e3f40-aaaa-bbbb-cccc-000000000001", 40 * GIB, 39 * GIB, (8, 0))
RTX4060 = FakeGpu(
    "NVIDIA GeForce RTX 4060 Laptop GPU", "GPU-4060aaaa-0000-1111-2222-333344445555", 8 * GIB, 7 * GIB, (8, 9)
)


class FakeNVMLError(Exception):
    pass


class FakeNvml:
    """The nvml* functions of pynvml that the probe calls."""

    def __init__(self, gpus: Sequence[FakeGpu], driver: str = "550.54.14", init_error: str | None = None) -> None:
        self.gpus = list(gpus)
        self.driver = driver
        self.init_error = init_error
        self.initialised = False

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if not self.initialised:
            raise FakeNVMLError("Uninitialized")
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.gpus[handle].name

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpus[handle].uuid

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        gpu = self.gpus[handle]
        return SimpleNamespace(total=gpu.total, free=gpu.free, used=gpu.total - gpu.free)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.gpus[handle].compute


class FakeLibCuda:
    """libcuda.so.1: cuDriverGetVersion, and the driver API the probe uses when NVML is missing."""

    def __init__(self, driver_version: int = 12040, gpus: Sequence[FakeGpu] = (), init_result: int = 0) -> None:
        self.driver_version = driver_version
        self.gpus = list(gpus)
        self.init_result = init_result

    def cuDriverGetVersion(self, version: Any) -> int:
        version.contents.value = self.driver_version
        return 0

    def cuInit(self, flags: int) -> int:
        return self.init_result

    def cuDeviceGetCount(self, count: Any) -> int:
        count.contents.value = len(self.gpus)
        return 0

    def cuDeviceGet(self, device: Any, ordinal: int) -> int:
        device.contents.value = ordinal
        return 0

    def cuDeviceGetName(self, buffer: Any, size: int, device: ctypes.c_int) -> int:
        buffer.value = self.gpus[device.value].name.encode()[: size - 1]
        return 0

    def cuDeviceTotalMem_v2(self, total: Any, device: ctypes.c_int) -> int:
        total.contents.value = self.gpus[device.value].total
        return 0

    def cuDeviceGetAttribute(self, value: Any, attribute: int, device: ctypes.c_int) -> int:
        major, minor = self.gpus[device.value].compute
        value.contents.value = {75: major, 76: minor}[attribute]
        return 0

    def cuDeviceGetUuid(self, raw: Any, device: ctypes.c_int) -> int:
        data = bytes.fromhex(self.gpus[device.value].uuid.removeprefix("GPU-").replace("-", ""))
        ctypes.memmove(raw, data, 16)
        return 0


class FakeLibCudart:
    def __init__(self, runtime_version: int) -> None:
        self.runtime_version = runtime_version

    def cudaRuntimeGetVersion(self, version: Any) -> int:
        version.contents.value = self.runtime_version
        return 0


# ---------------------------------------------------------------- Vulkan

VK_PHYSICAL_DEVICE_TYPE = {"integrated": 1, "discrete": 2, "virtual": 3, "cpu": 4}
DEVICE_LOCAL = 0x1
MEMORY_BUDGET_EXTENSION = "VK_EXT_memory_budget"


def vk_version(major: int, minor: int, patch: int) -> int:
    return (major << 22) | (minor << 12) | patch


@dataclass(frozen=True)
class FakeVkDevice:
    name: str
    kind: str  # "integrated" | "discrete" | "virtual" | "cpu"
    heaps: tuple[tuple[int, int], ...]  # (size, flags)
    vendor_id: int = 0x1002
    api: tuple[int, int, int] = (1, 3, 275)
    driver_version: int = vk_version(23, 3, 1)
    budget: tuple[tuple[int, int], ...] | None = None  # (heapBudget, heapUsage) per heap; None: no extension

    def properties(self) -> bytes:
        # apiVersion, driverVersion, vendorID, deviceID, deviceType, deviceName[256], pipelineCacheUUID[16], ...
        head = struct.pack(
            "<IIIIi256s16s",
            vk_version(*self.api),
            self.driver_version,
            self.vendor_id,
            0x744C,
            VK_PHYSICAL_DEVICE_TYPE[self.kind],
            self.name.encode(),
            b"\x11" * 16,
        )
        return head + b"\xee" * 600  # VkPhysicalDeviceLimits and the rest: noise the probe must not read

    def memory_properties(self) -> bytes:
        # memoryTypeCount, memoryTypes[32] {propertyFlags, heapIndex}, memoryHeapCount (ends at 264, 8-aligned),
        # memoryHeaps[16] {VkDeviceSize size, flags, 4 bytes padding}
        types = struct.pack("<I", 1) + struct.pack("<II", 0x1, 0) + b"\0" * 8 * 31
        heaps = b"".join(struct.pack("<QI4x", size, flags) for size, flags in self.heaps)
        heaps += b"\0" * 16 * (16 - len(self.heaps))
        return types + struct.pack("<I", len(self.heaps)) + heaps

    def extensions(self) -> list[str]:
        return ["VK_KHR_swapchain", *([MEMORY_BUDGET_EXTENSION] if self.budget is not None else [])]


class FakeVulkan:
    """libvulkan.so.1: an instance, its physical devices, and their properties, written as the loader would."""

    def __init__(self, devices: Sequence[FakeVkDevice], create_result: int = 0) -> None:
        self.devices = list(devices)
        self.create_result = create_result
        self.instances_alive = 0

    def _device(self, handle: ctypes.c_void_p) -> FakeVkDevice:
        return self.devices[(handle.value or 0) - 0x1000]

    def vkCreateInstance(self, info: Any, allocator: None, instance: Any) -> int:
        assert info.contents.sType == 1  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
        if self.create_result != 0:
            return self.create_result
        instance.contents.value = 0xABC
        self.instances_alive += 1
        return 0

    def vkDestroyInstance(self, instance: ctypes.c_void_p, allocator: None) -> None:
        if instance.value:
            self.instances_alive -= 1

    def vkEnumeratePhysicalDevices(self, instance: ctypes.c_void_p, count: Any, handles: Any) -> int:
        assert instance.value == 0xABC
        if handles is None:
            count.contents.value = len(self.devices)
            return 0
        written = min(count.contents.value, len(self.devices))
        for i in range(written):
            handles[i] = 0x1000 + i
        count.contents.value = written
        return 0 if written == len(self.devices) else 5  # VK_INCOMPLETE

    def vkGetPhysicalDeviceProperties(self, handle: ctypes.c_void_p, buffer: Any) -> None:
        data = self._device(handle).properties()
        assert len(buffer) >= len(data)
        ctypes.memmove(buffer, data, len(data))

    def vkGetPhysicalDeviceMemoryProperties(self, handle: ctypes.c_void_p, buffer: Any) -> None:
        data = self._device(handle).memory_properties()
        assert len(buffer) >= len(data) == 520
        ctypes.memmove(buffer, data, len(data))

    def vkEnumerateDeviceExtensionProperties(self, handle: ctypes.c_void_p, layer: None, count: Any, out: Any) -> int:
        names = self._device(handle).extensions()
        if out is None:
            count.contents.value = len(names)
            return 0
        data = b"".join(struct.pack("<256sI", name.encode(), 1) for name in names[: count.contents.value])
        ctypes.memmove(out, data, len(data))
        return 0

    def vkGetPhysicalDeviceMemoryProperties2(self, handle: ctypes.c_void_p, buffer: Any) -> None:
        device = self._device(handle)
        assert device.budget is not None
        s_type, next_address = struct.unpack_from("<I4xQ", bytes(buffer))
        assert s_type == 1000059006
        assert struct.unpack_from("<I", ctypes.string_at(next_address, 4))[0] == 1000237000
        memory = device.memory_properties()
        ctypes.memmove(ctypes.addressof(buffer) + 16, memory, len(memory))
        budgets = [b for b, _u in device.budget] + [0] * (16 - len(device.budget))
        usages = [u for _b, u in device.budget] + [0] * (16 - len(device.budget))
        data = struct.pack("<16Q16Q", *budgets, *usages)
        ctypes.memmove(next_address + 16, data, len(data))


# ---------------------------------------------------------------- ready-made machines

X86_CPUINFO = "".join(
    f"processor\t: {n}\nmodel name\t: Fake Xeon @ 3.0GHz\nphysical id\t: 0\ncore id\t\t: {n % 4}\n"
    "flags\t\t: fpu sse2 sse4_2 avx avx2 f16c fma\n\n"
    for n in range(8)
)
MEMINFO = "MemTotal:       65830000 kB\nMemFree:         1000000 kB\nMemAvailable:   50000000 kB\n"
LINUX_FILES = {"/proc/cpuinfo": X86_CPUINFO, "/proc/meminfo": MEMINFO}
MULTIARCH = "/usr/lib/x86_64-linux-gnu"


def linux(
    libraries: dict[str, Any] | None = None,
    *,
    ldconfig: bool = True,
    files: dict[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    nvml: Any = None,
) -> FakeSystem:
    """A Linux x86_64 machine; with ldconfig=True every library is in the ldconfig cache."""
    libraries = libraries or {}
    entries = {path.rsplit("/", 1)[1]: path for path in libraries} if ldconfig else None
    return FakeSystem(
        files={**LINUX_FILES, **(files or {})},
        libraries=libraries,
        ldconfig_entries=entries,
        environ=environ or {},
        nvml_module=nvml,
    )


def cpu_only() -> FakeSystem:
    return linux()


def nvidia_h100(environ: Mapping[str, str] | None = None, gpus: Sequence[FakeGpu] = (H100,)) -> FakeSystem:
    """A Debian/Ubuntu GPU server: the driver's libraries in multiarch, the CUDA 12.4 toolkit."""
    return linux(
        {
            f"{MULTIARCH}/libnvidia-ml.so.1": object(),
            f"{MULTIARCH}/libcuda.so.1": FakeLibCuda(12040),
            "/usr/local/cuda-12.4/lib64/libcudart.so.12": FakeLibCudart(12040),
        },
        environ=environ,
        nvml=FakeNvml(gpus, driver="550.54.14"),
    )


def nvml_without_libcuda() -> FakeSystem:
    """NVML sees the GPU (nvidia-smi would list it), but libcuda.so.1 is missing: 'detected' yet unusable."""
    return linux({f"{MULTIARCH}/libnvidia-ml.so.1": object()}, nvml=FakeNvml([H100]))


def container_with_only_libcuda() -> FakeSystem:
    """A container that mounts libcuda but not libnvidia-ml (and no nvidia-smi): the driver API lists the GPU."""
    return linux(
        {f"{MULTIARCH}/libcuda.so.1": FakeLibCuda(12080, gpus=[H100])},
        nvml=FakeNvml([H100], init_error="NVML Shared Library Not Found"),
    )


def old_driver() -> FakeSystem:
    """Driver 520 (CUDA 11.8) under a CUDA 12.4 runtime."""
    return linux(
        {
            f"{MULTIARCH}/libnvidia-ml.so.1": object(),
            f"{MULTIARCH}/libcuda.so.1": FakeLibCuda(11080),
            "/usr/local/cuda-12.4/lib64/libcudart.so.12": FakeLibCudart(12040),
        },
        nvml=FakeNvml([A100], driver="520.61.05"),
    )


def nixos_nvidia() -> FakeSystem:
    """NixOS: the driver lives in /run/opengl-driver/lib and no ldconfig cache knows it."""
    return linux(
        {
            "/run/opengl-driver/lib/libnvidia-ml.so.1": object(),
            "/run/opengl-driver/lib/libcuda.so.1": FakeLibCuda(12040),
        },
        ldconfig=False,
        nvml=FakeNvml([RTX4060]),
    )


RX7900 = FakeVkDevice(
    "AMD Radeon RX 7900 XTX (RADV NAVI31)",
    "discrete",
    heaps=((24 * GIB - 256 * MIB, DEVICE_LOCAL), (32 * GIB, 0), (256 * MIB, DEVICE_LOCAL)),
    budget=((23 * GIB, 1 * GIB), (30 * GIB, 2 * GIB), (256 * MIB, 56 * MIB)),
)
LLVMPIPE = FakeVkDevice("llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", heaps=((2 * GIB, DEVICE_LOCAL),), vendor_id=0x10005)


def fedora_with_vulkan() -> FakeSystem:
    """Fedora: libvulkan in /usr/lib64, ldconfig cannot run (a sandbox), a discrete Radeon and llvmpipe."""
    return linux({"/usr/lib64/libvulkan.so.1": FakeVulkan([RX7900, LLVMPIPE])}, ldconfig=False)


def vulkan_zero_vram() -> FakeSystem:
    """A driver whose only heap lacks the DEVICE_LOCAL bit: 0 bytes of VRAM, so the device is rejected."""
    broken = FakeVkDevice("Broken GPU", "discrete", heaps=((8 * GIB, 0),))
    return linux({f"{MULTIARCH}/libvulkan.so.1": FakeVulkan([broken])})


def laptop_with_igpu() -> FakeSystem:
    """An Intel iGPU (integrated, 'VRAM' is shared RAM) and an NVIDIA laptop dGPU, both through Vulkan."""
    intel = FakeVkDevice(
        "Intel(R) UHD Graphics 770 (ADL-S GT1)", "integrated", heaps=((31 * GIB, DEVICE_LOCAL),), vendor_id=0x8086
    )
    nvidia = FakeVkDevice(
        "NVIDIA GeForce RTX 4060 Laptop GPU",
        "discrete",
        heaps=((8 * GIB, DEVICE_LOCAL), (31 * GIB, 0)),
        vendor_id=0x10DE,
        driver_version=(550 << 22) | (54 << 14),
    )
    return linux({f"{MULTIARCH}/libvulkan.so.1": FakeVulkan([intel, nvidia])})


def amd_sysfs(
    cards: Sequence[tuple[str, int, int]] = (("AMD Radeon RX 7900 XTX", 24 * GIB, 1 * GIB),),
) -> dict[str, str]:
    """amdgpu sysfs and the KFD topology: node 0 the CPU, then one node per card (gfx1100), renderD128 up."""
    files = {
        "/sys/class/drm/card0-DP-1/status": "connected\n",
        "/sys/class/kfd/kfd/topology/nodes/0/properties": "cpu_cores_count 16\nsimd_count 0\ngfx_target_version 0\n",
    }
    for i, (name, total, used) in enumerate(cards):
        device = f"/sys/class/drm/card{i}/device"
        files |= {
            f"{device}/vendor": "0x1002\n",
            f"{device}/device": "0x744c\n",
            f"{device}/product_name": f"{name}\n",
            f"{device}/mem_info_vram_total": f"{total}\n",
            f"{device}/mem_info_vram_used": f"{used}\n",
            f"{device}/drm/renderD{128 + i}/dev": f"226:{128 + i}\n",
            f"/sys/class/kfd/kfd/topology/nodes/{i + 1}/properties": (
                f"simd_count 192\ngfx_target_version 110000\ndrm_render_minor {128 + i}\nunique_id {1000 + i}\n"
            ),
        }
    return files


def amd_gfx1100(environ: Mapping[str, str] | None = None) -> FakeSystem:
    return linux({"/opt/rocm/lib/libamdhip64.so.6": object()}, files=amd_sysfs(), environ=environ)


def apple_m2() -> FakeSystem:
    return FakeSystem(
        platform="darwin",
        machine="arm64",
        sysctls={
            "hw.memsize": str(16 * GIB),
            "machdep.cpu.brand_string": "Apple M2",
            "hw.physicalcpu": "8",
            "hw.optional.arm.FEAT_DotProd": "1",
            "hw.optional.arm.FEAT_I8MM": "0",
            "hw.pagesize": "16384",
            "vm.page_free_count": "100000",
        },
    )
