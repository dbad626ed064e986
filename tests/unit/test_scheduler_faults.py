"""Scheduler with fake runners when things break: /health's view of dead, stopped and stuck runners."""

from __future__ import annotations

from pathlib import Path

import pytest

from offload import scheduler as scheduler_module
from offload.scheduler import Scheduler
from tests.fakes.runner import FakeRunnerFactory
from tests.unit.test_scheduler import collect, request, run_with, stored


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
