"""num_parallel "auto" (planner.auto_parallel): 4 slots when they keep the one-slot plan's GPU layers and the context
asked for per slot, else 2, else 1; on the CPU, the most of 4, 2, 1 whose KV caches fit its memory. The machines
are sized from the planner's own numbers for llama 1B Q4_K_M, so each row sits just above one slot count's need."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from offload.planner import AUTO_PARALLEL, CPU, DeviceBudget, Plan, PlanRefused, auto_parallel, plan, usage_of
from tests.unit.test_planner import MEMORY_1B

MIB = 1 << 20
GIB = 1 << 30
HEADROOM = 256 * MIB
CTX = 4096
ROOMY = 64 * GIB


def gpu_need(slots: int) -> int:
    """Bytes CUDA0 needs for every layer of the model at CTX per slot."""
    devices = [DeviceBudget("CUDA0", ROOMY), DeviceBudget(CPU, ROOMY)]
    use = usage_of(MEMORY_1B, devices, n_gpu=MEMORY_1B.layers_total, n_ctx=CTX, parallel=slots, headroom=HEADROOM)
    return use["CUDA0"].total


def cpu_need(slots: int) -> int:
    use = usage_of(MEMORY_1B, [DeviceBudget(CPU, ROOMY)], n_gpu=0, n_ctx=CTX, parallel=slots, headroom=HEADROOM)
    return use[CPU].total


def choose(devices: list[DeviceBudget], *, ctx_forced: bool) -> Plan:
    def plan_with(slots: int) -> Plan:
        return plan(
            MEMORY_1B,
            devices,
            n_ctx=CTX,
            parallel=slots,
            num_ctx_min=CTX if ctx_forced else 2048,
            headroom=HEADROOM,
        )

    return auto_parallel(plan_with, CTX)


def gpu(free: int) -> list[DeviceBudget]:
    return [DeviceBudget("CUDA0", HEADROOM + free), DeviceBudget(CPU, ROOMY)]


@pytest.mark.parametrize("ctx_forced", [False, True], ids=["default-ctx", "ctx-asked"])
@pytest.mark.parametrize(
    ("room", "expected"),
    [
        pytest.param(lambda: 80 * GIB, 4, id="a-big-gpu-4-fit"),
        pytest.param(lambda: gpu_need(4), 4, id="4-fit-exactly"),
        pytest.param(lambda: gpu_need(4) - MIB, 2, id="4-would-shrink-the-context-or-push-a-layer-off"),
        pytest.param(lambda: gpu_need(2), 2, id="only-2-fit"),
        pytest.param(lambda: gpu_need(2) - MIB, 1, id="2-would-not-fit"),
        pytest.param(lambda: gpu_need(1), 1, id="only-1-fits"),
        pytest.param(lambda: gpu_need(1) // 2, 1, id="even-1-slot-leaves-layers-on-the-cpu"),
    ],
)
def test_auto_on_a_gpu(room: Callable[[], int], expected: int, ctx_forced: bool) -> None:
    devices = gpu(room())
    chosen = choose(devices, ctx_forced=ctx_forced)
    one = plan(MEMORY_1B, devices, n_ctx=CTX, num_ctx_min=CTX if ctx_forced else 2048, headroom=HEADROOM)
    assert chosen.parallel == expected
    assert chosen.n_gpu_layers == one.n_gpu_layers  # slots never cost a GPU layer
    if expected > 1:
        assert chosen.n_ctx == CTX  # nor the context of a slot


def test_4_slots_are_kept_only_with_every_layer_the_one_slot_plan_has() -> None:
    """Just under 4 slots' need with the context asked for: the planner would fit 4 slots by moving a layer to the
    CPU; auto takes 2 instead and keeps the layer."""
    devices = gpu(gpu_need(4) - MIB)
    four = plan(MEMORY_1B, devices, n_ctx=CTX, parallel=4, num_ctx_min=CTX, headroom=HEADROOM)
    assert four.n_gpu_layers < MEMORY_1B.layers_total
    chosen = choose(devices, ctx_forced=True)
    assert (chosen.parallel, chosen.n_gpu_layers) == (2, MEMORY_1B.layers_total)


@pytest.mark.parametrize(
    ("room", "expected"),
    [
        pytest.param(lambda: ROOMY, 4, id="plenty"),
        pytest.param(lambda: cpu_need(4), 4, id="4-fit-exactly"),
        pytest.param(lambda: cpu_need(4) - MIB, 2, id="only-2-fit"),
        pytest.param(lambda: cpu_need(2) - MIB, 1, id="only-1-fits"),
    ],
)
def test_auto_on_the_cpu(room: Callable[[], int], expected: int) -> None:
    """The CPU backend: only the CPU budget, the context forced (there are no layers to move)."""
    chosen = choose([DeviceBudget(CPU, HEADROOM + room())], ctx_forced=True)
    assert (chosen.parallel, chosen.n_gpu_layers, chosen.n_ctx) == (expected, 0, CTX)


def test_when_not_even_one_slot_fits_the_one_slot_refusal_is_raised() -> None:
    with pytest.raises(PlanRefused, match=r"x1,"):
        choose([DeviceBudget(CPU, HEADROOM + cpu_need(1) - MIB)], ctx_forced=True)


def test_the_first_try_is_llama_servers_default() -> None:
    asked: list[int] = []

    def plan_with(slots: int) -> Plan:
        asked.append(slots)
        return plan(MEMORY_1B, gpu(80 * GIB), n_ctx=CTX, parallel=slots, headroom=HEADROOM)

    assert auto_parallel(plan_with, CTX).parallel == AUTO_PARALLEL == 4
    assert asked == [1, 4]  # the one-slot plan is the yardstick; 2 is not needed
