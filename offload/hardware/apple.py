"""Apple silicon: Metal, with unified memory (the GPU's share of RAM is the machine's memory, hw.memsize)."""

from __future__ import annotations

from offload.hardware.devices import Device, ProbeResult, Rejection
from offload.hardware.system import System

PROBE = "metal"


def probe(system: System) -> ProbeResult:
    if system.platform != "darwin":
        return ProbeResult()
    if system.machine != "arm64":
        reason = f"llama.cpp's Metal backend needs Apple silicon (arm64); this Mac is {system.machine}"
        return ProbeResult(rejections=(Rejection(PROBE, "Metal", reason),))
    memory = system.sysctl("hw.memsize")
    total = int(memory) if memory and memory.isdigit() else 0
    if total <= 0:
        return ProbeResult(rejections=(Rejection(PROBE, "Metal", "sysctl hw.memsize did not answer"),))
    name = system.sysctl("machdep.cpu.brand_string") or "Apple silicon"
    device = Device(
        id="metal:0",
        library="metal",
        name=name,
        total_memory=total,
        # Metal's recommendedMaxWorkingSetSize (about 2/3 to 3/4 of RAM) is only known inside the runner.
        free_memory=None,
        integrated=True,
    )
    return ProbeResult(devices=(device,))
