"""Vulkan, AMD and CPU probes: failure rows and parsing tables."""

from __future__ import annotations

import pytest

from offload.hardware import amd, vulkan
from offload.hardware.cpu import cpu_info
from offload.hardware.devices import Library, ProbeResult
from offload.hardware.probe import snapshot
from offload.hardware.system import decode_sysctl
from tests.fakes import hardware as machines
from tests.fakes.hardware import GIB, LLVMPIPE, RX7900, FakeSystem, FakeVkDevice, FakeVulkan

VK = Library("libvulkan.so.1", "/usr/lib64/libvulkan.so.1", "/usr/lib64")


def vulkan_on(library: object, environ: dict[str, str] | None = None) -> ProbeResult:
    system = FakeSystem(libraries={VK.path or "": library}, environ=environ or {})
    return vulkan.probe(system, VK, "")


@pytest.mark.parametrize(
    ("library", "reason"),
    [
        pytest.param(FakeVulkan([RX7900], create_result=-9), "no Vulkan driver (ICD) is installed", id="no-icd"),
        pytest.param(FakeVulkan([RX7900], create_result=-3), "VK_ERROR_INITIALIZATION_FAILED", id="init-failed"),
        pytest.param(FakeVulkan([]), "lists no physical devices", id="no-devices"),
        pytest.param(OSError("libvulkan.so.1: undefined symbol"), "undefined symbol", id="does-not-load"),
        pytest.param(object(), "vkCreateInstance", id="not-a-vulkan-library"),
    ],
)
def test_vulkan_failures(library: object, reason: str) -> None:
    found = vulkan_on(library)
    assert found.devices == ()
    (rejection,) = found.rejections
    assert reason in rejection.reason


def test_vulkan_instance_is_destroyed() -> None:
    library = FakeVulkan([RX7900, LLVMPIPE])
    vulkan_on(library)
    assert library.instances_alive == 0


@pytest.mark.parametrize(
    ("heaps", "total"),
    [
        pytest.param(((8 * GIB, 1),), 8 * GIB, id="one-local-heap"),
        pytest.param(((8 * GIB, 1), (16 * GIB, 0)), 8 * GIB, id="host-heap-not-counted"),
        pytest.param(((8 * GIB - 256 * 2**20, 1), (256 * 2**20, 1)), 8 * GIB, id="bar-heap-counted"),
        pytest.param(((16 * GIB, 0),), None, id="no-local-heap-rejected"),
        pytest.param(((0, 1),), None, id="zero-size-rejected"),
        pytest.param((), None, id="no-heaps-rejected"),
    ],
)
def test_vulkan_vram_is_sum_of_device_local_heaps(heaps: tuple[tuple[int, int], ...], total: int | None) -> None:
    found = vulkan_on(FakeVulkan([FakeVkDevice("GPU", "discrete", heaps)]))
    if total is None:
        assert found.devices == ()
        assert "device-local memory heaps sum to 0 bytes" in found.rejections[0].reason
    else:
        assert [d.total_memory for d in found.devices] == [total]


def test_ggml_vk_visible_devices() -> None:
    igpu = FakeVkDevice("iGPU", "integrated", ((GIB, 1),))
    found = vulkan_on(FakeVulkan([igpu, RX7900]), {"GGML_VK_VISIBLE_DEVICES": "1"})
    assert [(d.id, d.name) for d in found.devices] == [("vulkan:0", RX7900.name)]
    assert "GGML_VK_VISIBLE_DEVICES" in found.rejections[0].reason


@pytest.mark.parametrize(
    ("version", "text"), [(0x00403113, "1.3.275"), ((1 << 22) | (2 << 12) | 7, "1.2.7"), (1 << 22, "1.0.0")]
)
def test_api_version_text(version: int, text: str) -> None:
    assert vulkan.api_version_text(version) == text


def test_real_libvulkan_if_this_machine_has_one() -> None:
    """The real ctypes path, where libvulkan exists (lavapipe here): it must answer, not crash."""
    found = snapshot()
    vulkan_library = next((lib for lib in found.libraries if lib.name == "libvulkan.so.1"), None)
    if vulkan_library is None or vulkan_library.path is None:
        assert any(r.probe == "vulkan" and "not found" in r.reason for r in found.rejections)
        return
    outcomes = [d for d in found.devices if d.library == "vulkan"] + [
        r for r in found.rejections if r.probe == "vulkan"
    ]
    assert outcomes
    assert not any(r.subject == "probe" for r in found.rejections)


# ---------------------------------------------------------------- AMD


@pytest.mark.parametrize(
    ("version", "target"),
    [(110000, "gfx1100"), (110001, "gfx1101"), (100300, "gfx1030"), (90010, "gfx90a"), (90400, "gfx940"),
     (90008, "gfx908"), (110501, "gfx1151"), (120001, "gfx1201")],
)  # fmt: skip
def test_gfx_target(version: int, target: str) -> None:
    assert amd.gfx_target(version) == target


