"""CPU facts: physical cores to decode with (the runner), and the CPU as the snapshot describes it."""

from __future__ import annotations

import os
from pathlib import Path

from offload.hardware.devices import CpuInfo
from offload.hardware.system import System

# The SIMD features llama.cpp's CPU kernels select on, as /proc/cpuinfo names them -> as offload reports them.
X86_FLAGS = {
    name: name
    for name in (
        "sse4_2",
        "avx",
        "avx2",
        "f16c",
        "fma",
        "avx_vnni",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    )
}
ARM_FLAGS = {
    "asimd": "neon",
    "asimdhp": "fp16",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}
# macOS names the same features in sysctl hw.optional.arm.*.
DARWIN_FLAGS = {"FEAT_FP16": "fp16", "FEAT_DotProd": "dotprod", "FEAT_I8MM": "i8mm", "FEAT_BF16": "bf16"}


def _count_cores(text: str) -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo text; 0 when it has no core ids (VMs, ARM)."""
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key and core:
            cores.add((physical, core))
            physical = core = ""
    if core:
        cores.add((physical, core))
    return len(cores)


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """Physical cores usable by this process (hyper-threads share a core's math units, so they do not count)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = cpuinfo.read_text()
    except OSError:
        return max(1, usable)
    # Without core ids (many VMs, ARM) every logical CPU is all we know.
    count = _count_cores(text) or usable
    return max(1, min(count, usable))


def _first(text: str, *keys: str) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def _meminfo(text: str, key: str) -> int | None:
    value = _first(text, key)
    if value is None:
        return None
    number, _, unit = value.partition(" ")
    return int(number) * 1024 if number.isdigit() and unit.strip() == "kB" else None


def _cgroup_limit(system: System) -> tuple[int | None, int | None]:
    """(memory.max, memory.current) of this process's cgroup v2, when it is limited."""
    limit = (system.read_text("/sys/fs/cgroup/memory.max") or "").strip()
    current = (system.read_text("/sys/fs/cgroup/memory.current") or "").strip()
    return (int(limit) if limit.isdigit() else None), (int(current) if current.isdigit() else None)


def cpu_info(system: System) -> CpuInfo:
    """The CPU and RAM as the snapshot reports them. Never raises; unknown numbers are 0."""
    threads = max(1, system.usable_cpus())
    if system.platform == "darwin":
        return _darwin(system, threads)
    text = system.read_text("/proc/cpuinfo") or ""
    cores = max(1, min(_count_cores(text) or threads, threads))
    name = _first(text, "model name", "Hardware", "cpu model") or system.machine or "unknown CPU"
    present = set((_first(text, "flags", "Features") or "").split())
    table = X86_FLAGS if _first(text, "flags") is not None else ARM_FLAGS
    flags = tuple(dict.fromkeys(reported for flag, reported in table.items() if flag in present))
    meminfo = system.read_text("/proc/meminfo") or ""
    total = _meminfo(meminfo, "MemTotal") or 0
    available = _meminfo(meminfo, "MemAvailable") or 0
    # In a container MemTotal is the host's; the cgroup limit is what this process can actually have.
    limit, used = _cgroup_limit(system)
    if limit is not None:
        total = min(total, limit) if total else limit
        if used is not None:
            available = min(available, max(0, limit - used)) if available else max(0, limit - used)
    return CpuInfo(name, cores, threads, flags, total, available)


def _darwin(system: System, threads: int) -> CpuInfo:
    name = system.sysctl("machdep.cpu.brand_string") or system.machine
    cores = _sysctl_int(system, "hw.physicalcpu") or threads
    flags: tuple[str, ...] = ()
    if system.machine == "arm64":
        extra = [flag for key, flag in DARWIN_FLAGS.items() if system.sysctl(f"hw.optional.arm.{key}") == "1"]
        flags = ("neon", *extra)
    total = _sysctl_int(system, "hw.memsize") or 0
    # Free pages only: macOS keeps the rest as cache it will give back, so this is a floor.
    free = (_sysctl_int(system, "vm.page_free_count") or 0) * (_sysctl_int(system, "hw.pagesize") or 0)
    return CpuInfo(name, max(1, min(cores, threads)), threads, flags, total, free)


def _sysctl_int(system: System, name: str) -> int | None:
    value = system.sysctl(name)
    return int(value) if value is not None and value.isdigit() else None
