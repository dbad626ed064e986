"""Pipelining (planner.pipeline_lanes): two equal contexts only with every layer on a GPU and an even count of at
least 8 slots; the planner then counts each context's compute buffers, and nothing else changes."""

from __future__ import annotations

import pytest

from offload.planner import CPU, DeviceBudget, pipeline_lanes, plan, usage_of
from tests.unit.test_planner import MEMORY_1B

GIB = 1 << 30
CTX = 4096


@pytest.mark.parametrize(
    ("parallel", "full_offload", "enabled", "expected"),
    [
        (64, True, True, (32, 32)),
        (8, True, True, (4, 4)),
        (6, True, True, (6,)),  # fewer than 8
        (10, True, True, (5, 5)),
        (9, True, True, (9,)),  # odd: halves would differ in cells per sequence
        (64, False, True, (64,)),  # layers on the CPU
        (64, True, False, (64,)),  # the pipeline setting off
        (1, True, True, (1,)),
    ],
)
def test_pipeline_lanes(parallel: int, full_offload: bool, enabled: bool, expected: tuple[int, ...]) -> None:
    assert pipeline_lanes(parallel, full_offload=full_offload, enabled=enabled) == expected


def usage(n_gpu: int, parallel: int, pipeline: bool) -> dict[str, tuple[int, int, int]]:
    devices = [DeviceBudget("CUDA0", 80 * GIB), DeviceBudget(CPU, 64 * GIB)]
    use = usage_of(MEMORY_1B, devices, n_gpu=n_gpu, n_ctx=CTX, parallel=parallel, pipeline=pipeline)
    return {name: (u.weights, u.kv, u.compute) for name, u in use.items()}


def test_a_pipelined_load_counts_two_compute_buffers_and_the_same_kv() -> None:
    full = MEMORY_1B.layers_total
    one, two = usage(full, 8, False), usage(full, 8, True)
    for device in ("CUDA0", CPU):
        assert two[device][:2] == one[device][:2]  # weights and KV cache: the same
        assert two[device][2] == 2 * one[device][2] > 0


@pytest.mark.parametrize(("n_gpu", "parallel"), [(MEMORY_1B.layers_total - 1, 8), (MEMORY_1B.layers_total, 4)])
def test_no_second_context_without_its_conditions(n_gpu: int, parallel: int) -> None:
    assert usage(n_gpu, parallel, True) == usage(n_gpu, parallel, False)


def test_the_plan_with_the_pipeline_needs_more_gpu_memory() -> None:
    devices = [DeviceBudget("CUDA0", 80 * GIB), DeviceBudget(CPU, 64 * GIB)]
    off = plan(MEMORY_1B, devices, n_ctx=CTX, parallel=8, num_ctx_min=CTX)
    on = plan(MEMORY_1B, devices, n_ctx=CTX, parallel=8, num_ctx_min=CTX, pipeline=True)
    assert on.n_gpu_layers == off.n_gpu_layers == MEMORY_1B.layers_total
    assert on.usage["CUDA0"].total - off.usage["CUDA0"].total == off.usage["CUDA0"].compute