TWO_CARDS = (("Radeon A", 16 * GIB, GIB), ("Radeon B", 24 * GIB, 2 * GIB))


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        pytest.param({}, ["Radeon A", "Radeon B"], id="all"),
        pytest.param({"HIP_VISIBLE_DEVICES": "1"}, ["Radeon B"], id="hip-index"),
        pytest.param({"HIP_VISIBLE_DEVICES": "1,0"}, ["Radeon B", "Radeon A"], id="hip-reorder"),
        pytest.param({"ROCR_VISIBLE_DEVICES": "GPU-00000000000003e9"}, ["Radeon B"], id="rocr-uuid"),
        pytest.param({"ROCR_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "0"}, ["Radeon B"], id="rocr-then-hip"),
        pytest.param({"HIP_VISIBLE_DEVICES": ""}, [], id="empty-hides-all"),
    ],
)
def test_amd_visible_devices(environ: dict[str, str], names: list[str]) -> None:
    found = amd.probe(FakeSystem(files=machines.amd_sysfs(TWO_CARDS), environ=environ))
    assert [d.name for d in found.devices] == names
    assert [d.index for d in found.devices] == list(range(len(names)))
    assert all(d.compute == "gfx1100" for d in found.devices)


def test_amd_without_kfd_or_vram_is_rejected() -> None:
    files = machines.amd_sysfs(TWO_CARDS)
    del files["/sys/class/kfd/kfd/topology/nodes/1/properties"]
    files["/sys/class/drm/card1/device/mem_info_vram_total"] = "0\n"
    found = amd.probe(FakeSystem(files=files))
    assert found.devices == ()
    reasons = sorted(r.reason for r in found.rejections)
    assert any("no KFD topology node" in r for r in reasons)
    assert any("mem_info_vram_total is missing or 0" in r for r in reasons)


def test_non_amd_cards_are_ignored() -> None:
    files = {"/sys/class/drm/card0/device/vendor": "0x8086\n", "/sys/class/drm/card0/device/mem_info_vram_total": "1"}
    assert amd.probe(FakeSystem(files=files)) == ProbeResult()


# ---------------------------------------------------------------- CPU


ARM_CPUINFO = "".join(
    f"processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd asimdhp asimddp i8mm sve sve2\n\n" for n in range(4)
)


@pytest.mark.parametrize(
    ("files", "cpus", "expected"),
    [
        pytest.param(
            machines.LINUX_FILES, 8, ("Fake Xeon @ 3.0GHz", 4, 8, ("sse4_2", "avx", "avx2", "f16c", "fma")), id="x86"
        ),
        pytest.param(machines.LINUX_FILES, 2, ("Fake Xeon @ 3.0GHz", 2, 2, None), id="affinity-caps-cores"),
        pytest.param(
            {"/proc/cpuinfo": ARM_CPUINFO},
            4,
            ("aarch64", 4, 4, ("neon", "fp16", "dotprod", "i8mm", "sve", "sve2")),
            id="arm",
        ),
        pytest.param({}, 3, ("aarch64", 3, 3, ()), id="no-proc"),
    ],
)
def test_cpu_info(files: dict[str, str], cpus: int, expected: tuple[str, int, int, tuple[str, ...] | None]) -> None:
    machine = "x86_64" if "/proc/meminfo" in files else "aarch64"
    info = cpu_info(FakeSystem(files=dict(files), cpus=cpus, machine=machine))
    name, cores, threads, flags = expected
    assert (info.name, info.cores, info.threads) == (name, cores, threads)
    if flags is not None:
        assert info.flags == flags


@pytest.mark.parametrize(
    ("limit", "current", "total", "available"),
    [
        pytest.param(None, None, 65830000 * 1024, 50000000 * 1024, id="no-cgroup"),
        pytest.param("max", "123", 65830000 * 1024, 50000000 * 1024, id="unlimited-cgroup"),
        pytest.param(str(8 * GIB), str(3 * GIB), 8 * GIB, 5 * GIB, id="container-limit"),
    ],
)
def test_memory_honours_cgroup_limit(limit: str | None, current: str | None, total: int, available: int) -> None:
    files = dict(machines.LINUX_FILES)
    if limit is not None and current is not None:
        files |= {"/sys/fs/cgroup/memory.max": limit + "\n", "/sys/fs/cgroup/memory.current": current + "\n"}
    info = cpu_info(FakeSystem(files=files))
    assert (info.memory_total, info.memory_available) == (total, available)


@pytest.mark.parametrize(
    ("raw", "text"),
    [(b"Apple M2\0", "Apple M2"), ((16 * GIB).to_bytes(8, "little"), str(16 * GIB)), (b"\x01\0\0\0", "1")],
)
def test_decode_sysctl(raw: bytes, text: str) -> None:
    assert decode_sysctl(raw) == text
