"""Sequence slots per loaded model: num_parallel "auto" sized by the planner at load time (planner.auto_parallel),
an explicit number used as given; the loaded model's slots in its LoadOptions, /api/ps and its admission limit."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from offload.backend_plan import BackendPlan, Candidate
from offload.config import Settings
from offload.errors import ServerBusy
from offload.hardware.devices import HardwareSnapshot
from offload.hardware.probe import snapshot
from offload.models.gguf import read_gguf
from offload.planner import CPU, DEFAULT_HEADROOM, GPU_OVERHEAD, DeviceBudget, model_memory, usage_of
from offload.runner.protocol import LoadOptions
from offload.scheduler import Scheduler
from tests.fakes import hardware
from tests.fakes.runner import FakeRunner, FakeRunnerFactory
from tests.unit.test_scheduler import collect, request, stored
from tests.unit.test_scheduler_models import gpu_runner, on_gpu, run, tiny

TRAINED = 256  # the tiny model's context: every load below is clamped to it
GIB = 1 << 30


def need(tmp_path: Path, slots: int, *, gpu: bool) -> int:
    """What the planner says the tiny model needs at `slots` slots: on the GPU with every layer, or on the CPU."""
    memory = model_memory(read_gguf(tiny(tmp_path, "probe:latest").model_path))
    if gpu:
        devices = [DeviceBudget("CUDA0", 80 * GIB, overhead=GPU_OVERHEAD["cuda"]), DeviceBudget(CPU, 80 * GIB)]
        usage = usage_of(memory, devices, n_gpu=memory.layers_total, n_ctx=TRAINED, parallel=slots)
        return usage["CUDA0"].total
    usage = usage_of(memory, [DeviceBudget(CPU, 80 * GIB)], n_gpu=0, n_ctx=TRAINED, parallel=slots)
    return usage[CPU].total


def on_cpu(memory_available: int) -> Callable[[Settings], BackendPlan]:
    def plan(settings: Settings) -> BackendPlan:
        machine: HardwareSnapshot = snapshot(hardware.cpu_only())
        machine = dataclasses.replace(machine, cpu=dataclasses.replace(machine.cpu, memory_available=memory_available))
        return BackendPlan((Candidate("cpu", None),), False, "test", machine=machine)

    return plan


def first_options(tmp_path: Path, plan: Callable[[Settings], BackendPlan], num_parallel: object) -> LoadOptions:
    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> LoadOptions:
        await collect(sched.generate(tiny(tmp_path, "a:latest"), request()))
        (entry,) = sched.running()
        assert entry.placement["parallel"] == factory.runners[0].options.n_seq_max  # what /api/ps shows
        return factory.runners[0].options

    return run(tmp_path, body, plan=plan, configure=gpu_runner, num_parallel=num_parallel)[0]


@pytest.mark.parametrize(
    ("gpu_room", "setting", "slots", "layers"),
    [
        pytest.param(lambda p: 70 * GIB, "auto", 4, 2, id="auto-4-fit"),
        pytest.param(lambda p: need(p, 2, gpu=True), "auto", 2, 2, id="auto-4-would-push-layers-off-2-fit"),
        pytest.param(lambda p: need(p, 1, gpu=True), "auto", 1, 2, id="auto-only-1-fits"),
        pytest.param(lambda p: 70 * GIB, 1, 1, 2, id="explicit-1-on-a-big-gpu"),
        pytest.param(lambda p: need(p, 2, gpu=True), 4, 4, 1, id="explicit-4-moves-a-layer-off-as-before"),
    ],
)
def test_slots_on_a_gpu(
    tmp_path: Path, gpu_room: Callable[[Path], int], setting: object, slots: int, layers: int
) -> None:
    free = DEFAULT_HEADROOM + gpu_room(tmp_path)
    options = first_options(tmp_path, on_gpu(free), num_parallel=setting)
    assert (options.n_seq_max, options.n_ctx, options.n_gpu_layers) == (slots, slots * TRAINED, layers)


@pytest.mark.parametrize(
    ("cpu_room", "setting", "slots"),
    [
        pytest.param(lambda p: 70 * GIB, "auto", 4, id="auto-plenty"),
        pytest.param(lambda p: need(p, 4, gpu=False) - 1, "auto", 2, id="auto-4-do-not-fit"),
        pytest.param(lambda p: need(p, 1, gpu=False) - 1, "auto", 1, id="auto-not-even-1-fits"),
        pytest.param(lambda p: 70 * GIB, 2, 2, id="explicit-2"),
    ],
)
def test_slots_on_the_cpu(tmp_path: Path, cpu_room: Callable[[Path], int], setting: object, slots: int) -> None:
    options = first_options(tmp_path, on_cpu(DEFAULT_HEADROOM + cpu_room(tmp_path)), num_parallel=setting)
    # The CPU load asks for the default 4096 per slot (the runner clamps it to what the model was trained on).
    assert (options.backend, options.n_seq_max, options.n_ctx) == ("cpu", slots, slots * 4096)


@pytest.mark.parametrize(("setting", "slots"), [("auto", 4), (2, 2)])
def test_5_requests_decode_in_the_slots_and_the_queue_holds_1(tmp_path: Path, setting: object, slots: int) -> None:
    """5 requests at once with a queue of 1: "auto" (4 slots here) decodes 4 and admits all 5; an explicit 2
    decodes 2, admits 3 and refuses 2 at once. Past the limit the refusal names the loaded model's slots."""
    model = stored(tmp_path)
    gate = asyncio.Event()

    def hold(runner: FakeRunner) -> None:
        runner.gate = gate

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        tasks = [asyncio.create_task(collect(sched.generate(model, request()))) for _ in range(5)]
        await asyncio.sleep(0.1)
        runner = factory.runners[0]
        admitted = sched._in_flight[model.name.display]
        assert (runner.options.n_seq_max, runner.decoding, admitted) == (slots, slots, min(5, slots + 1))
        with pytest.raises(ServerBusy, match=f"{slots} served at once, 1 may wait"):
            await collect(sched.generate(model, request()))
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, list) and r[-1].done for r in results) == admitted
        assert sum(isinstance(r, ServerBusy) for r in results) == 5 - admitted
        assert runner.most_decoding == slots

    run(tmp_path, body, configure=hold, max_queue=1, num_parallel=setting)


def test_before_a_load_admission_counts_the_setting_then_the_loaded_slots(tmp_path: Path) -> None:
    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, int]:
        before = sched.parallel_of("a:latest")
        await collect(sched.generate(tiny(tmp_path, "a:latest"), request()))
        return before, sched.parallel_of("a:latest")

    free = DEFAULT_HEADROOM + need(tmp_path, 1, gpu=True)
    assert run(tmp_path, body, plan=on_gpu(free), configure=gpu_runner)[0] == (4, 1)


def test_a_bigger_context_reloads_and_sizes_the_slots_again(tmp_path: Path) -> None:
    """The reuse check is per sequence: a smaller num_ctx shares the runner, a bigger one reloads it."""
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        await collect(sched.generate(model, request(num_ctx=2048)))
        await collect(sched.generate(model, request(num_ctx=1024)))
        await collect(sched.generate(model, request(num_ctx=8192)))

    _, factory = run(tmp_path, body)
    assert [(r.options.n_ctx, r.options.n_seq_max) for r in factory.runners] == [(4 * 2048, 4), (4 * 8192, 4)]
    assert len(factory.runners[0].requests) == 2

