"""Fit a model to devices: layers per device, the context that fits, the tensor split (pure; no I/O).

Policy, in order: keep as many layers on the GPUs as fit; at a given layer count shrink the context (in steps of
256, down to `num_ctx_min`) before giving up a layer; a forced layer count (`num_gpu`) is honoured or refused
with the numbers. Contexts are per sequence, as Ollama's num_ctx: `parallel` slots need `parallel` times the KV
cache. A GPU's expected bytes include the per-process overhead its driver takes (the CUDA context), so a plan
compares with what NVML reports for the runner process, not only with llama.cpp's buffers.
Layers are counted as llama.cpp's n_gpu_layers counts them: block_count + 1 (the output layer);
llama.cpp offloads the *last* n layers, so the output layer is the first to go to a GPU and the last to leave.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from offload.errors import PlanRefused
from offload.planner.memory import (
    KV_CELL_PAD,
    MIB,
    ModelMemory,
    compute_buffer_bytes,
    host_buffer_bytes,
    kv_cache_per_layer,
    layer_devices,
)
from offload.planner.pipeline import pipeline_lanes

if TYPE_CHECKING:
    from offload.hardware.devices import HardwareSnapshot

CPU = "CPU"  # llama.cpp's name for host memory in its buffer reports
# llama.cpp's device names per offload library (what its load report prints, so compare() can match them).
# Uncertain for Metal: older builds print "Metal", newer "MTL0".
DEVICE_PREFIX: Mapping[str, str] = {"cuda": "CUDA", "rocm": "ROCm", "vulkan": "Vulkan", "metal": "MTL"}
DEFAULT_HEADROOM = 512 * MIB  # kept free on every device unless the caller says otherwise
# With only part of the layers on the GPUs, llama.cpp's GPU compute buffer grows by an amount the model above does
# not capture: measured +23.0 MiB at 26/33 layers of llama 8B (n_ctx 2560) and +4.5 MiB at 10/33 (n_ctx 2048) on an
# H200. Until that is modelled, a partially offloaded GPU is given 1% of its weights and KV more (36 and 14 MiB
# there), so a plan stays inside a memory limit instead of passing it by a few MiB.
PARTIAL_OFFLOAD_MARGIN = 0.01
# What a runner process takes on a GPU beyond llama.cpp's buffers (driver context, kernels, cuBLAS workspace), per
# library. cuda: NVML per-process memory minus the buffers llama.cpp reported, measured on an H200 (driver 580,
# CUDA 13.0, llama-cpp-python 0.3.36): 523 MiB for every model and context tried (docs/GPU.md). The scheduler
# replaces it with what it measures on the machine once a runner has loaded. Others: not measured yet, so 0.
GPU_OVERHEAD: Mapping[str, int] = {"cuda": 523 * MIB}



@dataclass(frozen=True, slots=True)
class DeviceBudget:
    """What one device may hold. `free` is bytes free now. `unified`: a GPU whose memory is the system's
    (Apple silicon, integrated GPUs): what it holds also comes out of the CPU budget."""

    name: str  # llama.cpp's device name: "CUDA0", "Vulkan1", "MTL0", or "CPU" for system memory
    free: int
    unified: bool = False
    overhead: int = 0  # bytes a runner process takes here beyond its buffers, once it uses the device at all
    limit: int | None = None  # most bytes a plan may use here (overhead included); None: free less headroom

    def allowed(self, headroom: int) -> int:
        """Bytes a plan may use on this device."""
        room = self.free - headroom
        return room if self.limit is None else min(room, self.limit)

    @property
    def is_cpu(self) -> bool:
        return self.name == CPU


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    weights: int
    kv: int
    compute: int
    overhead: int = 0  # the driver's per-process share (DeviceBudget.overhead) when the device holds anything

    @property
    def buffers(self) -> int:
        """What llama.cpp allocates and reports in its load log."""
        return self.weights + self.kv + self.compute

    @property
    def total(self) -> int:
        """What the device loses to the runner: buffers plus overhead (NVML's per-process number on NVIDIA)."""
        return self.buffers + self.overhead


@dataclass(frozen=True, slots=True)
class Plan:
    layers_per_device: Mapping[str, int]  # every device in the plan, CPU included, even at 0 layers
    n_gpu_layers: int  # llama.cpp's n_gpu_layers
    layers_total: int  # block_count + 1
    tensor_split: tuple[float, ...]  # one fraction per GPU budget, in the order given; () without GPUs
    n_ctx: int  # per sequence
    parallel: int
    kv_type: str
    usage: Mapping[str, DeviceUsage]  # expected bytes per device
    headroom: int  # bytes kept free on every device
    reason: str  # one line: why this plan

    def to_json(self) -> dict[str, Any]:
        return {
            "n_gpu_layers": self.n_gpu_layers,
            "layers_total": self.layers_total,
            "tensor_split": list(self.tensor_split),
            "n_ctx": self.n_ctx,
            "parallel": self.parallel,
            "kv_type": self.kv_type,
            "headroom": self.headroom,
            "reason": self.reason,
            "devices": [
                {
                    "name": name,
                    "layers": self.layers_per_device.get(name, 0),
                    "weights": use.weights,
                    "kv": use.kv,
                    "compute": use.compute,
                    "overhead": use.overhead,
                    "total": use.total,
                }
                for name, use in self.usage.items()
            ],
        }


def budgets_from(
    snapshot: HardwareSnapshot,
    library: str | None = None,
    *,
    limit: int | None = None,
    overhead: int | None = None,
) -> tuple[DeviceBudget, ...]:
    """Budgets for the GPUs of `library` (default: the library of the first device) plus the CPU. A device
    whose driver cannot tell free memory is budgeted at its total; integrated devices are `unified`. `limit`
    caps what each GPU may hold (OFFLOAD_GPU_MEMORY_LIMIT); `overhead` is the per-process GPU overhead
    (default: GPU_OVERHEAD for the library)."""
    library = library or (snapshot.devices[0].library if snapshot.devices else "cpu")
    gpus = snapshot.usable(library)
    per_process = GPU_OVERHEAD.get(library, 0) if overhead is None else overhead
    out = [
        DeviceBudget(
            name=f"{DEVICE_PREFIX.get(d.library, d.library)}{d.index}",
            free=d.free_memory if d.free_memory is not None else d.total_memory,
            unified=d.integrated or d.library == "metal",
            overhead=per_process,
            limit=limit,
        )
        for d in gpus
    ]
    return (*out, DeviceBudget(CPU, snapshot.cpu.memory_available))


def context_steps(n_ctx: int, num_ctx_min: int) -> tuple[int, ...]:
    """Contexts to try, largest first: n_ctx, then multiples of 256 below it down to num_ctx_min (inclusive)."""
    floor = min(num_ctx_min, n_ctx)
    steps = [n_ctx]
    step = (n_ctx - 1) // KV_CELL_PAD * KV_CELL_PAD
    while step >= floor and step > 0:
        steps.append(step)
        step -= KV_CELL_PAD
    if steps[-1] != floor:
        steps.append(floor)
    return tuple(steps)


def _split(gpus: Sequence[DeviceBudget], headroom: int) -> tuple[float, ...]:
    """llama.cpp tensor_split: fractions in proportion to what each GPU may hold."""
    usable = [max(0, g.allowed(headroom) - g.overhead) for g in gpus]
    total = sum(usable)
    if total == 0:
        return tuple(1 / len(gpus) for _ in gpus) if gpus else ()
    return tuple(u / total for u in usable)


def _usage(
    model: ModelMemory,
    gpus: Sequence[DeviceBudget],
    split: Sequence[float],
    *,
    n_gpu: int,
    n_ctx: int,
    parallel: int,
    kv_type: str,
    flash_attn: bool,
    n_ubatch: int,
    pipeline: bool,
) -> tuple[dict[str, int], dict[str, DeviceUsage]]:
    shape = model.shape
    # Each llama.cpp context has its own compute buffers; a pipelined load has two (planner/pipeline.py).
    full_offload = bool(gpus) and n_gpu >= model.layers_total
    contexts = len(pipeline_lanes(parallel, full_offload=full_offload, enabled=pipeline))
    devices = layer_devices(model.layers_total, n_gpu, split, [g.name for g in gpus], CPU)
    kv = kv_cache_per_layer(shape, n_ctx=n_ctx * parallel, parallel=parallel, kv_type=kv_type, n_ubatch=n_ubatch)
    names = [g.name for g in gpus] + [CPU]
    layers = dict.fromkeys(names, 0)
    weights = dict.fromkeys(names, 0)
    kv_bytes = dict.fromkeys(names, 0)
    for il, device in enumerate(devices):
        layers[device] += 1
        if il < shape.n_layer:
            weights[device] += model.block_bytes[il]
            kv_bytes[device] += kv[il]
        else:  # the output layer; a tied output on the host shares token_embd's bytes
            tied_host = model.output_tied and device == CPU
            weights[device] += (model.output_bytes - (model.token_embd_bytes if tied_host else 0)) + model.other_bytes
    weights[CPU] += model.token_embd_bytes  # the input layer stays on the host
    output_device = devices[-1]
    overheads = {g.name: g.overhead for g in gpus}
    usage: dict[str, DeviceUsage] = {}
    for name in names:
        has_layers = any(d == name for d in devices[: shape.n_layer])
        compute = compute_buffer_bytes(
            shape,
            n_ctx=n_ctx,
            n_ubatch=n_ubatch,
            flash_attn=flash_attn,
            has_layers=has_layers,
            has_output=name == output_device,
        )
        if name == CPU:
            compute += host_buffer_bytes(
                shape, n_ctx=n_ctx, n_ubatch=n_ubatch, parallel=parallel, offloaded=n_gpu > 0
            )
        elif 0 < n_gpu < model.layers_total:
            compute += int((weights[name] + kv_bytes[name]) * PARTIAL_OFFLOAD_MARGIN)
        compute *= contexts
        held = weights[name] + kv_bytes[name] + compute
        overhead = overheads.get(name, 0) if held else 0
        usage[name] = DeviceUsage(weights=weights[name], kv=kv_bytes[name], compute=compute, overhead=overhead)
    return layers, usage


def usage_of(
    model: ModelMemory,
    devices: Sequence[DeviceBudget],
    *,
    n_gpu: int,
    n_ctx: int,
    parallel: int = 1,
    kv_type: str = "f16",
    headroom: int = DEFAULT_HEADROOM,
    flash_attn: bool = True,
    n_ubatch: int = 512,
    pipeline: bool = False,
) -> dict[str, DeviceUsage]:
    """Expected bytes per device for a layout fixed by the caller (n_gpu layers, n_ctx per sequence), whether
    or not it fits: what a load with a forced num_gpu will take. Devices as for `plan`."""
    gpus = [d for d in devices if not d.is_cpu]
    n_gpu = min(n_gpu, model.layers_total) if gpus else 0
    _, usage = _usage(
        model,
        gpus,
        _split(gpus, headroom),
        n_gpu=n_gpu,
        n_ctx=n_ctx,
        parallel=parallel,
        kv_type=kv_type,
        flash_attn=flash_attn,
        n_ubatch=n_ubatch,
        pipeline=pipeline,
    )
    return usage


def _overflows(
    usage: Mapping[str, DeviceUsage], budgets: Sequence[DeviceBudget], headroom: int
) -> list[tuple[str, int, int]]:
    """(device, bytes needed, bytes it may use) for each device the usage does not fit."""
    out = []
    unified = sum(usage[b.name].total for b in budgets if b.unified and b.name in usage)
    for budget in budgets:
        need = usage[budget.name].total if budget.name in usage else 0
        if budget.is_cpu:
            need += unified  # a unified GPU's bytes are system memory too
        allowed = budget.allowed(headroom)
        if need > 0 and need > allowed:  # a device given nothing fits however full it is
            out.append((budget.name, need, allowed))
    return out


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


def plan(
    model: ModelMemory,
    devices: Sequence[DeviceBudget],
    *,
    n_ctx: int,
    parallel: int = 1,
    kv_type: str = "f16",
    headroom: int = DEFAULT_HEADROOM,
    num_gpu: int | None = None,
    num_ctx_min: int = 2048,
    num_ctx_max: int | None = None,
    flash_attn: bool = True,
    n_ubatch: int = 512,
    pipeline: bool = False,
) -> Plan:
    """The plan for `model` on `devices` (GPU budgets in tensor-split order, and at most one "CPU" budget;
    without one the host is assumed unlimited).

    n_ctx is the context wanted per sequence (each of `parallel` slots gets it), clamped to num_ctx_max (the
    model's trained context, say); the planner may shrink it to num_ctx_min — pass num_ctx_min = n_ctx to force
    it. num_gpu forces the GPU layer count (negative: all; clamped to block_count + 1).
    `headroom` bytes stay free on every device; a DeviceBudget.limit caps what its device may hold.
    Raises PlanRefused (with the needed and allowed bytes per device) when nothing within those limits fits,
    ValueError for a bad argument.
    """
    if parallel < 1 or n_ctx < 1 or num_ctx_min < 1:
        raise ValueError("n_ctx, num_ctx_min and parallel must be positive")
    if num_ctx_max is not None:
        n_ctx = min(n_ctx, num_ctx_max)
    gpus = [d for d in devices if not d.is_cpu]
    budgets = list(devices)  # no "CPU" budget: the host is not checked
    total = model.layers_total
    split = _split(gpus, headroom)
    if num_gpu is not None:
        layer_counts: Sequence[int] = [total if num_gpu < 0 else min(num_gpu, total)]
        if not gpus:
            layer_counts = [0]
    else:
        layer_counts = range(total, -1, -1) if gpus else [0]
    contexts = context_steps(n_ctx, num_ctx_min)
    last: tuple[int, int, list[tuple[str, int, int]]] | None = None
    for n_gpu in layer_counts:
        for ctx in contexts:
            layers, usage = _usage(
                model,
                gpus,
                split,
                n_gpu=n_gpu,
                n_ctx=ctx,
                parallel=parallel,
                kv_type=kv_type,
                flash_attn=flash_attn,
                n_ubatch=n_ubatch,
                pipeline=pipeline,
            )
            over = _overflows(usage, budgets, headroom)
            if not over:
                return Plan(
                    layers_per_device=MappingProxyType(layers),
                    n_gpu_layers=n_gpu,
                    layers_total=total,
                    tensor_split=split if n_gpu else tuple(0.0 for _ in gpus),
                    n_ctx=ctx,
                    parallel=parallel,
                    kv_type=kv_type,
                    usage=MappingProxyType(usage),
                    headroom=headroom,
                    reason=_reason(n_gpu, total, ctx, n_ctx, gpus, forced=num_gpu is not None),
                )
            last = (n_gpu, ctx, over)
    assert last is not None  # layer_counts and contexts are never empty
    n_gpu, ctx, over = last
    numbers = "; ".join(f"{name} needs {_mib(need)}, may use {_mib(allowed)}" for name, need, allowed in over)
    what = f"num_gpu {n_gpu}" if num_gpu is not None else f"{n_gpu} GPU layers"
    raise PlanRefused(
        f"{what} of {total} at num_ctx {ctx} (x{parallel}, kv {kv_type}) does not fit: {numbers}"
        f" (headroom {_mib(headroom)} per device)",
        param="num_gpu" if num_gpu is not None else "num_ctx",
    )


def _reason(n_gpu: int, total: int, ctx: int, wanted: int, gpus: Sequence[DeviceBudget], *, forced: bool) -> str:
    where = "no GPU" if not gpus else f"{n_gpu}/{total} layers on {len(gpus)} GPU" + ("s" if len(gpus) > 1 else "")
    if forced:
        where += " (num_gpu forced)"
    elif gpus and n_gpu < total:
        where += " (the rest did not fit)"
    context = f"context {ctx}" + (f" (shrunk from {wanted} to fit)" if ctx < wanted else "")
    return f"{where}, {context}"


UNKNOWN_OOM_SHRINK = 0.9  # an allocation failure whose size llama.cpp did not print: retry within 90% of the plan


def shrink_after_oom(
    budgets_now: Sequence[DeviceBudget], failed: Plan, device: str | None, requested: int | None
) -> tuple[DeviceBudget, ...]:
    """Budgets for the one retry after a load failed allocating `requested` bytes on `device` (llama.cpp's
    names; None where its log did not say), given budgets measured after the failure.

    When the device now has less room than the plan used, the fresh measurement explains the failure (another
    process took memory) and is kept as it is. When the room is there, the plan underestimated: the device is
    capped at the failed plan's bytes less the failed allocation, so the retry plan is smaller by at least the
    error. An unknown device applies that to every GPU of the plan."""
    out = []
    for budget in budgets_now:
        planned = failed.usage[budget.name].total if budget.name in failed.usage else 0
        hit = device == budget.name or (device is None and not budget.is_cpu)
        if hit and planned and budget.allowed(failed.headroom) >= planned:
            cap = planned - requested if requested else int(planned * UNKNOWN_OOM_SHRINK)
            budget = replace(budget, limit=max(0, cap if budget.limit is None else min(budget.limit, cap)))
        out.append(budget)
    return tuple(out)


def compare(plan: Plan, measured: Mapping[str, int]) -> dict[str, float]:
    """measured / predicted buffer bytes per device the plan expects to use (for logging; >1 means
    underestimated). `measured` is llama.cpp's buffers per device (from its load report), so the overhead is
    left out of the prediction; a device the plan gives no buffers is left out."""
    return {name: measured.get(name, 0) / use.buffers for name, use in plan.usage.items() if use.buffers > 0}


def gpu_total(plan: Plan) -> int:
    """Bytes the plan expects on all GPUs together, overhead included: what NVML's per-process number measures."""
    return sum(use.total for name, use in plan.usage.items() if name != CPU)
