"""Whether a load's slots are split over two llama.cpp contexts (pure; no I/O).

With every layer on a GPU, llama_decode only queues the GPU's work; the host then waits, samples every sequence
and emits text while the GPU idles. Two contexts over the same weights, each with half the slots, let the GPU
evaluate one half while the host samples the other (runner/engine.py). The runner decides with this function
after the load, the planner with it while planning: each context has its own compute buffers, counted twice.
"""

from __future__ import annotations

PIPELINE_MIN_SLOTS = 8  # each of the two contexts gets at least 4 sequences


def pipeline_lanes(parallel: int, *, full_offload: bool, enabled: bool) -> tuple[int, ...]:
    """The slots of each llama.cpp context for `parallel` slots: two equal halves when `enabled` (the pipeline
    setting), every layer is on a GPU (`full_offload`) and `parallel` is even and at least PIPELINE_MIN_SLOTS
    (equal halves give a sequence the same cells in both); else one context of all. On the CPU, or with layers
    on it, the host that would sample is busy evaluating: nothing to overlap."""
    if enabled and full_offload and parallel >= PIPELINE_MIN_SLOTS and parallel % 2 == 0:
        return (parallel // 2, parallel // 2)
    return (parallel,)
