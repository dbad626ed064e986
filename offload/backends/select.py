"""Which variants to try, in which order: a pure decision from the hardware snapshot and the variants found.

Order by default: cuda → rocm → vulkan → metal → cpu, each only when the machine has a device for it (cpu
always) and a usable variant that sees such a device. A backend the user named (`--gpu-backend`,
OFFLOAD_BACKEND, `llm.backend`) is forced: only its variants, and no choice at all, with the reason, when there
is none, rather than a silent fall back to the CPU. No logging here: the caller logs `Choice.reason`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from offload.backends.variants import ORDER, Variant, device_library

if TYPE_CHECKING:
    from offload.hardware.devices import HardwareSnapshot


@dataclass(frozen=True, slots=True)
class Choice:
    variants: tuple[Variant, ...]  # in the order to try; empty = nothing can run (`reason` says why)
    forced: bool  # the user named the backend: no falling back past these
    reason: str
    skipped: tuple[str, ...] = ()  # each variant or device left out, and why

    @property
    def ok(self) -> bool:
        return bool(self.variants)


def choose(snapshot: HardwareSnapshot, variants: Sequence[Variant], requested: str) -> Choice:
    """The variants to try for `requested` ("auto" or one of ORDER) on the machine `snapshot` describes."""
    requested = requested.strip().lower()
    if requested != "auto":
        if requested not in ORDER:
            return Choice((), True, f"unknown backend {requested!r}: use auto or one of {', '.join(ORDER)}")
        picks, skipped = _candidates(requested, snapshot, variants)
        if picks:
            return Choice(picks, True, f"backend {requested} was requested: {_describe(picks)}", tuple(skipped))
        why = "; ".join(skipped) or f"no {requested} variant is installed"
        fix = f" (offload backends install {requested}, or llm.backend auto)"
        return Choice((), True, f"backend {requested} was requested but cannot be used: {why}{fix}", tuple(skipped))
    chosen: list[Variant] = []
    notes: list[str] = []
    for library in ORDER:
        if library != "cpu" and not _devices(snapshot, library):
            continue
        picks, skipped = _candidates(library, snapshot, variants)
        chosen += picks
        notes += skipped
    if not chosen:
        return Choice((), False, "no usable backend variant: " + ("; ".join(notes) or "none installed"), tuple(notes))
    return Choice(tuple(chosen), False, f"auto: {_describe(tuple(chosen))}", tuple(notes))


def _devices(snapshot: HardwareSnapshot, library: str) -> list[str]:
    return [device.name for device in snapshot.devices if device.library == library]


def _candidates(
    library: str, snapshot: HardwareSnapshot, variants: Sequence[Variant]
) -> tuple[tuple[Variant, ...], list[str]]:
    """The usable variants of one library (installed before the venv's), and why the others were left out."""
    mine = sorted((v for v in variants if v.name == library), key=lambda v: v.source != "installed")
    picks: list[Variant] = []
    skipped: list[str] = []
    for variant in mine:
        label = f"{library} variant ({variant.source})"
        if variant.problem is not None:
            skipped.append(f"{label}: {variant.problem}")
        elif library != "cpu" and not any(device_library(name) == library for name in variant.devices):
            listed = ", ".join(variant.devices) or "no devices"
            skipped.append(f"{label} sees no {library} device (the library lists {listed})")
        else:
            picks.append(variant)
    found = _devices(snapshot, library)
    if not mine and found:
        skipped.append(
            f"{len(found)} {library} device(s) found ({', '.join(found)}) but no {library} variant is installed: "
            f"offload backends install {library}"
        )
    return tuple(picks), skipped


def _describe(picks: tuple[Variant, ...]) -> str:
    parts = []
    for variant in picks:
        gpu = [name for name in variant.devices if device_library(name) is not None]
        parts.append(f"{variant.name} ({variant.source}{': ' + ', '.join(gpu) if gpu else ''})")
    return "try " + ", then ".join(parts)
