"""Several models on one scheduler with fake runners and fake devices: races, eviction, queueing, out of memory."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from offload.backend_plan import BackendPlan, Candidate
from offload.config import Settings, load_settings
from offload.errors import OutOfMemory, ServerBusy
from offload.hardware.devices import HardwareSnapshot
from offload.hardware.probe import snapshot
from offload.models.store import StoredModel
from offload.runner.protocol import LoadedInfo, LoadOptions
from offload.scheduler import Scheduler
from tests.fakes.hardware import H100, nvidia_h100
from tests.fakes.runner import FakeRunner, FakeRunnerFactory
from tests.fixtures.gguf_files import write_tiny_gguf
from tests.unit.test_scheduler import collect, cpu_only, request, stored, wait_until

T = TypeVar("T")
MIB = 1 << 20
HEADROOM = 512 * MIB
PER_MODEL = 600 * MIB  # what NVML says each fake GPU runner holds (CUDA context included)


def tiny(tmp_path: Path, name: str) -> StoredModel:
    digest = f"{abs(hash(name)) % 10**12:064d}"
    path = write_tiny_gguf(tmp_path / f"{digest}.gguf")
    return dataclasses.replace(stored(tmp_path, name, digest), model_path=path)


def gpu_machine(free: int) -> HardwareSnapshot:
    return snapshot(nvidia_h100(gpus=(dataclasses.replace(H100, free=free),)))


def on_gpu(free: int) -> Callable[[Settings], BackendPlan]:
    def plan(settings: Settings) -> BackendPlan:
        candidates = (Candidate("cuda", None), Candidate("cpu", None))
        return BackendPlan(candidates, False, "test", machine=gpu_machine(free))

    return plan


def gpu_runner(runner: FakeRunner) -> None:
    runner.gpu_device = "CUDA0"
    runner.gpu_memory = PER_MODEL


def run(
    tmp_path: Path,
    body: Callable[[Scheduler, FakeRunnerFactory], Awaitable[T]],
    *,
    plan: Callable[[Settings], BackendPlan] = cpu_only,
    configure: Callable[[FakeRunner], None] | None = None,
    machine_now: Callable[[], HardwareSnapshot] | None = None,
    **settings: object,
) -> tuple[T, FakeRunnerFactory]:
    factory = FakeRunnerFactory(configure=configure)

    async def main() -> T:
        sched = Scheduler(
            load_settings(home=tmp_path, **settings),
            runner_factory=factory,
            plan_factory=plan,
            snapshot_factory=machine_now or (lambda: gpu_machine(80 << 30)),
        )
        sched.prepare()
        try:
            return await asyncio.wait_for(body(sched, factory), 30)
        finally:
            await sched.close()

    return asyncio.run(main()), factory


def loaded(sched: Scheduler) -> list[str]:
    return sorted(m.name for m in sched.running())


def unloaded(factory: FakeRunnerFactory) -> list[str]:
    """Models whose runner was closed so far (call it inside the test body: closing the scheduler closes all)."""
    return [r.name for r in factory.runners if r.closes]


# ---- several models ---------------------------------------------------------------------------------------------


def test_two_models_interleaved_each_keep_their_runner(tmp_path: Path) -> None:
    a, b = stored(tmp_path, "a:latest", "a" * 64), stored(tmp_path, "b:latest", "b" * 64)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        streams = [collect(sched.generate(m, request())) for m in (a, b, a, b, a)]
        results = await asyncio.gather(*streams)
        assert all(chunks[-1].done for chunks in results)
        assert unloaded(factory) == []
        return loaded(sched)

    names, factory = run(tmp_path, body)
    assert names == ["a:latest", "b:latest"]
    assert factory.starts == 2
    assert sorted(len(r.requests) for r in factory.runners) == [2, 3]


def test_the_least_recently_used_idle_model_is_unloaded_past_the_count(tmp_path: Path) -> None:
    a, b, c = (stored(tmp_path, f"{n}:latest", n * 64) for n in "abc")

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        await collect(sched.generate(a, request()))
        await collect(sched.generate(b, request()))
        await collect(sched.generate(a, request()))  # a is now the more recent
        await collect(sched.generate(c, request()))
        assert unloaded(factory) == ["b:latest"]
        return loaded(sched)

    names, _factory = run(tmp_path, body, max_loaded_models=2)
    assert names == ["a:latest", "c:latest"]


def test_a_model_serving_a_request_is_never_evicted(tmp_path: Path) -> None:
    """a streams (held open); b is idle and more recent; c needs a slot: b goes, a's stream is untouched."""
    a, b, c = (stored(tmp_path, f"{n}:latest", n * 64) for n in "abc")
    gate = asyncio.Event()

    def hold_a(runner: FakeRunner) -> None:
        if runner.name == "a:latest":
            runner.gate = gate

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        streaming = sched.generate(a, request())
        first = await streaming.__anext__()
        await collect(sched.generate(b, request()))
        await collect(sched.generate(c, request()))
        gate.set()
        rest = await collect(streaming)
        assert first.text == "Hello" and rest[-1].done
        assert unloaded(factory) == ["b:latest"]
        return loaded(sched)

    names, _factory = run(tmp_path, body, configure=hold_a, max_loaded_models=2)
    assert names == ["a:latest", "c:latest"]


