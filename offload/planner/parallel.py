"""How many sequence slots a model gets when num_parallel is "auto" (pure; no I/O).

The rule: try AUTO_PARALLEL (4) slots, llama-server's default and older Ollama's. Keep them only if their plan
puts as many layers on the GPUs as a one-slot plan and gives every slot the context asked for (num_ctx is per
sequence, as Ollama's); otherwise take the largest of 4, 2, 1 that does. One slot is always allowed: when even it
does not fit, the load is planned, refused or waited for exactly as with an explicit num_parallel of 1.

On the CPU backend the same rule runs over a plan with only the CPU budget and the context forced (no layers to
lose): 4 slots unless their KV cache does not fit in the memory offload may use, then 2, then 1. A machine whose
memory is unknown gets 4. An explicit num_parallel never comes here: it is used as given.
"""

from __future__ import annotations

from collections.abc import Callable

from offload.errors import PlanRefused
from offload.planner.fit import Plan

AUTO_PARALLEL = 4
_FEWER = (AUTO_PARALLEL, 2)  # tried in this order before one slot

PlanWith = Callable[[int], Plan]  # the plan for a slot count; PlanRefused when nothing fits


def auto_parallel(plan_with: PlanWith, n_ctx: int, context_length: int | None = None) -> Plan:
    """The plan for the most slots (4, 2, else 1) that keep the one-slot plan's GPU layers and the context asked
    for (`n_ctx`) per slot, clamped to the model's trained `context_length` (None: unknown) as the planner clamps it.

    PlanRefused from the one-slot plan propagates: that is the refusal num_parallel 1 would get."""
    wanted_ctx = min(n_ctx, context_length) if context_length else n_ctx
    one = plan_with(1)
    for slots in _FEWER:
        try:
            candidate = plan_with(slots)
        except PlanRefused:
            continue
        if candidate.n_gpu_layers == one.n_gpu_layers and candidate.n_ctx >= wanted_ctx:
            return candidate
    return one
