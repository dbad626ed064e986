"""Which llama.cpp builds a runner may try for a load, in order, and how many layers each should offload.

The pure part (`gpu_layers_for`) is table-tested; `plan_for` asks the hardware probes and the installed variants
(offload/hardware, offload/backends) once per server and turns their choice into runner candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from offload.config import Settings

if TYPE_CHECKING:
    from offload.backends.variants import Variant
    from offload.hardware.devices import HardwareSnapshot

log = logging.getLogger("offload.backends")
ALL_LAYERS = 999  # llama.cpp clamps n_gpu_layers to the model's layer count


@dataclass(frozen=True, slots=True)
class Candidate:
    backend: str  # "cuda", "rocm", "vulkan", "metal", "cpu"
    library_path: Path | None  # a variant's directory (first on the runner's PYTHONPATH); None = the venv's build


@dataclass(frozen=True, slots=True)
class BackendPlan:
    candidates: tuple[Candidate, ...]
    forced: bool  # the user named the backend: no fallback, an error instead
    reason: str  # why this order, for logs and `offload doctor`
    machine: HardwareSnapshot | None = None  # what the plan was made on; the memory planner budgets from it


def gpu_layers_for(backend: str, requested: int | None, setting: str) -> int:
    """Layers to offload: none on the CPU backend; else the request's num_gpu, else the server's gpu_layers."""
    if backend == "cpu":
        return 0
    if requested is not None:
        return ALL_LAYERS if requested < 0 else requested
    if setting in {"auto", "-1"}:
        return ALL_LAYERS  # the memory planner will size "auto" from free memory; until then: everything
    return int(setting)


def plan_for(settings: Settings) -> BackendPlan:
    """Probe the machine and the installed variants, and order what to try."""
    from offload.backends.variants import discover, platform_tag
    from offload.hardware.probe import snapshot

    plan = plan_from(snapshot(), discover(settings.home, platform_tag()), settings.backend)
    log.info(
        "backend plan: %s (%s)", " -> ".join(c.backend for c in plan.candidates) or "nothing usable", plan.reason
    )
    return plan


def plan_from(machine: HardwareSnapshot, variants: Sequence[Variant], requested: str) -> BackendPlan:
    """Pure: the candidates for `requested` ("auto" or a backend) on `machine` with `variants` installed."""
    from offload.backends.select import choose

    if requested == "cpu":
        # Every build can run all layers on the CPU: a CPU-only build if there is one, else a GPU build with none.
        usable = sorted((v for v in variants if v.problem is None), key=lambda v: (v.name != "cpu", v.source))
        if usable:
            reason = f"backend cpu was requested: {usable[0].name} build ({usable[0].source}), no layers offloaded"
            return BackendPlan((Candidate("cpu", usable[0].path),), forced=True, reason=reason, machine=machine)
    choice = choose(machine, variants, requested)
    candidates = [Candidate(v.name, v.path) for v in choice.variants]
    if not choice.forced and candidates and all(c.backend != "cpu" for c in candidates):
        # No CPU-only build installed: any build that loads can still run every layer on the CPU, the last
        # resort when its GPUs cannot be used.
        candidates.append(Candidate("cpu", candidates[-1].library_path))
    return BackendPlan(candidates=tuple(candidates), forced=choice.forced, reason=choice.reason, machine=machine)