def test_when_every_model_is_busy_the_request_waits_its_turn(tmp_path: Path) -> None:
    a, b = stored(tmp_path, "a:latest", "a" * 64), stored(tmp_path, "b:latest", "b" * 64)
    gate = asyncio.Event()

    def hold(runner: FakeRunner) -> None:
        runner.gate = gate

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        streaming = sched.generate(a, request())
        await streaming.__anext__()
        waiting = asyncio.create_task(collect(sched.generate(b, request())))
        await asyncio.sleep(0.1)
        assert not waiting.done() and factory.starts == 1  # b is not loaded while a serves
        gate.set()
        await collect(streaming)
        assert (await waiting)[-1].done
        assert loaded(sched) == ["b:latest"] and unloaded(factory) == ["a:latest"]

    run(tmp_path, body, configure=hold, max_loaded_models=1)


def test_concurrent_first_requests_for_different_models_load_one_at_a_time(tmp_path: Path) -> None:
    models = [stored(tmp_path, f"{n}:latest", n * 64) for n in "abc"]
    active = 0
    most = 0

    def track(runner: FakeRunner) -> None:
        original = runner.start

        async def start(timeout: float) -> LoadedInfo:
            nonlocal active, most
            active += 1
            most = max(most, active)
            try:
                await asyncio.sleep(0.02)
                return await original(timeout)
            finally:
                active -= 1

        runner.start = start  # type: ignore[method-assign]

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        await asyncio.gather(*(collect(sched.generate(m, request())) for m in models))
        return loaded(sched)

    names, factory = run(tmp_path, body, configure=track)
    assert names == ["a:latest", "b:latest", "c:latest"]
    assert factory.starts == 3 and most == 1


def test_keep_alive_expires_one_model_while_another_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from offload import scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "_REAP_INTERVAL", 0.02)
    a, b = stored(tmp_path, "a:latest", "a" * 64), stored(tmp_path, "b:latest", "b" * 64)
    gate = asyncio.Event()

    def hold_b(runner: FakeRunner) -> None:
        if runner.name == "b:latest":
            runner.gate = gate

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        await collect(sched.generate(a, request(keep_alive=0.05)))
        streaming = sched.generate(b, request(keep_alive=0.05))
        await streaming.__anext__()
        assert await wait_until(lambda: loaded(sched) == ["b:latest"])
        await asyncio.sleep(0.1)  # b is past its keep_alive but busy: it stays
        assert loaded(sched) == ["b:latest"]
        gate.set()
        await collect(streaming)
        assert await wait_until(lambda: loaded(sched) == [])
        return loaded(sched)

    run(tmp_path, body, configure=hold_b)


# ---- memory -----------------------------------------------------------------------------------------------------


def test_a_model_that_does_not_fit_unloads_the_least_recently_used(tmp_path: Path) -> None:
    """Room for two GPU runners of 600 MiB (plus headroom), the count limit (3 per GPU) not reached: the third
    model is placed by memory, so the least recently used one goes."""
    a, b, c = (tiny(tmp_path, f"{n}:latest") for n in "abc")

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        for model in (a, b, a, c):
            await collect(sched.generate(model, request()))
        assert unloaded(factory) == ["b:latest"]
        return loaded(sched)

    names, factory = run(tmp_path, body, plan=on_gpu(HEADROOM + 1300 * MIB), configure=gpu_runner)
    assert names == ["a:latest", "c:latest"]
    assert all(r.options.n_gpu_layers == 2 for r in factory.runners)  # nobody was squeezed off the GPU


def test_gpu_memory_limit_counts_as_the_budget(tmp_path: Path) -> None:
    a, b = tiny(tmp_path, "a:latest"), tiny(tmp_path, "b:latest")

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        await collect(sched.generate(a, request()))
        await collect(sched.generate(b, request()))
        return loaded(sched)

    names, _ = run(
        tmp_path, body, plan=on_gpu(80 << 30), configure=gpu_runner, gpu_memory_limit=f"{1000 * MIB}"
    )
    assert names == ["b:latest"]  # 80 GB free, but a 1000 MiB limit holds one 600 MiB runner


