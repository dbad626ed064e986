"""snapshot() on fake machines: each failure the issue names, as one table row."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from offload.hardware.devices import HardwareSnapshot
from offload.hardware.probe import snapshot
from tests.fakes import hardware as machines
from tests.fakes.hardware import GIB, MIB, FakeSystem


@dataclass(frozen=True)
class Expect:
    devices: tuple[str, ...]  # ids
    rejected: tuple[tuple[str, str], ...] = ()  # (probe, substring of the reason)
    problems: tuple[str, ...] = ()  # substrings of problem + fix
    driver: int | None = None


CASES: list[tuple[str, Callable[[], FakeSystem], Expect]] = [
    ("cpu-only", machines.cpu_only, Expect((), (("nvidia", "no NVIDIA driver"), ("vulkan", "libvulkan.so.1")))),
    ("h100-debian", machines.nvidia_h100, Expect(("cuda:0",), driver=12040)),
    (
        "nvml-sees-gpu-but-libcuda-missing",
        machines.nvml_without_libcuda,
        Expect(
            (),
            (("nvidia", "libcuda.so.1 not found; searched ldconfig -p, /usr/lib/x86_64-linux-gnu"),),
            ("libcuda.so.1 not found", "--gpus all"),
        ),
    ),
    (
        "container-with-only-libcuda",
        machines.container_with_only_libcuda,
        Expect(("cuda:0",), (("nvidia", "nvmlInit failed: NVML Shared Library Not Found"),), driver=12080),
    ),
    (
        "driver-too-old-for-runtime",
        machines.old_driver,
        Expect(
            (),
            (("nvidia", "driver 520.61.05 supports CUDA 11.8; this build needs 12.4"),),
            ("the CUDA backend cannot start", "upgrade the NVIDIA driver to >= 550.54.14"),
            driver=11080,
        ),
    ),
    ("nixos-opengl-driver", machines.nixos_nvidia, Expect(("cuda:0",), driver=12040)),
    (
        "fedora-vulkan-usr-lib64",
        machines.fedora_with_vulkan,
        Expect(("vulkan:0",), (("vulkan", "CPU software renderer"),)),
    ),
    ("vulkan-0-bytes", machines.vulkan_zero_vram, Expect((), (("vulkan", "device-local memory heaps sum to 0"),))),
    ("laptop-igpu", machines.laptop_with_igpu, Expect(("vulkan:0", "vulkan:1"))),
    ("amd-gfx1100", machines.amd_gfx1100, Expect(("rocm:0",))),
    ("apple-m2", machines.apple_m2, Expect(("metal:0",))),
]


@pytest.mark.parametrize(("machine", "expect"), [pytest.param(m, e, id=name) for name, m, e in CASES])
def test_machines(machine: Callable[[], FakeSystem], expect: Expect) -> None:
    found = snapshot(machine())
    assert tuple(d.id for d in found.devices) == expect.devices
    for probe, reason in expect.rejected:
        assert any(r.probe == probe and reason in r.reason for r in found.rejections), found.rejections
    text = " ".join(f"{p.problem} {p.fix}" for p in found.problems)
    for wanted in expect.problems:
        assert wanted in text
    if not expect.problems:
        assert found.problems == ()
    assert found.cuda_driver_version == expect.driver
    assert all(d.total_memory > 0 for d in found.devices)
    assert not any(r.subject == "probe" for r in found.rejections), "a probe crashed"
    assert json.loads(json.dumps(found.to_json())) == found.to_json()


def test_h100_device_fields() -> None:
    (device,) = snapshot(machines.nvidia_h100()).devices
    assert device.name == "NVIDIA H100 80GB HBM3"
    assert (device.total_memory, device.free_memory) == (80 * GIB, 79 * GIB)
    assert device.uuid == "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
    assert (device.compute, device.driver_version, device.library, device.index) == ("9.0", "550.54.14", "cuda", 0)


def test_detection_never_needs_nvidia_smi() -> None:
    system = machines.nvidia_h100()
    assert not system.exists("/usr/bin/nvidia-smi")
    assert [d.id for d in snapshot(system).devices] == ["cuda:0"]


def test_container_lists_gpu_through_driver_api() -> None:
    (device,) = snapshot(machines.container_with_only_libcuda()).devices
    assert device.free_memory is None  # the driver API cannot say without a context
    assert (device.uuid, device.compute) == (machines.H100.uuid, "9.0")


def test_nixos_loads_nvml_by_path() -> None:
    system = machines.nixos_nvidia()
    found = snapshot(system)
    assert "/run/opengl-driver/lib/libnvidia-ml.so.1" in system.loaded
    by_name = {lib.name: lib for lib in found.libraries}
    assert by_name["libcuda.so.1"].path == "/run/opengl-driver/lib/libcuda.so.1"
    assert by_name["libcuda.so.1"].how == "nix"


def test_fedora_vulkan_found_in_usr_lib64_with_budget() -> None:
    found = snapshot(machines.fedora_with_vulkan())
    vulkan = next(lib for lib in found.libraries if lib.name == "libvulkan.so.1")
    assert (vulkan.path, vulkan.how) == ("/usr/lib64/libvulkan.so.1", "/usr/lib64")
    (device,) = found.devices
    assert device.total_memory == 24 * GIB  # both device-local heaps, not the host heap
    assert device.free_memory == 22 * GIB + 200 * MIB  # budget - usage of the device-local heaps
    assert (device.compute, device.integrated) == ("1.3.275", False)


def test_integrated_gpu_is_flagged() -> None:
    intel, nvidia = snapshot(machines.laptop_with_igpu()).devices
    assert intel.integrated and not nvidia.integrated
    assert nvidia.driver_version == "550.54"  # NVIDIA's own packing of the Vulkan driver version
    assert nvidia.total_memory == 8 * GIB


def test_amd_device_fields() -> None:
    (device,) = snapshot(machines.amd_gfx1100()).devices
    assert (device.name, device.compute) == ("AMD Radeon RX 7900 XTX", "gfx1100")
    assert (device.total_memory, device.free_memory) == (24 * GIB, 23 * GIB)


def test_apple_unified_memory() -> None:
    found = snapshot(machines.apple_m2())
    (device,) = found.devices
    assert (device.total_memory, device.integrated, device.name) == (16 * GIB, True, "Apple M2")
    assert found.cpu.flags == ("neon", "dotprod")
    assert found.libraries == () and found.rejections == ()


def test_intel_mac_metal_rejected() -> None:
    found = snapshot(FakeSystem(platform="darwin", machine="x86_64", sysctls={"hw.memsize": str(GIB)}))
    assert found.devices == ()
    assert any("Apple silicon" in r.reason for r in found.rejections)


class Exploding(FakeSystem):
    def read_text(self, path: str) -> str | None:
        raise RuntimeError("disk on fire")


def test_a_crashing_probe_becomes_a_rejection() -> None:
    found = snapshot(Exploding(files={**machines.LINUX_FILES, **machines.amd_sysfs()}))
    crashed = {r.probe for r in found.rejections if r.subject == "probe"}
    assert {"amd", "cpu"} <= crashed
    assert all("disk on fire" in r.reason for r in found.rejections if r.subject == "probe")
    assert found.cpu.cores >= 1


def test_real_machine_snapshot_is_sane() -> None:
    found = snapshot()
    assert isinstance(found, HardwareSnapshot)
    assert found.cpu.threads >= found.cpu.cores >= 1
    assert found.cpu.memory_total > 0
    assert all(d.total_memory > 0 for d in found.devices)
    assert not any(r.subject == "probe" for r in found.rejections), found.rejections
    vulkan = next((lib for lib in found.libraries if lib.name == "libvulkan.so.1"), None)
    if vulkan is not None and vulkan.path is not None:
        # The real ctypes path ran: it either made devices or said why not (lavapipe: a CPU renderer).
        assert any(d.library == "vulkan" for d in found.devices) or any(
            r.probe == "vulkan" and r.subject != vulkan.name for r in found.rejections
        )
