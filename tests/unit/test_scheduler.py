"""Scheduler with fake runners: load on first use, reuse, keep_alive, replacing dead runners, context changes."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from offload import scheduler as scheduler_module
from offload.backend_plan import ALL_LAYERS, BackendPlan, Candidate, gpu_layers_for
from offload.config import Settings, load_settings
from offload.errors import BackendUnusable, PlanRefused, RunnerCrashed, RunnerStartFailed
from offload.generation import Chunk, EmbedRequest, GenerateRequest
from offload.hardware.probe import snapshot
from offload.models.names import parse_name
from offload.models.store import StoredModel
from offload.runner.protocol import LoadOptions
from offload.scheduler import Runner, Scheduler, expired, wanted_context
from tests.fakes.hardware import H100, FakeGpu, nvidia_h100
from tests.fakes.runner import FakeRunner, FakeRunnerFactory
from tests.fixtures.gguf_files import write_tiny_gguf

T = TypeVar("T")
POLL_LIMIT = 5.0  # seconds a test waits for the reaper before it gives up: only a broken reaper gets near it


def stored(tmp_path: Path, name: str = "tiny:latest", digest: str = "a" * 64) -> StoredModel:
    return StoredModel(
        name=parse_name(name),
        digest="sha256:" + "f" * 64,
        size=1000,
        modified_at=datetime.now(UTC),
        model_digest="sha256:" + digest,
        model_path=tmp_path / f"sha256-{digest}",
        template=None,
        system=None,
        parameters={},
        license=None,
    )


def request(**kwargs: object) -> GenerateRequest:
    return GenerateRequest(model="tiny:latest", prompt="hi", **kwargs)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[Chunk], into: list[Chunk] | None = None) -> list[Chunk]:
    """Every chunk of `stream`; `into` sees them as they come (so a test still has them when the stream raises)."""
    got = [] if into is None else into
    async for chunk in stream:
        got.append(chunk)
    return got


def per_sequence(options: LoadOptions) -> int:
    """The context each slot gets: the server loads num_ctx x n_seq_max (4 slots under the default "auto" here)."""
    return options.n_ctx // options.n_seq_max


def cpu_only(settings: Settings) -> BackendPlan:
    return BackendPlan((Candidate("cpu", None),), forced=False, reason="tests run on the CPU")


def run_with(
    tmp_path: Path,
    body: Callable[[Scheduler, FakeRunnerFactory], Awaitable[T]],
    *,
    configure: Callable[[FakeRunner], None] | None = None,
    **settings: object,
) -> tuple[T, FakeRunnerFactory]:
    """Run `body` against a fresh Scheduler on fake runners inside one event loop; the scheduler is closed after."""
    factory = FakeRunnerFactory(configure=configure)

    async def main() -> T:
        sched = Scheduler(load_settings(home=tmp_path, **settings), runner_factory=factory, plan_factory=cpu_only)
        try:
            return await asyncio.wait_for(body(sched, factory), 30)  # a hang fails in 30 s, not at pytest's limit
        finally:
            await sched.close()

    return asyncio.run(main()), factory


async def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + POLL_LIMIT
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def test_fake_runner_satisfies_the_protocol(tmp_path: Path) -> None:
    factory = FakeRunnerFactory()
    runner: Runner = factory(LoadOptions(model_path="x", n_ctx=256), "x")
    assert runner.info is None
    assert factory.runners == [runner]


# ---- loading and reuse ----------------------------------------------------------------------------------------


def test_first_request_loads_second_reuses(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[list[Chunk], list[Chunk]]:
        first = await collect(sched.generate(model, request()))
        second = await collect(sched.generate(model, request()))
        return first, second

    (first, second), factory = run_with(tmp_path, body)
    assert factory.starts == 1
    assert [c.text for c in first] == ["Hello", " world", ""]
    assert first[-1].done and second[-1].done
    assert first[-1].load_duration > 0
    assert second[-1].load_duration == 0
    assert all(c.load_duration == 0 for c in first[:-1])
    assert len(factory.runners[0].requests) == 2


def test_load_options_come_from_settings_and_model(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        await collect(sched.generate(model, request()))

    _, factory = run_with(tmp_path, body, num_ctx=2048, num_batch=64, num_threads=3)
    options = factory.runners[0].options
    assert options.model_path == str(model.model_path)
    assert (options.n_batch, options.n_threads) == (64, 3)
    # num_parallel "auto" on a machine whose memory is unknown: 4 slots, each with the 2048 asked for.
    assert (options.n_ctx, options.n_seq_max) == (4 * 2048, 4)
    assert factory.runners[0].name == "tiny:latest"
    assert options.pipeline  # the setting's default; the runner decides whether the load allows it


def test_the_pipeline_setting_reaches_the_runner(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        await collect(sched.generate(model, request()))

    _, factory = run_with(tmp_path, body, pipeline=False)
    assert factory.runners[0].options.pipeline is False


def test_request_num_ctx_is_used_for_the_load(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        await collect(sched.generate(model, request(num_ctx=1024)))

    _, factory = run_with(tmp_path, body)
    assert per_sequence(factory.runners[0].options) == 1024


def test_load_reports_duration_once(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, int]:
        return await sched.load(model, None), await sched.load(model, None)

    (first, second), factory = run_with(tmp_path, body)
    assert first > 0
    assert second == 0
    assert factory.starts == 1


def test_embed_and_tokenize_share_the_runner(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, int, list[int]]:
        first = await sched.embed(model, EmbedRequest(model="tiny", inputs=("ab", "c")))
        second = await sched.embed(model, EmbedRequest(model="tiny", inputs=("ab",)))
        tokens = await sched.tokenize(model, "hi")
        assert first.embeddings == ((2.0, 1.0), (1.0, 1.0))
        return first.load_duration, second.load_duration, tokens

    (first, second, tokens), factory = run_with(tmp_path, body)
    assert first > 0
    assert second == 0
    assert tokens == [ord("h"), ord("i")]
    assert factory.starts == 1


def test_two_concurrent_first_requests_start_one_runner(tmp_path: Path) -> None:
    model = stored(tmp_path)

    def slow(runner: FakeRunner) -> None:
        runner.start_delay = 0.05

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[list[Chunk]]:
        return list(await asyncio.gather(*(collect(sched.generate(model, request())) for _ in range(2))))

    results, factory = run_with(tmp_path, body, configure=slow)
    assert factory.starts == 1
    assert all(chunks[-1].done for chunks in results)
    assert sorted(chunks[-1].load_duration > 0 for chunks in results) == [False, True]


def test_different_models_get_different_runners(tmp_path: Path) -> None:
    a, b = stored(tmp_path, "a:1", "a" * 64), stored(tmp_path, "b:1", "b" * 64)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[str]:
        await collect(sched.generate(a, request()))
        await collect(sched.generate(b, request()))
        return sorted(m.name for m in sched.running())

    names, factory = run_with(tmp_path, body)
    assert names == ["a:1", "b:1"]
    assert factory.starts == 2


def test_changed_model_digest_reloads(tmp_path: Path) -> None:
    old, new = stored(tmp_path, digest="a" * 64), stored(tmp_path, digest="b" * 64)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> str:
        await collect(sched.generate(old, request()))
        await collect(sched.generate(new, request()))
        return sched.running()[0].model_digest

    digest, factory = run_with(tmp_path, body)
    assert digest == new.model_digest
    assert factory.starts == 2
    assert factory.runners[0].closes == 1


# ---- failures -------------------------------------------------------------------------------------------------


def test_dead_runner_is_replaced_on_next_request(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, list[Chunk]]:
        await collect(sched.generate(model, request()))
        factory.runners[0].die()
        visible = len(sched.running())
        return visible, await collect(sched.generate(model, request()))

    (visible, chunks), factory = run_with(tmp_path, body)
    assert visible == 0  # a dead runner is not reported as running
    assert factory.starts == 2
    assert factory.runners[0].closes >= 1
    assert chunks[-1].done and chunks[-1].load_duration > 0


def test_crash_mid_stream_propagates_and_next_request_restarts(tmp_path: Path) -> None:
    model = stored(tmp_path)
    crashes = iter([True, False])

    def configure(runner: FakeRunner) -> None:
        if next(crashes):
            runner.fail_mid_stream = RunnerCrashed("runner died")

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[Chunk]:
        got: list[Chunk] = []
        with pytest.raises(RunnerCrashed):
            await collect(sched.generate(model, request()), into=got)
        assert [c.text for c in got] == ["Hello"]
        return await collect(sched.generate(model, request()))

    chunks, factory = run_with(tmp_path, body, configure=configure)
    assert chunks[-1].done
    assert factory.starts == 2


def test_failed_start_is_raised_and_retried_next_time(tmp_path: Path) -> None:
    model = stored(tmp_path)
    failures = iter([True, False])

    def configure(runner: FakeRunner) -> None:
        if next(failures):
            runner.fail_start = RunnerStartFailed("no backend")

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, list[Chunk]]:
        with pytest.raises(RunnerStartFailed):
            await collect(sched.generate(model, request()))
        after_failure = len(sched.running())
        return after_failure, await collect(sched.generate(model, request()))

    (after_failure, chunks), factory = run_with(tmp_path, body, configure=configure)
    assert after_failure == 0
    assert chunks[-1].done
    assert factory.starts == 2


# ---- keep_alive -----------------------------------------------------------------------------------------------


def test_keep_alive_zero_unloads_after_the_request(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> int:
        await collect(sched.generate(model, request(keep_alive=0.0)))
        return len(sched.running())

    still_running, factory = run_with(tmp_path, body)
    assert still_running == 0
    assert factory.runners[0].closes == 1


def test_cancelled_stream_releases_and_unloads_with_keep_alive_zero(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, int]:
        stream = sched.generate(model, request(keep_alive=0.0))
        assert isinstance(stream, AsyncGenerator)
        await stream.__anext__()
        busy = len(sched.running())
        await stream.aclose()  # the client went away
        return busy, len(sched.running())

    (busy, after), factory = run_with(tmp_path, body)
    assert (busy, after) == (1, 0)
    assert factory.runners[0].closes == 1


def test_keep_alive_from_settings_is_the_default(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> int:
        await collect(sched.generate(model, request()))
        return len(sched.running())

    still_running, factory = run_with(tmp_path, body, keep_alive="0")
    assert still_running == 0
    assert factory.runners[0].closes == 1


def test_keep_alive_expiry_via_reaper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "_REAP_INTERVAL", 0.01)
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, bool]:
        await collect(sched.generate(model, request(keep_alive=0.05)))
        loaded_right_after = len(sched.running())  # no await since the release: the reaper cannot have run
        return loaded_right_after, await wait_until(lambda: not sched.running())

    (loaded_right_after, unloaded), factory = run_with(tmp_path, body)
    assert loaded_right_after == 1
    assert unloaded
    assert factory.runners[0].closes == 1


def test_reaper_spares_a_busy_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "_REAP_INTERVAL", 0.01)
    model = stored(tmp_path)
    gate_holder: list[asyncio.Event] = []

    def hold(runner: FakeRunner) -> None:
        runner.gate = gate_holder[0]

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[int, int]:
        gate_holder.append(asyncio.Event())
        stream = sched.generate(model, request(keep_alive=0.02))
        await stream.__anext__()
        await asyncio.sleep(0.2)  # many reaper rounds, all past keep_alive
        during = len(sched.running())
        closes_during = factory.runners[0].closes
        gate_holder[0].set()
        await collect(stream)
        return during, closes_during

    (during, closes_during), _ = run_with(tmp_path, body, configure=hold)
    assert during == 1
    assert closes_during == 0


def test_negative_keep_alive_in_request_keeps_loaded(tmp_path: Path) -> None:
    # GenerateRequest.keep_alive documents "negative keeps loaded forever".
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[list[datetime], int]:
        await collect(sched.generate(model, request(keep_alive=-1.0)))
        await asyncio.sleep(0.05)  # let a wrong unload-after-release happen, if it would
        return [m.expires_at for m in sched.running()], factory.runners[0].closes

    (expires, closes), _ = run_with(tmp_path, body)
    assert len(expires) == 1
    assert expires[0] > datetime.now(UTC) + timedelta(days=365 * 100)
    assert closes == 0


@pytest.mark.parametrize(
    ("keep_alive", "low", "high"),
    [
        (300.0, timedelta(seconds=290), timedelta(seconds=301)),
        (math.inf, timedelta(days=365 * 1000), timedelta.max),
    ],
)
def test_expires_at(tmp_path: Path, keep_alive: float, low: timedelta, high: timedelta) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> datetime:
        await sched.load(model, keep_alive)
        return sched.running()[0].expires_at

    expires_at, _ = run_with(tmp_path, body)
    now = datetime.now(UTC)
    assert now + low < expires_at
    assert expires_at - now <= high


def test_busy_model_never_expires(tmp_path: Path) -> None:
    model = stored(tmp_path)
    gate_holder: list[asyncio.Event] = []

    def hold(runner: FakeRunner) -> None:
        runner.gate = gate_holder[0]

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> datetime:
        gate_holder.append(asyncio.Event())
        stream = sched.generate(model, request(keep_alive=1.0))
        await stream.__anext__()
        expires_at = sched.running()[0].expires_at
        gate_holder[0].set()
        await collect(stream)
        return expires_at

    expires_at, _ = run_with(tmp_path, body, configure=hold)
    assert expires_at.year == 9999


# ---- context length -------------------------------------------------------------------------------------------


def test_num_ctx_change_reloads_an_idle_runner(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        await collect(sched.generate(model, request(num_ctx=1024)))
        await collect(sched.generate(model, request(num_ctx=2048)))

    _, factory = run_with(tmp_path, body)
    assert [per_sequence(r.options) for r in factory.runners] == [1024, 2048]
    assert factory.runners[0].closes == 1


def test_smaller_num_ctx_shares_the_loaded_runner(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        await collect(sched.generate(model, request(num_ctx=2048)))
        await collect(sched.generate(model, request(num_ctx=1024)))
        await collect(sched.generate(model, request()))  # the default, 4096, is larger: reload

    _, factory = run_with(tmp_path, body)
    assert [per_sequence(r.options) for r in factory.runners] == [2048, 4096]
    assert [q.num_ctx for q in factory.runners[0].requests] == [2048, 1024]


def test_bigger_num_ctx_drains_a_busy_runner_then_reloads(tmp_path: Path) -> None:
    """The request needing more context waits for the busy runner to finish (no deadlock), nobody new joins the
    draining runner meanwhile, and the reloaded one serves both the waiter and the request that came after it."""
    model = stored(tmp_path)
    gate = asyncio.Event()

    def hold(runner: FakeRunner) -> None:
        if not gate.is_set():
            runner.gate = gate

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        first = sched.generate(model, request(num_ctx=1024))
        await first.__anext__()  # runner 0 is busy
        bigger = asyncio.create_task(collect(sched.generate(model, request(num_ctx=2048))))
        await asyncio.sleep(0.05)
        smaller = asyncio.create_task(collect(sched.generate(model, request(num_ctx=512))))
        await asyncio.sleep(0.05)
        assert factory.starts == 1 and not bigger.done() and not smaller.done()
        assert len(factory.runners[0].requests) == 1  # the 512 request did not join the draining runner
        gate.set()
        await collect(first)
        assert (await bigger)[-1].done and (await smaller)[-1].done

    _, factory = run_with(tmp_path, body, configure=hold)
    assert [per_sequence(r.options) for r in factory.runners] == [1024, 2048]
    assert factory.runners[0].closes == 1
    assert sorted(q.num_ctx or 0 for q in factory.runners[1].requests) == [512, 2048]


def test_same_request_twice_when_model_trained_on_less_context(tmp_path: Path) -> None:
    # The default num_ctx (4096) exceeds what this model was trained for (2048): asking twice for the same thing
    # must not reload the model.
    model = stored(tmp_path)

    def small(runner: FakeRunner) -> None:
        runner.n_ctx_train = 2048

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> None:
        for _ in range(3):
            await collect(sched.generate(model, request()))

    _, factory = run_with(tmp_path, body, configure=small)
    assert factory.starts == 1


# ---- running, unload, close -----------------------------------------------------------------------------------


def test_running_reports_placement(tmp_path: Path) -> None:
    model = stored(tmp_path)

    def shape(runner: FakeRunner) -> None:
        runner.n_layer = 18
        runner.model_size = 5_000

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> list[scheduler_module.RunningModel]:
        await sched.load(model, math.inf)
        return sched.running()

    (entry,), _ = run_with(tmp_path, body, configure=shape, num_ctx=2048)
    assert entry.name == "tiny:latest"
    assert entry.model_digest == model.model_digest
    assert entry.size == 5_000
    assert entry.size_vram == 0
    assert entry.context_length == 2048
    assert entry.placement["backend"] == "cpu"
    assert entry.placement["layers_on_gpu"] == 0
    assert entry.placement["layers_total"] == 19
    assert entry.placement["verified"] is True
    assert entry.placement["parallel"] == 4  # "auto" on a machine of unknown memory
    assert entry.expires_at > datetime.now(UTC) + timedelta(days=365 * 1000)


def test_unload(tmp_path: Path) -> None:
    model = stored(tmp_path)

    async def body(sched: Scheduler, factory: FakeRunnerFactory) -> tuple[bool, bool, bool, int]:
        unknown = await sched.unload("never:loaded")
        await sched.load(model, None)
        known = await sched.unload("tiny:latest")
        again = await sched.unload("tiny:latest")
        return unknown, known, again, len(sched.running())

    (unknown, known, again, left), factory = run_with(tmp_path, body)
    assert (unknown, known, again, left) == (False, True, False, 0)
    assert factory.runners[0].closes == 1


def test_close_closes_all(tmp_path: Path) -> None:
    a, b = stored(tmp_path, "a:1", "a" * 64), stored(tmp_path, "b:1", "b" * 64)
    factory = FakeRunnerFactory()

    async def main() -> int:
        sched = Scheduler(load_settings(home=tmp_path), runner_factory=factory, plan_factory=cpu_only)
        await sched.load(a, None)
        await sched.load(b, None)
        await sched.close()
        return len(sched.running())

    assert asyncio.run(main()) == 0
    assert [r.closes for r in factory.runners] == [1, 1]


# ---- pure policy ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "default", "trained", "expected"),
    [
        (None, 4096, None, 4096),
        (None, 4096, 32768, 4096),
        (None, 4096, 2048, 2048),
        (8192, 4096, 32768, 8192),
        (65536, 4096, 32768, 32768),
        (0, 4096, 32768, 4096),
        (-5, 4096, None, 4096),
        (1024, 4096, 0, 1024),
    ],
)
def test_wanted_context(requested: int | None, default: int, trained: int | None, expected: int) -> None:
    assert wanted_context(requested, default, trained) == expected


@pytest.mark.parametrize(
    ("active", "keep_alive", "idle_for", "expected"),
    [
        (0, 300.0, 299.9, False),
        (0, 300.0, 300.0, True),
        (0, 300.0, 1e6, True),
        (1, 300.0, 1e6, False),
        (0, math.inf, 1e12, False),
        (0, 0.0, 0.0, True),
    ],
)
def test_expired(active: int, keep_alive: float, idle_for: float, expected: bool) -> None:
    assert expired(active, keep_alive, idle_for) is expected


# ---- backend plans: fallback, forced backends, GPU layers that did not land ---------------------------------


def gpu_then_cpu(forced: bool = False) -> Callable[[Settings], BackendPlan]:
    def plan(settings: Settings) -> BackendPlan:
        candidates = (Candidate("cuda", Path("/variants/cuda")),) + (() if forced else (Candidate("cpu", None),))
        return BackendPlan(candidates, forced=forced, reason="test plan")

    return plan


def broken_cuda(runner: FakeRunner) -> None:
    if runner.options.backend == "cuda":
        runner.fail_start = BackendUnusable("libcuda.so.1: cannot open shared object file")


def run_plan(
    tmp_path: Path, plan: Callable[[Settings], BackendPlan], configure: Callable[[FakeRunner], None]
) -> tuple[list[scheduler_module.RunningModel] | BackendUnusable, FakeRunnerFactory]:
    model = stored(tmp_path)
    factory = FakeRunnerFactory(configure=configure)

    async def main() -> list[scheduler_module.RunningModel] | BackendUnusable:
        sched = Scheduler(load_settings(home=tmp_path), runner_factory=factory, plan_factory=plan)
        try:
            await sched.load(model, math.inf)
        except BackendUnusable as exc:
            return exc
        finally:
            running = sched.running()
            await sched.close()
        return running

    return asyncio.run(main()), factory


def test_unusable_backend_falls_back_to_the_next_at_once_and_says_so(tmp_path: Path) -> None:
    outcome, factory = run_plan(tmp_path, gpu_then_cpu(), broken_cuda)
    assert isinstance(outcome, list)
    (entry,) = outcome
    assert [r.options.backend for r in factory.runners] == ["cuda", "cpu"]
    assert factory.runners[0].library_path == Path("/variants/cuda")
    assert factory.runners[0].options.n_gpu_layers > 0
    assert factory.runners[1].options.n_gpu_layers == 0
    assert entry.placement["backend"] == "cpu"
    assert entry.placement["fallbacks"] == ["cuda: libcuda.so.1: cannot open shared object file"]


def test_forced_backend_that_cannot_run_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    outcome, factory = run_plan(tmp_path, gpu_then_cpu(forced=True), broken_cuda)
    assert isinstance(outcome, BackendUnusable)
    assert "cuda was requested" in outcome.message
    assert "libcuda.so.1" in outcome.message
    assert [r.options.backend for r in factory.runners] == ["cuda"]


def test_gpu_layers_asked_but_none_landed_is_a_warning_in_ps(tmp_path: Path) -> None:
    outcome, _ = run_plan(tmp_path, gpu_then_cpu(), lambda runner: None)  # the fake puts every layer on the CPU
    assert isinstance(outcome, list)
    warning = outcome[0].placement["warning"]
    assert warning is not None
    assert "every layer runs on the CPU" in warning


@pytest.mark.parametrize(
    ("backend", "requested", "setting", "layers"),
    [
        ("cpu", None, "auto", 0),
        ("cpu", 10, "auto", 0),
        ("cuda", None, "auto", ALL_LAYERS),
        ("cuda", None, "-1", ALL_LAYERS),
        ("cuda", None, "12", 12),
        ("cuda", 5, "auto", 5),
        ("cuda", -1, "3", ALL_LAYERS),
        ("vulkan", 0, "auto", 0),
    ],
)
def test_gpu_layers_for(backend: str, requested: int | None, setting: str, layers: int) -> None:
    assert gpu_layers_for(backend, requested, setting) == layers


# ---- gpu_layers "auto": the memory planner sizes layers and context from the machine the plan was made on ------


def real_tiny_model(tmp_path: Path) -> StoredModel:
    path = write_tiny_gguf(tmp_path / "tiny.gguf")  # 1 block + output = 2 layers, context 256
    model = stored(tmp_path)
    return dataclasses.replace(model, model_path=path)


def gpu_plan_on(gpu: FakeGpu) -> Callable[[Settings], BackendPlan]:
    def plan(settings: Settings) -> BackendPlan:
        machine = snapshot(nvidia_h100(gpus=(gpu,)))
        return BackendPlan((Candidate("cuda", None), Candidate("cpu", None)), False, "test", machine=machine)

    return plan


def first_load_options(tmp_path: Path, gpu: FakeGpu, **settings: object) -> LoadOptions:
    model = real_tiny_model(tmp_path)
    factory = FakeRunnerFactory()

    async def main() -> None:
        sched = Scheduler(
            load_settings(home=tmp_path, **settings), runner_factory=factory, plan_factory=gpu_plan_on(gpu)
        )
        try:
            await sched.load(model, math.inf)
        finally:
            await sched.close()

    asyncio.run(main())
    return factory.runners[0].options


def test_auto_puts_every_layer_on_a_gpu_with_room(tmp_path: Path) -> None:
    options = first_load_options(tmp_path, H100)
    assert options.backend == "cuda"
    assert options.n_gpu_layers == 2  # the planner's count (blocks + output), not a blanket 999
    # The requested 4096 clamped to what the model was trained for, in each of the 4 slots "auto" gives it.
    assert (options.n_ctx, options.n_seq_max) == (4 * 256, 4)


def test_auto_keeps_layers_off_a_gpu_without_room(tmp_path: Path) -> None:
    full = dataclasses.replace(H100, free=1 << 20)  # 1 MiB free: less than the planner's headroom
    options = first_load_options(tmp_path, full)
    assert options.backend == "cuda"
    assert options.n_gpu_layers == 0


def test_a_fixed_gpu_layers_setting_is_kept_up_to_the_model(tmp_path: Path) -> None:
    assert first_load_options(tmp_path, H100, gpu_layers="7").n_gpu_layers == 2  # the tiny model has 2 layers
    assert first_load_options(tmp_path, H100, gpu_layers="1").n_gpu_layers == 1


def test_forced_num_gpu_that_does_not_fit_is_refused_with_the_numbers(tmp_path: Path) -> None:
    full = dataclasses.replace(H100, free=1 << 20)
    model = real_tiny_model(tmp_path)
    factory = FakeRunnerFactory()

    async def main() -> PlanRefused:
        sched = Scheduler(load_settings(home=tmp_path), runner_factory=factory, plan_factory=gpu_plan_on(full))
        try:
            with pytest.raises(PlanRefused) as caught:
                await collect(sched.generate(model, request(num_gpu=2)))
            return caught.value
        finally:
            await sched.close()

    refused = asyncio.run(main())
    assert refused.status == 400 and refused.param == "num_gpu"
    assert "num_gpu 2 of 2" in refused.message and "CUDA0 needs" in refused.message and "MiB" in refused.message
    assert factory.runners == []  # refused before any runner started