def test_parallel_slots_multiply_the_context_loaded(tmp_path: Path) -> None:
    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> LoadOptions:
        await collect(sched.generate(stored(tmp_path), request(num_ctx=1024)))
        return factory.runners[0].options

    options, _ = run(tmp_path, body, num_parallel=4)
    assert (options.n_ctx, options.n_seq_max) == (4096, 4)


# ---- out of memory while loading ----------------------------------------------------------------------------


def oom_above(layers: int) -> Callable[[FakeRunner], None]:
    def configure(runner: FakeRunner) -> None:
        gpu_runner(runner)
        runner.fail_start_if = lambda options: (
            OutOfMemory("cudaMalloc failed: out of memory", device="CUDA0", requested=400 * MIB)
            if options.n_gpu_layers > layers
            else None
        )

    return configure


def test_an_out_of_memory_load_is_retried_once_with_a_smaller_plan(tmp_path: Path) -> None:
    """The plan (made at start) thought the GPU empty; another process took memory since. The retry plans
    against free memory measured now: it still puts what fits on the GPU."""
    snapshots: list[int] = []

    def machine_now() -> HardwareSnapshot:
        snapshots.append(1)
        return gpu_machine(HEADROOM + 300 * MIB)  # another process took the rest since the server started

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        await collect(sched.generate(tiny(tmp_path, "a:latest"), request()))

    _, factory = run(tmp_path, body, plan=on_gpu(80 << 30), configure=oom_above(1), machine_now=machine_now)
    # The tiny model's layers are a few KB beside the 523 MiB CUDA context: 300 MiB free now holds no context,
    # so the retry keeps every layer on the host (planner.shrink_after_oom's cases are in test_planner).
    assert [r.options.n_gpu_layers for r in factory.runners] == [2, 0]
    assert len(snapshots) == 1 and factory.runners[-1].info is not None


def test_an_out_of_memory_retry_that_fails_again_reports_both(tmp_path: Path) -> None:
    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> OutOfMemory:
        with pytest.raises(OutOfMemory) as caught:
            await collect(sched.generate(tiny(tmp_path, "a:latest"), request()))
        return caught.value

    error, factory = run(
        tmp_path, body, plan=on_gpu(80 << 30), configure=oom_above(-1), machine_now=lambda: gpu_machine(80 << 30)
    )
    assert len(factory.runners) == 2  # once, then once more: no loop, no fallback to another backend
    assert error.message.count("out of memory") == 2 and "retried with" in error.message
    assert error.device == "CUDA0"


def test_a_forced_num_gpu_is_not_shrunk_after_out_of_memory(tmp_path: Path) -> None:
    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        with pytest.raises(OutOfMemory):
            await collect(sched.generate(tiny(tmp_path, "a:latest"), request(num_gpu=2)))

    _, factory = run(tmp_path, body, plan=on_gpu(80 << 30), configure=oom_above(1))
    assert len(factory.runners) == 1


# ---- the queue --------------------------------------------------------------------------------------------------


def test_past_the_queue_the_answer_is_server_busy_and_every_admitted_request_ends(tmp_path: Path) -> None:
    model = stored(tmp_path)
    gate = asyncio.Event()

    def hold(runner: FakeRunner) -> None:
        runner.gate = gate

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, int]:
        streams = [sched.generate(model, request()) for _ in range(6)]
        tasks = [asyncio.create_task(collect(s)) for s in streams]
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        busy = [r for r in results if isinstance(r, ServerBusy)]
        served = [r for r in results if isinstance(r, list) and r[-1].done]
        assert all(e.retry_after >= 1 and "OFFLOAD_MAX_QUEUE" in e.message for e in busy)
        # Once the queue drained, a new request is admitted again.
        assert (await collect(sched.generate(model, request())))[-1].done
        return len(served), len(busy)

    (served, busy), _ = run(tmp_path, body, configure=hold, max_queue=2, num_parallel=1)
    assert (served, busy) == (3, 3)  # 1 slot + 2 waiting; the rest refused at once


def test_a_waiting_request_that_is_cancelled_leaves_the_queue(tmp_path: Path) -> None:
    model = stored(tmp_path)
    gate = asyncio.Event()

    def hold(runner: FakeRunner) -> None:
        runner.gate = gate

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        streaming = sched.generate(model, request())
        await streaming.__anext__()
        waiting = asyncio.create_task(collect(sched.generate(model, request(num_ctx=8192))))  # must drain first
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()
        await collect(streaming)
        assert sched._in_flight == {}

    run(tmp_path, body, configure=hold, max_queue=1)


def test_max_loaded_default_is_three_per_gpu(tmp_path: Path) -> None:
    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> int:
        return sched.max_loaded()

    assert run(tmp_path, body)[0] == 3
    assert run(tmp_path, body, plan=on_gpu(80 << 30))[0] == 3
    assert run(tmp_path, body, max_loaded_models=7)[0] == 7
    assert math.isfinite(run(tmp_path, body)[0])
