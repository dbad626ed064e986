"""Which loaded models to unload so that another one fits (pure: no I/O, no logging, no clock).

The scheduler describes each loaded model as a `Resident` (bytes per device, busy or not, when last used) and
the model it wants to load as bytes per device (`need`, from the memory planner). `make_room` answers with the
idle models to unload, least recently used first, or says to wait: a model that is serving a request is never
unloaded mid-request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resident:
    name: str
    busy: bool  # serving at least one request
    last_used: float  # when its last request ended (any monotonic clock); larger is more recent
    usage: Mapping[str, int]  # bytes per device ("CUDA0", "CPU", ...), what it holds now


@dataclass(frozen=True, slots=True)
class Decision:
    evict: tuple[str, ...]  # unload these, in this order, before loading
    wait: bool  # nothing (more) can be unloaded now: wait for a busy model to go idle, then ask again
    fits: bool  # after `evict`, `need` fits in every device's budget (False: it is loaded anyway, see make_room)
    reason: str


def free_after(budget: Mapping[str, int], residents: Sequence[Resident]) -> dict[str, int]:
    """Bytes left per device of `budget` (what offload may use on each device) once `residents` hold theirs."""
    free = dict(budget)
    for resident in residents:
        for device, used in resident.usage.items():
            if device in free:
                free[device] -= used
    return free


def _fits(need: Mapping[str, int], free: Mapping[str, int]) -> bool:
    return all(need_bytes <= free.get(device, need_bytes) for device, need_bytes in need.items() if need_bytes > 0)


def _short(need: Mapping[str, int], free: Mapping[str, int]) -> str:
    parts = [
        f"{device} needs {need_bytes >> 20} MiB, {max(0, free.get(device, 0)) >> 20} MiB free"
        for device, need_bytes in need.items()
        if need_bytes > free.get(device, need_bytes)
    ]
    return "; ".join(parts)


def make_room(
    need: Mapping[str, int],
    budget: Mapping[str, int],
    residents: Sequence[Resident],
    max_loaded: int,
) -> Decision:
    """What to unload so a model needing `need` bytes per device fits in `budget` (bytes offload may use per
    device; a device missing from `budget` is not checked) beside `residents`, with at most `max_loaded` models.

    Idle residents go least recently used first, only as many as needed. When even unloading every idle one is
    not enough and some resident is busy, the answer is to wait. When nothing is loaded, or everything loaded is
    idle and unloaded, the model is loaded even if `need` exceeds the budget (`fits` False): the planner sized it
    for this machine, and an honest out-of-memory error beats waiting forever.
    """
    evict: list[str] = []
    remaining = list(residents)
    idle = sorted((r for r in residents if not r.busy), key=lambda r: r.last_used)

    def satisfied() -> bool:
        return len(remaining) < max_loaded and _fits(need, free_after(budget, remaining))

    while not satisfied() and idle:
        victim = idle.pop(0)
        evict.append(victim.name)
        remaining.remove(victim)
    if satisfied():
        why = "fits" if not evict else f"fits after unloading {', '.join(evict)} (least recently used first)"
        return Decision(evict=tuple(evict), wait=False, fits=True, reason=why)
    if remaining:  # only busy models are left and they are in the way
        if len(remaining) >= max_loaded:
            why = f"{len(remaining)} models loaded, the most allowed is {max_loaded}, all serving"
        else:
            why = f"{_short(need, free_after(budget, remaining))}; the models holding it are serving"
        return Decision(evict=(), wait=True, fits=False, reason=why)  # unload nothing until it would help
    return Decision(
        evict=tuple(evict),
        wait=False,
        fits=False,
        reason=f"does not fit even alone ({_short(need, budget)}); loading anyway",
    )
