"""The memory planner (pure functions, no I/O): how many bytes a model needs (`memory`) and where its layers go
(`fit`). The scheduler calls `model_memory(read_gguf(path))`, `budgets_from(snapshot)` and `plan(...)`, then
`compare(plan, measured)` once the runner reports its real buffers."""

from __future__ import annotations

from offload.errors import PlanRefused
from offload.planner.fit import (
    CPU,
    DEFAULT_HEADROOM,
    GPU_OVERHEAD,
    DeviceBudget,
    DeviceUsage,
    Plan,
    budgets_from,
    compare,
    context_steps,
    gpu_total,
    plan,
    shrink_after_oom,
    usage_of,
)
from offload.planner.memory import (
    KV_BYTES_PER_ELEMENT,
    ModelMemory,
    ModelShape,
    compute_buffer_bytes,
    host_buffer_bytes,
    kv_cache_bytes,
    kv_cache_per_layer,
    kv_cells,
    model_memory,
    model_shape,
)
from offload.planner.parallel import AUTO_PARALLEL, auto_parallel
from offload.planner.pipeline import pipeline_lanes

__all__ = [
    "AUTO_PARALLEL",
    "CPU",
    "DEFAULT_HEADROOM",
    "GPU_OVERHEAD",
    "KV_BYTES_PER_ELEMENT",
    "DeviceBudget",
    "DeviceUsage",
    "ModelMemory",
    "ModelShape",
    "Plan",
    "PlanRefused",
    "auto_parallel",
    "budgets_from",
    "compare",
    "compute_buffer_bytes",
    "context_steps",
    "gpu_total",
    "host_buffer_bytes",
    "kv_cache_bytes",
    "kv_cache_per_layer",
    "kv_cells",
    "model_memory",
    "model_shape",
    "pipeline_lanes",
    "plan",
    "shrink_after_oom",
    "usage_of",
]
