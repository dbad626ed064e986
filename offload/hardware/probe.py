"""Run every probe and assemble the snapshot. Never raises: a probe that crashes becomes a Rejection."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from offload.hardware import amd, apple, nvidia, vulkan
from offload.hardware.cpu import cpu_info
from offload.hardware.devices import CpuInfo, HardwareSnapshot, Library, ProbeResult, Problem, Rejection
from offload.hardware.libraries import Finder
from offload.hardware.system import RealSystem, System

T = TypeVar("T")


def snapshot(system: System | None = None) -> HardwareSnapshot:
    """What this machine (or the given System) has, as one frozen record."""
    system = system if system is not None else RealSystem()
    crashes: list[Rejection] = []

    def guarded(probe: str, run: Callable[[], T], fallback: T) -> T:
        try:
            return run()
        except Exception as exc:  # a probe bug must never take the server or doctor down
            crashes.append(Rejection(probe, "probe", f"the probe failed: {type(exc).__name__}: {exc}"))
            return fallback

    linux = system.platform.startswith("linux")
    finder = guarded("libraries", lambda: Finder(system), None) if linux else None
    libraries: dict[str, Library] = guarded("libraries", finder.find_all, {}) if finder is not None else {}
    searched = guarded("libraries", finder.searched, "") if finder is not None else ""

    results: list[ProbeResult] = []
    driver = runtime = None
    if libraries:
        found = guarded("nvidia", lambda: nvidia.probe(system, libraries, searched), None)
        if found is not None:
            results.append(found.found)
            driver, runtime = found.driver_version, found.runtime_version
        results.append(guarded("amd", lambda: amd.probe(system), ProbeResult()))
        results.append(guarded("vulkan", lambda: vulkan.probe(system, libraries["vulkan"], searched), ProbeResult()))
    results.append(guarded("metal", lambda: apple.probe(system), ProbeResult()))
    cpu = guarded("cpu", lambda: cpu_info(system), CpuInfo(system.machine or "unknown CPU", 1, 1, (), 0, 0))

    problems: list[Problem] = [problem for result in results for problem in result.problems]
    return HardwareSnapshot(
        devices=tuple(device for result in results for device in result.devices),
        cpu=cpu,
        libraries=tuple(libraries.values()),
        rejections=tuple(rejection for result in results for rejection in result.rejections) + tuple(crashes),
        cuda_driver_version=driver,
        cuda_runtime_version=runtime,
        problems=tuple(problems),
    )
