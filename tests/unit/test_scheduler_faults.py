"""Scheduler with fake runners when things break: /health's view of dead, stopped and stuck runners; model files
verified before each load and changed under a loaded runner."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from offload import scheduler as scheduler_module
from offload.config import load_settings
from offload.errors import CorruptBlob, RunnerCrashed, ServerBusy
from offload.models.store import StoredModel
from offload.scheduler import Scheduler
from tests.fakes.runner import FakeRunner, FakeRunnerFactory
from tests.unit.test_scheduler import collect, cpu_only, request, run_with, stored


def test_health_is_empty_with_nothing_loaded_and_with_a_well_runner(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[dict[str, str], dict[str, str]]:
        before = await sched.health()
        await collect(sched.generate(model, request()))
        return before, await sched.health()

    (before, after), _ = run_with(tmp_path, body)
    assert before == {} and after == {}


def test_health_names_a_dead_runner_until_the_next_request_replaces_it(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[dict[str, str], dict[str, str]]:
        await collect(sched.generate(model, request()))
        factory.runners[0].die()
        dead = await sched.health()
        await collect(sched.generate(model, request()))
        return dead, await sched.health()

    (dead, replaced), factory = run_with(tmp_path, body)
    assert list(dead) == ["tiny:latest"]
    assert "not running" in dead["tiny:latest"]
    assert replaced == {}
    assert factory.starts == 2


@pytest.mark.parametrize(
    ("wedged", "busy", "problem"),
    [
        (True, 0.0, "did not answer"),  # a stopped process
        (False, 0.0, None),
        (False, scheduler_module.STEP_LIMIT_S - 1, None),  # a long step is not a hang
        (False, scheduler_module.STEP_LIMIT_S + 1, "inside one step"),
    ],
)
def test_health_names_a_runner_that_does_not_answer_or_is_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wedged: bool, busy: float, problem: str | None
) -> None:
    monkeypatch.setattr(scheduler_module, "HEALTH_TIMEOUT_S", 0.05)
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> dict[str, str]:
        await collect(sched.generate(model, request()))
        factory.runners[0].wedged = wedged
        factory.runners[0].busy = busy
        return await sched.health()

    problems, _ = run_with(tmp_path, body)
    if problem is None:
        assert problems == {}
    else:
        assert problem in problems["tiny:latest"]


def test_each_load_verifies_the_file_and_a_changed_file_is_loaded_again(tmp_path: Path) -> None:
    model = stored(tmp_path)
    model.model_path.write_bytes(b"weights")
    verified: list[str] = []
    broken: list[CorruptBlob] = []

    def verify(checked: StoredModel) -> None:
        verified.append(checked.model_digest)
        if broken:
            raise broken[0]

    factory = FakeRunnerFactory()

    async def main() -> None:
        sched = Scheduler(load_settings(home=tmp_path), runner_factory=factory, plan_factory=cpu_only, verify=verify)
        try:
            await collect(sched.generate(model, request()))
            await collect(sched.generate(model, request()))  # loaded and unchanged: served, not verified again
            assert (factory.starts, len(verified)) == (1, 1)
            os.truncate(model.model_path, 3)  # changed under the loaded runner: the next request reloads
            await collect(sched.generate(model, request()))
            assert (factory.starts, len(verified)) == (2, 2)
            model.model_path.write_bytes(b"other weights")
            broken.append(CorruptBlob("the model file of tiny:latest no longer matches its sha256 digest"))
            with pytest.raises(CorruptBlob):
                await collect(sched.generate(model, request()))
            assert factory.starts == 2  # nothing was loaded from the changed file
        finally:
            await sched.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_close_ends_running_generations_and_refuses_new_ones_as_shutting_down(tmp_path: Path) -> None:
    model = stored(tmp_path)
    gate = asyncio.Event()

    def hold_and_crash_on_close(runner: FakeRunner) -> None:
        runner.gate = gate
        real_close = runner.close

        async def close() -> None:  # as RunnerProcess.close does to its open requests
            runner.fail_mid_stream = RunnerCrashed(f"runner for {runner.name} was stopped")
            gate.set()
            await real_close()

        runner.close = close  # type: ignore[method-assign]

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[ServerBusy | None, ServerBusy]:
        running = sched.generate(model, request())
        await anext(running)
        await sched.close()
        ended: ServerBusy | None = None
        try:
            await collect(running)
        except ServerBusy as exc:
            ended = exc
        with pytest.raises(ServerBusy) as refused:
            await collect(sched.generate(model, request()))
        return ended, refused.value

    (ended, refused), factory = run_with(tmp_path, body, configure=hold_and_crash_on_close)
    assert ended is not None and ended.message == "the server is shutting down"
    assert refused.message == "the server is shutting down"
    assert factory.starts == 1
