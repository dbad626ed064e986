"""The scheduler and LoRA adapters: the load carries them, base + adapter is its own runner, the plan counts them."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path

from offload import scheduler as scheduler_module
from offload.config import load_settings
from offload.models.gguf import read_gguf
from offload.models.names import parse_name
from offload.models.store import StoredAdapter, StoredModel
from offload.planner.memory import model_memory
from offload.scheduler import Scheduler
from tests.fakes.hardware import H100
from tests.fakes.runner import FakeRunnerFactory
from tests.fixtures.lora import write_lora
from tests.unit.test_scheduler import collect, cpu_only, gpu_plan_on, real_tiny_model, request


def with_adapter(model: StoredModel, path: Path, name: str = "tuned:latest") -> StoredModel:
    adapter = StoredAdapter("sha256:" + "c" * 64, path, path.stat().st_size)
    return dataclasses.replace(model, name=parse_name(name), adapters=(adapter,))


def test_the_load_carries_the_adapters_and_base_and_tuned_get_their_own_runners(tmp_path: Path) -> None:
    base = real_tiny_model(tmp_path)
    tuned = with_adapter(base, write_lora(tmp_path / "lora.gguf", base.model_path))
    factory = FakeRunnerFactory()

    async def main() -> None:
        sched = Scheduler(load_settings(home=tmp_path), runner_factory=factory, plan_factory=cpu_only)
        try:
            await collect(sched.generate(base, request()))
            await collect(sched.generate(tuned, request()))
            await collect(sched.generate(base, request()))
        finally:
            await sched.close()

    asyncio.run(main())
    assert [r.options.lora_adapters for r in factory.runners] == [(), ((str(tmp_path / "lora.gguf"), 1.0),)]


def test_the_same_name_recreated_with_another_adapter_is_reloaded(tmp_path: Path) -> None:
    base = real_tiny_model(tmp_path)
    first = with_adapter(base, write_lora(tmp_path / "a.gguf", base.model_path, seed=1))
    second = dataclasses.replace(
        first, adapters=(StoredAdapter("sha256:" + "d" * 64, tmp_path / "a.gguf", first.adapters[0].size),)
    )
    factory = FakeRunnerFactory()

    async def main() -> None:
        sched = Scheduler(load_settings(home=tmp_path), runner_factory=factory, plan_factory=cpu_only)
        try:
            await sched.load(first, math.inf)
            await sched.load(first, math.inf)
            await sched.load(second, math.inf)
        finally:
            await sched.close()

    asyncio.run(main())
    assert len(factory.runners) == 2


def test_the_plan_counts_the_adapter_as_weights(tmp_path: Path) -> None:
    base = real_tiny_model(tmp_path)
    lora = write_lora(tmp_path / "lora.gguf", base.model_path)
    tuned = with_adapter(base, lora)
    plain = model_memory(read_gguf(base.model_path))
    counted = scheduler_module._weights(tuned, read_gguf(base.model_path))
    assert counted.weight_bytes - plain.weight_bytes == sum(t.n_bytes for t in read_gguf(lora).tensors)
    factory = FakeRunnerFactory()

    async def main() -> None:
        sched = Scheduler(load_settings(home=tmp_path), runner_factory=factory, plan_factory=gpu_plan_on(H100))
        try:
            await sched.load(tuned, math.inf)
        finally:
            await sched.close()

    asyncio.run(main())
    assert factory.runners[0].options.lora_adapters == ((str(lora), 1.0),)
    assert factory.runners[0].options.n_gpu_layers == 2
