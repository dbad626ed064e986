"""CPU facts the runner needs now: how many physical cores to decode with."""

from __future__ import annotations

import os
from pathlib import Path


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """Physical cores usable by this process (hyper-threads share a core's math units, so they do not count)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = cpuinfo.read_text()
    except OSError:
        return max(1, usable)
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
    # Without core ids (many VMs, ARM) every logical CPU is all we know.
    count = len(cores) if cores else usable
    return max(1, min(count, usable))
