"""Vulkan devices through libvulkan by ctypes (never `vulkaninfo`).

VRAM is the sum of the memory heaps flagged DEVICE_LOCAL; a device whose device-local heaps sum to 0 is
rejected with that reason, never reported as a 0-byte device. Integrated GPUs are flagged (their
"VRAM" is system memory). CPU renderers (llvmpipe/lavapipe) are rejected: they are not accelerators.
Free memory comes from VK_EXT_memory_budget where the driver has it, else None.

Only the leading fields of the big Vulkan structs are parsed, from buffers larger than the structs, so
no full struct definition (VkPhysicalDeviceLimits...) has to be kept in step with the headers.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Any

from offload.hardware.devices import Device, Library, ProbeResult, Rejection
from offload.hardware.system import System

PROBE = "vulkan"

VK_SUCCESS = 0
VK_INCOMPLETE = 5
VK_ERROR_INCOMPATIBLE_DRIVER = -9
_RESULTS = {
    -1: "VK_ERROR_OUT_OF_HOST_MEMORY",
    -2: "VK_ERROR_OUT_OF_DEVICE_MEMORY",
    -3: "VK_ERROR_INITIALIZATION_FAILED",
    -6: "VK_ERROR_LAYER_NOT_PRESENT",
    -7: "VK_ERROR_EXTENSION_NOT_PRESENT",
    -9: "VK_ERROR_INCOMPATIBLE_DRIVER",
}
DEVICE_TYPES = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}
VK_MEMORY_HEAP_DEVICE_LOCAL_BIT = 0x1
VK_STRUCTURE_TYPE_APPLICATION_INFO = 0
VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1
VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2 = 1000059006
VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT = 1000237000
VK_API_VERSION_1_1 = (1 << 22) | (1 << 12)
VK_MAX_MEMORY_HEAPS = 16
_VENDOR_NVIDIA = 0x10DE

# VkPhysicalDeviceProperties starts: apiVersion, driverVersion, vendorID, deviceID, deviceType, deviceName[256].
PROPERTIES_HEAD = struct.Struct("<5I256s")
PROPERTIES_BUFFER = 4096  # the whole struct is ~830 bytes
# VkPhysicalDeviceMemoryProperties: memoryTypeCount, memoryTypes[32] (flags, heapIndex), memoryHeapCount,
# then memoryHeaps[16] of (VkDeviceSize size, flags, 4 bytes padding) at offset 264 (8-byte aligned).
MEMORY_HEAP_COUNT_OFFSET = 4 + 32 * 8
MEMORY_HEAPS_OFFSET = 264
MEMORY_HEAP = struct.Struct("<QI4x")
MEMORY_PROPERTIES_SIZE = MEMORY_HEAPS_OFFSET + VK_MAX_MEMORY_HEAPS * MEMORY_HEAP.size  # 520
MEMORY_BUFFER = 1024
# VkPhysicalDeviceMemoryProperties2: sType, pNext, memoryProperties (at 16). The budget struct: sType, pNext,
# heapBudget[16], heapUsage[16] (VkDeviceSize each).
MEMORY2_PROPERTIES_OFFSET = 16
BUDGET_SIZE = 16 + 2 * VK_MAX_MEMORY_HEAPS * 8
EXTENSION_PROPERTIES = struct.Struct("<256sI")
MEMORY_BUDGET_EXTENSION = b"VK_EXT_memory_budget"


class _ApplicationInfo(ctypes.Structure):
    _fields_ = (
        ("sType", ctypes.c_int32),
        ("pNext", ctypes.c_void_p),
        ("pApplicationName", ctypes.c_char_p),
        ("applicationVersion", ctypes.c_uint32),
        ("pEngineName", ctypes.c_char_p),
        ("engineVersion", ctypes.c_uint32),
        ("apiVersion", ctypes.c_uint32),
    )


class _InstanceCreateInfo(ctypes.Structure):
    _fields_ = (
        ("sType", ctypes.c_int32),
        ("pNext", ctypes.c_void_p),
        ("flags", ctypes.c_uint32),
        ("pApplicationInfo", ctypes.POINTER(_ApplicationInfo)),
        ("enabledLayerCount", ctypes.c_uint32),
        ("ppEnabledLayerNames", ctypes.c_void_p),
        ("enabledExtensionCount", ctypes.c_uint32),
        ("ppEnabledExtensionNames", ctypes.c_void_p),
    )


@dataclass(frozen=True, slots=True)
class PhysicalDevice:
    """What the probe reads of one VkPhysicalDevice (the parsing is tested on bytes, without a driver)."""

    api_version: int
    driver_version: int
    vendor_id: int
    device_id: int
    device_type: int
    name: str
    heaps: tuple[tuple[int, int], ...]  # (size, flags) per memory heap
    budget: tuple[int, ...] | None = None  # free bytes per heap (heapBudget - heapUsage), when the driver says


def parse_properties(raw: bytes) -> tuple[int, int, int, int, int, str]:
    api, driver, vendor, device, kind, name = PROPERTIES_HEAD.unpack_from(raw)
    return api, driver, vendor, device, kind, name.split(b"\0", 1)[0].decode(errors="replace")


def parse_heaps(raw: bytes, offset: int = 0) -> tuple[tuple[int, int], ...]:
    (count,) = struct.unpack_from("<I", raw, offset + MEMORY_HEAP_COUNT_OFFSET)
    count = min(count, VK_MAX_MEMORY_HEAPS)
    return tuple(
        MEMORY_HEAP.unpack_from(raw, offset + MEMORY_HEAPS_OFFSET + i * MEMORY_HEAP.size) for i in range(count)
    )


def parse_budget(raw: bytes, heaps: int) -> tuple[int, ...]:
    budget = struct.unpack_from(f"<{VK_MAX_MEMORY_HEAPS}Q", raw, 16)
    usage = struct.unpack_from(f"<{VK_MAX_MEMORY_HEAPS}Q", raw, 16 + VK_MAX_MEMORY_HEAPS * 8)
    return tuple(max(0, budget[i] - usage[i]) for i in range(heaps))


def api_version_text(version: int) -> str:
    return f"{(version >> 22) & 0x7F}.{(version >> 12) & 0x3FF}.{version & 0xFFF}"


def driver_version_text(vendor_id: int, version: int) -> str:
    if vendor_id == _VENDOR_NVIDIA:  # NVIDIA packs 10.8.8.6 bits
        return f"{version >> 22}.{(version >> 14) & 0xFF}"
    return api_version_text(version)


def probe(system: System, libvulkan: Library, searched: str) -> ProbeResult:
    """Every Vulkan device ggml-vulkan could use; never raises."""
    if libvulkan.path is None:
        reason = f"{libvulkan.name} not found; searched {searched}"
        return ProbeResult(rejections=(Rejection(PROBE, libvulkan.name, reason),))
    try:
        lib = system.load_library(libvulkan.path)
        listed = enumerate_devices(lib)
    except (OSError, AttributeError, ValueError, struct.error) as exc:
        listed = f"{libvulkan.path}: {exc}"
    if isinstance(listed, str):
        return ProbeResult(rejections=(Rejection(PROBE, libvulkan.path, listed),))
    return ProbeResult(*devices_from(listed, system.environ.get("GGML_VK_VISIBLE_DEVICES")))


def devices_from(listed: list[PhysicalDevice], visible: str | None) -> tuple[tuple[Device, ...], tuple[Rejection, ...]]:
    """Turn physical devices into Devices and Rejections. `visible` is GGML_VK_VISIBLE_DEVICES (indices)."""
    shown = _visible(visible, len(listed))
    devices: list[Device] = []
    rejections: list[Rejection] = []
    for position, physical in enumerate(listed):
        subject = f"{physical.name} (Vulkan device {position})"
        kind = DEVICE_TYPES.get(physical.device_type, "other")
        local = [i for i, (_size, flags) in enumerate(physical.heaps) if flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT]
        total = sum(physical.heaps[i][0] for i in local)
        if position not in shown:
            rejections.append(Rejection(PROBE, subject, f"hidden by GGML_VK_VISIBLE_DEVICES={visible!r}"))
        elif kind == "cpu":
            rejections.append(Rejection(PROBE, subject, "a CPU software renderer, not an accelerator"))
        elif total <= 0:
            rejections.append(
                Rejection(PROBE, subject, f"its device-local memory heaps sum to 0 bytes ({len(physical.heaps)} heaps)")
            )
        else:
            free = sum(physical.budget[i] for i in local) if physical.budget is not None else None
            index = len(devices)
            devices.append(
                Device(
                    id=f"vulkan:{index}",
                    library="vulkan",
                    name=physical.name,
                    total_memory=total,
                    free_memory=free,
                    compute=api_version_text(physical.api_version),
                    driver_version=driver_version_text(physical.vendor_id, physical.driver_version),
                    integrated=kind == "integrated",
                    index=index,
                )
            )
    return tuple(devices), tuple(rejections)


def _visible(value: str | None, count: int) -> set[int]:
    if value is None:
        return set(range(count))
    return {int(token) for token in value.split(",") if token.strip().isdigit()}


def _result(code: int) -> str:
    return _RESULTS.get(code, f"VkResult {code}")


def enumerate_devices(lib: Any) -> list[PhysicalDevice] | str:
    """The physical devices of a fresh instance, or why there are none. `lib` is libvulkan (or a fake)."""
    app = _ApplicationInfo(
        sType=VK_STRUCTURE_TYPE_APPLICATION_INFO,
        pApplicationName=b"offload",
        pEngineName=b"offload",
        apiVersion=VK_API_VERSION_1_1,
    )
    info = _InstanceCreateInfo(sType=VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, pApplicationInfo=ctypes.pointer(app))
    instance = ctypes.c_void_p(None)
    result = lib.vkCreateInstance(ctypes.pointer(info), None, ctypes.pointer(instance))
    if result == VK_ERROR_INCOMPATIBLE_DRIVER:
        return "no Vulkan driver (ICD) is installed: vkCreateInstance returned VK_ERROR_INCOMPATIBLE_DRIVER"
    if result != VK_SUCCESS:
        return f"vkCreateInstance returned {_result(result)}"
    try:
        count = ctypes.c_uint32(0)
        result = lib.vkEnumeratePhysicalDevices(instance, ctypes.pointer(count), None)
        if result not in (VK_SUCCESS, VK_INCOMPLETE):
            return f"vkEnumeratePhysicalDevices returned {_result(result)}"
        if count.value == 0:
            return "the Vulkan driver lists no physical devices"
        handles = (ctypes.c_void_p * count.value)()
        result = lib.vkEnumeratePhysicalDevices(instance, ctypes.pointer(count), handles)
        if result not in (VK_SUCCESS, VK_INCOMPLETE):
            return f"vkEnumeratePhysicalDevices returned {_result(result)}"
        return [_read_device(lib, ctypes.c_void_p(handles[i])) for i in range(count.value)]
    finally:
        lib.vkDestroyInstance(instance, None)


def _read_device(lib: Any, handle: ctypes.c_void_p) -> PhysicalDevice:
    properties = ctypes.create_string_buffer(PROPERTIES_BUFFER)
    lib.vkGetPhysicalDeviceProperties(handle, properties)
    api, driver, vendor, device, kind, name = parse_properties(properties.raw)
    memory = ctypes.create_string_buffer(MEMORY_BUFFER)
    lib.vkGetPhysicalDeviceMemoryProperties(handle, memory)
    heaps = parse_heaps(memory.raw)
    budget = _budget(lib, handle, len(heaps)) if api >= VK_API_VERSION_1_1 else None
    return PhysicalDevice(api, driver, vendor, device, kind, name, heaps, budget)


def _budget(lib: Any, handle: ctypes.c_void_p, heaps: int) -> tuple[int, ...] | None:
    """Free bytes per heap through VK_EXT_memory_budget, or None when the device lacks the extension."""
    if not _has_extension(lib, handle, MEMORY_BUDGET_EXTENSION):
        return None
    try:
        function = lib.vkGetPhysicalDeviceMemoryProperties2
    except AttributeError:
        return None
    budget = ctypes.create_string_buffer(BUDGET_SIZE + 64)
    struct.pack_into("<I", budget, 0, VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT)
    memory = ctypes.create_string_buffer(MEMORY2_PROPERTIES_OFFSET + MEMORY_PROPERTIES_SIZE + 64)
    struct.pack_into(
        "<IxxxxQ", memory, 0, VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2, ctypes.addressof(budget)
    )
    function(handle, memory)
    return parse_budget(budget.raw, heaps)


def _has_extension(lib: Any, handle: ctypes.c_void_p, name: bytes) -> bool:
    count = ctypes.c_uint32(0)
    if lib.vkEnumerateDeviceExtensionProperties(handle, None, ctypes.pointer(count), None) != VK_SUCCESS:
        return False
    buffer = ctypes.create_string_buffer(EXTENSION_PROPERTIES.size * max(1, count.value))
    result = lib.vkEnumerateDeviceExtensionProperties(handle, None, ctypes.pointer(count), buffer)
    if result not in (VK_SUCCESS, VK_INCOMPLETE):
        return False
    raw = buffer.raw
    for i in range(count.value):
        extension, _version = EXTENSION_PROPERTIES.unpack_from(raw, i * EXTENSION_PROPERTIES.size)
        if extension.split(b"\0", 1)[0] == name:
            return True
    return False
